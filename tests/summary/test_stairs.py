"""A staircase run's stairs, each on its own: which stair a request belongs to (its
`t_intended` from the run's start), and each stair's counts, sent rate and TTFT/ITL, as a pure
function of the records; the same figures live, from the records file, and in every report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit.cli import latbench

from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.records import Record
from latbench.shared.errors import ErrorKind, SpecError
from latbench.spec import LoadSpec, load_spec
from latbench.summary import summarize

MS = 1_000_000
START = 7_000 * MS  # any monotonic instant: stairs are counted from request 0's t_intended
STEPS = LoadSpec.model_validate(
    {"mode": "steps", "steps": [{"rate": 10, "duration": "1s"}, {"rate": 20, "duration": "1s"}]}
)


def rec(seq: int, at_ms: float, ttft_ms: float, gap_ms: float = 5, **kw: object) -> Record:
    t = START + int(at_ms * MS)
    events = (t + int(ttft_ms * MS), t + int((ttft_ms + gap_ms) * MS))
    return Record(
        run_id="t", seq=seq, phase=kw.pop("phase", "measure"), api="chat",  # type: ignore[arg-type]
        t_intended=t, t_sent=t + int(kw.pop("late_ms", 0) * MS), t_headers=t + MS,
        t_end=events[-1] + MS, ev_t=events, ev_kind="cc", status=200,
        usage_completion_tokens=2, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_each_stair_has_its_own_figures() -> None:
    records = [
        *(rec(n, n * 100, 20) for n in range(10)),  # stair 1: 10/s, TTFT 20 ms
        *(rec(10 + n, 1000 + n * 50, 60, gap_ms=9) for n in range(20)),  # stair 2: TTFT 60 ms
    ]
    # One of stair 2's requests failed, and one of stair 1's was sent late, into stair 2.
    records[15] = Record.unanswered(
        "t", 15, "measure", "chat", records[15].t_intended, records[15].t_sent,
        ErrorKind.HTTP_STATUS, "503",
    )  # fmt: skip
    records[9] = rec(9, 900, 20, late_ms=150)
    stairs = summarize(records, load=STEPS).stairs
    assert stairs is not None
    one, two = stairs
    assert (one.rate, one.start_s, one.requests, one.succeeded, one.failed) == (10, 0, 10, 10, 0)
    assert (two.rate, two.start_s, two.requests, two.succeeded, two.failed) == (20, 1, 20, 19, 1)
    assert one.ttft.p(50) == pytest.approx(0.020) and one.ttft.p(99) == pytest.approx(0.020)
    assert two.ttft.p(50) == pytest.approx(0.060) and two.itl.p(99) == pytest.approx(0.009)
    assert one.ttft.count == 10 and two.ttft.count == 19 and two.itl.count == 19
    # Sent, not intended: the late one left on stair 2's second.
    assert (one.sent_per_s, two.sent_per_s) == (9.0, 21.0)


def test_warmup_requests_are_left_out_and_other_loads_have_no_stairs() -> None:
    records = [rec(0, 0, 20, phase="warmup"), rec(1, 500, 30), rec(2, 1500, 40)]
    stairs = summarize(records, load=STEPS).stairs
    assert stairs is not None and [s.requests for s in stairs] == [1, 1]
    assert stairs[0].ttft.p(50) == pytest.approx(0.030)
    other = LoadSpec(mode="constant", rate=10, duration=2)
    assert summarize(records, load=other).stairs is None
    assert summarize(records).stairs is None  # no load: nothing says where stairs are
    assert summarize(records, load=other).to_dict()["stairs"] is None


def test_a_ramp_reads_as_ten_stairs_each_offering_what_it_planned() -> None:
    ramp = LoadSpec.model_validate(
        {"mode": "ramp", "duration": 2, "ramp": {"strategy": "linear", "start_rate": 5,
                                                  "end_rate": 45}}
    )  # fmt: skip
    # 0.2 s stairs; k + 1 requests planned on stair k (a warm-up one among the first's).
    planned = [(k * 200 + i * 200 / (k + 1), k) for k in range(10) for i in range(k + 1)]
    records = [
        rec(n, t, 20 + k, phase="warmup" if n == 0 else "measure")
        for n, (t, k) in enumerate(planned)
    ]
    stairs = summarize(records, load=ramp).stairs
    assert stairs is not None and len(stairs) == 10
    assert [round(s.rate, 9) for s in stairs] == [5.0 * (k + 1) for k in range(10)]
    assert [s.requests for s in stairs] == [0, *range(2, 11)]  # the warm-up left out
    assert [s.start_s for s in stairs] == pytest.approx([0.2 * k for k in range(10)])
    assert stairs[9].ttft.p(50) == pytest.approx(0.029)
    # Over its requests (no duration), up to the last intended send.
    counted = LoadSpec.model_validate(
        {"mode": "ramp", "requests": 55, "ramp": {"strategy": "linear", "start_rate": 5,
                                                   "end_rate": 45}}
    )  # fmt: skip
    by_count = summarize(records, load=counted).stairs
    assert by_count is not None and sum(s.requests for s in by_count) == 54


def test_the_staircase_flag_and_its_errors() -> None:
    ns = build_parser().parse_args(["run", "--staircase", "5:2s,10:500ms", "--arrivals", "poisson"])
    load = load_spec(spec_from_args(ns), source="flags").load
    assert (load.mode, load.duration, load.arrivals) == ("steps", 2.5, "poisson")
    assert [(s.rate, s.duration) for s in load.steps or []] == [(5, 2), (10, 0.5)]
    for bad in ("5", "x:1s", "5:"):
        ns = build_parser().parse_args(["run", "--staircase", bad])
        with pytest.raises(SpecError, match=r"--staircase .*RATE:DURATION"):
            spec_from_args(ns)


def test_a_staircase_run_reports_its_stairs_everywhere(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    # A loaded test machine must not turn this run client-bound (exit 4): not what is tested.
    spec.write_text("validity: {ttft_tolerance: 2s, itl_tolerance: 2s, queue_delay_p99: 2s}\n")
    run = latbench(
        "run", "--spec", str(spec), "--staircase", "15:1s,45:1s", "--input-tokens", "4",
        "--output-tokens", "4", "--out", str(tmp_path), "--json",
        "--sim", "ttft=0.002", "--sim", "itl=0.001",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    live = json.loads(run.stdout)["stairs"]
    assert [(s["rate"], s["requests"], s["failed"]) for s in live] == [(15, 15, 0), (45, 45, 0)]
    assert all(s["ttft"]["count"] == s["requests"] for s in live)
    (records,) = tmp_path.glob("*/records.jsonl")
    again = latbench("summary", str(records), "--json")
    assert json.loads(again.stdout)["stairs"] == live
    assert json.loads((records.parent / "results.json").read_text())["summary"]["stairs"] == live
    report = latbench("report", str(records.parent))
    assert report.returncode == 0, report.stderr
    html = (records.parent / "report.html").read_text()
    assert "Stairs</h2>" in html and "steps of 15, 45 req/s over 2 s" in html
    md = (records.parent / "report.md").read_text()
    assert "| 2 | 1 | 45.00 | 45.00 | 45 (0) |" in md
