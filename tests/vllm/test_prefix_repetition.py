"""Shared-prefix workloads from the command line: vLLM's `--dataset-name prefix_repetition` with
its `--prefix-repetition-*` flags (vLLM 0.32, vllm/benchmarks/datasets/datasets.py), and
latbench's own `--prefix-*` / `--suffix-tokens` flags, into `workload.shared_prefix`."""

from __future__ import annotations

from pathlib import Path

import pytest

from latbench import SpecError
from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.run.benchmark import make_workload
from latbench.spec import RunSpec, load_spec
from latbench.workload.prefix import SharedPrefixWorkload


def spec_of(*argv: str) -> RunSpec:
    ns = build_parser().parse_args(["run", *argv])
    return load_spec(spec_from_args(ns), source="flags")


def test_vllms_prefix_repetition_flags_are_the_vllm_preset() -> None:
    s = spec_of(
        "--dataset-name", "prefix_repetition", "--num-prompts", "40",
        "--prefix-repetition-prefix-len", "64", "--prefix-repetition-suffix-len", "32",
        "--prefix-repetition-num-prefixes", "4", "--prefix-repetition-output-len", "16",
    )  # fmt: skip
    w = s.workload
    p = w.shared_prefix
    assert w.source == "shared_prefix" and p is not None
    assert (p.preset, p.groups, p.prefix_tokens, p.suffix_tokens.mean) == ("vllm", 4, 64, 32)
    assert (p.share, p.prefix_as) == (1.0, "user")
    assert w.output_tokens is not None and w.output_tokens.mean == 16
    # 40 prompts over 4 prefixes: 10 each, as vLLM's num_requests // num_prefixes.
    workload = make_workload(w)
    assert isinstance(workload, SharedPrefixWorkload)
    prompts = [workload.item(n).prompt for n in range(40)]
    for g in range(4):
        assert sum(p.startswith(workload.prefix(g) + " ") for p in prompts) == 10


def test_vllms_defaults_and_output_len_winning_as_in_vllm() -> None:
    s = spec_of("--dataset-name", "prefix_repetition", "--requests", "10")
    p = s.workload.shared_prefix
    assert p is not None and (p.groups, p.prefix_tokens, p.suffix_tokens.mean) == (10, 256, 256)
    assert s.workload.output_tokens is None  # 128, the default of both
    assert make_workload(s.workload).item(0).max_tokens == 128
    s = spec_of(
        "--dataset-name", "prefix_repetition", "--requests", "10",
        "--prefix-repetition-output-len", "16", "--output-len", "8",
    )  # fmt: skip
    assert s.workload.output_tokens is not None and s.workload.output_tokens.mean == 8
    s = spec_of("--dataset-name", "random", "--requests", "10")
    assert s.workload.source == "synthetic"


def test_latbenchs_own_flags_over_the_spec_file(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "workload: {source: shared_prefix, shared_prefix: {groups: 3, weights: [1, 1, 2]}}\n"
    )
    s = spec_of("--spec", str(spec), "--prefix-tokens", "100", "--suffix-tokens", "uniform:5,9")
    p = s.workload.shared_prefix
    assert p is not None and (p.groups, p.weights, p.prefix_tokens) == (3, [1, 1, 2], 100)
    assert p.suffix_tokens.kind == "uniform" and p.prefix_as == "system"
    s = spec_of("--prefix-groups", "5", "--prefix-share", "0.5", "--prefix-as", "user")
    p = s.workload.shared_prefix
    assert s.workload.source == "shared_prefix" and p is not None
    assert (p.groups, p.share, p.prefix_as, p.prefix_tokens) == (5, 0.5, "user", 256)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--prefix-repetition-prefix-len", "8"], "is for --dataset-name prefix_repetition"),
        (["--dataset-name", "sonnet"], "--dataset-name 'sonnet': latbench takes random or"),
        (
            ["--dataset-name", "prefix_repetition", "--prefix-share", "0.5"],
            "preset vllm: every request shares a prefix",
        ),
        (["--dataset-name", "prefix_repetition", "--input-len", "64"], "input_tokens is not"),
        (["--prefix-groups", "0"], "workload.shared_prefix.groups"),
        (["--prefix-groups", "2", "--prompts", "x.jsonl"], "and --prompts another source"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag_or_field(argv: list[str], needle: str) -> None:
    with pytest.raises(SpecError) as e:
        spec_of(*argv)
    assert needle in str(e.value), str(e.value)
