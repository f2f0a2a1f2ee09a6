"""The trace replay's spec: `workload.source: trace` with `workload.trace` and `load.mode:
trace` together, each error naming its field; the --trace flags build it; a malformed trace is a
one-line error of the CLI (exit 2), naming file, line and column; so is a warm-up or cool-down
that leaves none of the replay to measure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kit import paths
from kit.cli import latbench

from latbench import SpecError
from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.run.benchmark import make_workload, trace_bounds
from latbench.spec import load_spec

TRACE = str(paths.DATA / "traces" / "mooncake.jsonl")


def trace_spec(workload: dict[str, Any] | None = None, load: dict[str, Any] | None = None) -> Any:
    return load_spec(
        {
            "workload": {"source": "trace", "path": TRACE, **(workload or {})},
            "load": {"mode": "trace", **(load or {})},
        },
        source="t.yaml",
    )


def error_of(workload: dict[str, Any] | None = None, load: dict[str, Any] | None = None) -> str:
    with pytest.raises(SpecError) as e:
        trace_spec(workload, load)
    return str(e.value)


def test_a_trace_needs_no_rate_duration_or_count() -> None:
    spec = trace_spec()
    assert spec.workload.trace is not None and spec.workload.trace.format == "auto"
    assert spec.workload.trace.speed == 1 and spec.workload.trace.block_tokens == 512
    assert spec.load.duration is None and spec.load.requests is None and spec.load.rate is None


@pytest.mark.parametrize(
    ("workload", "load", "error"),
    [
        ({"trace": {"speed": 0}}, {}, "workload.trace.speed: Input should be greater than or"),
        ({"trace": {"format": "csv"}}, {}, "workload.trace.format: Input should be 'auto'"),
        ({"trace": {"start": "2m", "end": "1m"}}, {}, "end (60 s) must be after start (120 s)"),
        ({"trace": {"end": "10 parsecs"}}, {}, "workload.trace.end"),
        ({"trace": {"block_tokens": 0}}, {}, "workload.trace.block_tokens"),
        ({"output_tokens": 8}, {}, "output_tokens is not for source trace"),
        ({}, {"rate": 5}, "load: rate: mode 'trace' sends at the trace's own instants"),
    ],
)
def test_errors_name_the_field(workload: dict[str, Any], load: dict[str, Any], error: str) -> None:
    assert error in error_of(workload, load)


def test_mode_and_source_go_together() -> None:
    with pytest.raises(SpecError, match=r"load\.mode 'trace' and workload\.source 'trace' go"):
        load_spec({"workload": {"source": "trace", "path": TRACE}, "load": {"requests": 5}})
    with pytest.raises(SpecError, match="go together"):
        load_spec({"load": {"mode": "trace"}})
    with pytest.raises(SpecError, match="trace is for source trace"):
        load_spec({"workload": {"trace": {"speed": 2}}})
    with pytest.raises(SpecError, match="source 'trace' needs a path"):
        load_spec({"workload": {"source": "trace"}, "load": {"mode": "trace"}})


def test_the_trace_flags() -> None:
    ns = build_parser().parse_args(
        [
            *("run", "--trace", TRACE, "--trace-speed", "2.5", "--trace-start", "30s"),
            *("--trace-end", "2m", "--trace-format", "mooncake", "--requests", "7"),
        ]
    )
    spec = load_spec(spec_from_args(ns))
    assert spec.workload.source == "trace" and str(spec.workload.path) == TRACE
    assert spec.load.mode == "trace" and spec.load.requests == 7
    t = spec.workload.trace
    assert t is not None
    assert (t.format, t.speed, t.start, t.end) == ("mooncake", 2.5, 30.0, 120.0)
    with pytest.raises(SystemExit):  # one prompt source at a time
        build_parser().parse_args(["run", "--trace", TRACE, "--prompts", TRACE])
    closed = build_parser().parse_args(
        ["run", "--trace", TRACE, "--mode", "closed", "--requests", "5"]
    )
    with pytest.raises(SpecError, match="go together"):  # not silently replaced
        load_spec(spec_from_args(closed))


def test_a_malformed_trace_is_one_line_naming_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "5,GPT-4,10,2,12,API log\n"
        "6,GPT-4,ten,2,12,API log\n"
    )
    p = latbench("run", "--out", str(tmp_path), "--trace", str(bad))
    assert p.returncode == 2, p.stderr
    said = " ".join(p.stderr.split())  # the terminal wraps the line
    assert said.startswith("error: ") and said.count("error") == 1
    assert "bad.csv, line 3, column Request tokens: a token count" in said
    assert "Traceback" not in p.stderr


AZURE = str(paths.DATA / "traces" / "azure.csv")  # 30 rows over 1.584 s, the last at 1.584 s


def bounded(load: dict[str, Any]) -> Any:
    spec = load_spec(
        {"workload": {"source": "trace", "path": AZURE}, "load": {"mode": "trace", **load}}
    )
    return trace_bounds(spec, make_workload(spec.workload)).load


@pytest.mark.parametrize(
    ("load", "error"),
    [
        ({"warmup": "1.6s"}, "load: warmup (1.6 s) leaves none of the trace's 30 requests to "
         "measure: the replay sends them over 1.584 s"),
        # Only the first 10 rows (the last at 0.657 s) are sent.
        ({"warmup": "0.7s", "requests": 10}, "leaves none of the trace's 10 requests"),
        # Rows at 0.743 and 0.893 s, and nothing measured between: from the warm-up's end to
        # the start of the cool-down (1.6 - 0.75 s).
        ({"warmup": "0.75s", "cooldown": "0.75s", "duration": "1.6s"},
         "load: warmup (0.75 s) + cooldown (0.75 s) leave none of the trace's 30 requests"),
    ],
)  # fmt: skip
def test_a_warmup_or_cooldown_that_outlasts_the_replay_is_refused(
    load: dict[str, Any], error: str
) -> None:
    with pytest.raises(SpecError) as e:
        bounded(load)
    assert error in str(e.value)


def test_a_warmup_shorter_than_the_replay_runs_its_rows() -> None:
    assert bounded({"warmup": "1.5s"}).requests == 30
    assert bounded({"warmup": "0.75s", "cooldown": "0.7s", "duration": "1.6s"}).requests == 30


def test_the_cli_refuses_a_warmup_past_the_replay_in_one_line(tmp_path: Path) -> None:
    p = latbench("run", "--out", str(tmp_path), "--trace", AZURE, "--warmup", "10s")
    said = " ".join(p.stderr.split())
    assert p.returncode == 2, p.stderr
    assert said == (
        "error: load: warmup (10 s) leaves none of the trace's 30 requests to measure: the "
        "replay sends them over 1.584 s"
    )
    assert not any(tmp_path.iterdir())  # nothing ran
