"""Flags that choose the load's shape or the prompts' source, over a spec file: --staircase,
--trace and vLLM's --ramp-up-* replace what the file says of another shape (its rate, ramp,
stairs; a staircase's duration), one shape flag at a time; the shared-prefix flags refuse another
source flag by name and replace a file's prompt file; a sweep refuses a shape it cannot vary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kit import paths
from kit.cli import latbench

from latbench import SpecError
from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.spec import RunSpec, load_spec

AZURE = str(paths.DATA / "traces" / "azure.csv")
RAMP = {"strategy": "linear", "start_rate": 1, "end_rate": 3}


def spec_file(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def spec_of(*argv: str) -> RunSpec:
    return load_spec(spec_from_args(build_parser().parse_args(["run", *argv])), source="flags")


def error_of(*argv: str) -> str:
    with pytest.raises(SpecError) as e:
        spec_of(*argv)
    return str(e.value)


@pytest.mark.parametrize(
    "load",
    [
        {"mode": "poisson", "rate": 2, "duration": "5s"},
        {"mode": "ramp", "ramp": RAMP, "duration": "5s"},
    ],
)
def test_a_staircase_replaces_a_spec_files_rate_ramp_and_duration(
    tmp_path: Path, load: dict[str, Any]
) -> None:
    spec = spec_of("--spec", spec_file(tmp_path, {"load": load}), "--staircase", "2:1s,4:1s")
    ld = spec.load
    assert (ld.mode, ld.rate, ld.ramp, ld.duration) == ("steps", None, None, 2.0)
    # A --duration given with it is still checked against the stairs.
    assert "the steps last 2 s, not 3 s" in error_of("--staircase", "2:1s,4:1s", "--duration", "3s")


def test_a_trace_replaces_a_spec_files_rate_and_arrivals_and_keeps_its_duration(
    tmp_path: Path,
) -> None:
    doc = {
        "load": {"mode": "steps", "steps": [{"rate": 2, "duration": "4s"}], "arrivals": "poisson"}
    }
    spec = spec_of("--spec", spec_file(tmp_path, doc), "--trace", AZURE)
    assert (spec.load.mode, spec.load.steps, spec.load.arrivals) == ("trace", None, "even")
    doc = {"load": {"mode": "constant", "rate": 2, "duration": "5s"}}
    spec = spec_of("--spec", spec_file(tmp_path, doc), "--trace", AZURE)
    assert (spec.load.mode, spec.load.rate, spec.load.duration) == ("trace", None, 5.0)
    # A rate given as a flag is the user's: the spec says why it cannot be.
    assert "mode 'trace' sends at the trace's own instants" in error_of(
        "--trace", AZURE, "--rate", "2"
    )


def test_vllms_ramp_flags_replace_a_spec_files_stairs(tmp_path: Path) -> None:
    doc = {"load": {"mode": "steps", "steps": [{"rate": 2, "duration": "4s"}]}}
    spec = spec_of(
        *("--spec", spec_file(tmp_path, doc), "--ramp-up-strategy", "linear"),
        *("--ramp-up-start-rps", "1", "--ramp-up-end-rps", "5", "--requests", "20"),
    )
    assert spec.load.mode == "ramp" and spec.load.steps is None and spec.load.ramp is not None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--staircase", "2:1s", "--trace", AZURE), "--staircase and --trace each set"),
        (("--staircase", "2:1s", "--ramp-up-strategy", "linear"),
         "--staircase and --ramp-up-strategy each set the load's shape: give one"),
    ],
)  # fmt: skip
def test_one_shape_flag_at_a_time(argv: tuple[str, ...], says: str) -> None:
    assert says in error_of(*argv)


def test_mode_trace_is_a_run_mode() -> None:
    spec = spec_of("--mode", "trace", "--trace", AZURE)
    assert spec.load.mode == "trace" and spec.workload.source == "trace"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--dataset-name", "random", "--prefix-groups", "2"),
         "--prefix-groups makes shared-prefix prompts and --dataset-name random another source "
         "of prompts: give one"),
        (("--trace", AZURE, "--prefix-tokens", "64"),
         "--prefix-tokens makes shared-prefix prompts and --trace another source"),
        (("--sharegpt", AZURE, "--suffix-tokens", "64"), "--suffix-tokens makes shared-prefix"),
        (("--prompts", AZURE, "--prefix-share", "0.5"), "and --prompts another source"),
        (("--prompts", AZURE, "--dataset-name", "prefix_repetition"),
         "--dataset-name prefix_repetition makes shared-prefix prompts and --prompts another"),
    ],
)  # fmt: skip
def test_shared_prefix_flags_refuse_another_source_flag_by_name(
    argv: tuple[str, ...], says: str
) -> None:
    assert says in error_of(*argv)


def test_shared_prefix_flags_replace_a_spec_files_prompt_file(tmp_path: Path) -> None:
    doc = {"workload": {"source": "sharegpt", "path": "conversations.json"}}
    spec = spec_of("--spec", spec_file(tmp_path, doc), "--prefix-groups", "3")
    w = spec.workload
    assert (w.source, w.path) == ("shared_prefix", None)
    assert w.shared_prefix is not None and w.shared_prefix.groups == 3


@pytest.mark.parametrize(
    "argv",
    [
        ("--staircase", "2:1s,4:1s", "--rate", "1,2"),
        ("--trace", AZURE, "--find-max"),
        ("--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "2",
         "--concurrency", "1,2"),
        ("--mode", "steps", "--rate", "1,2"),
    ],
)  # fmt: skip
def test_a_sweep_refuses_a_shape_it_cannot_vary(tmp_path: Path, argv: tuple[str, ...]) -> None:
    p = latbench("sweep", "--out", str(tmp_path), *argv)
    said = " ".join(p.stderr.split())
    assert p.returncode == 2, p.stderr
    assert said.startswith("error: a sweep varies the rate or the concurrency; load.mode ")
    assert "cannot be swept (run it with latbench run)" in said
    assert not any(tmp_path.iterdir())
