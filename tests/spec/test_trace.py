"""The trace replay's spec: `workload.source: trace` with `workload.trace` and `load.mode:
trace` together, each error naming its field; the --trace flags build it; a malformed trace is a
one-line error of the CLI (exit 2), naming file, line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kit import paths
from kit.cli import latbench

from latbench import SpecError
from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
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
