"""A staircase run's stairs, each on its own: which stair a request belongs to (its
`t_intended` from the run's start), and each stair's counts, sent rate and TTFT/ITL, as a pure
function of the records; its offered rate from the schedule (a ramp's own formula, vLLM's gaps),
whatever was sent, and what a stop left unrun; the same figures live, from the records file, and
in every report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit.cli import latbench

from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.load.pacers import ProgressRampPacer, RampPacer
from latbench.records import Record
from latbench.render.text import stair_headers, stairs_rows
from latbench.shared.errors import ErrorKind, SpecError
from latbench.spec import LoadSpec, load_spec
from latbench.spec.schedule import expected_by
from latbench.summary import summarize

MS = 1_000_000
S = 1_000_000_000
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


def test_a_ramp_reads_as_ten_stairs_each_offering_what_its_schedule_planned() -> None:
    ramp = LoadSpec.model_validate(
        {"mode": "ramp", "duration": 2, "ramp": {"strategy": "linear", "start_rate": 5,
                                                  "end_rate": 45}}
    )  # fmt: skip
    # 0.2 s stairs; k + 1 requests intended on stair k (a warm-up one among the first's): not
    # what the schedule planned (as Poisson draws would not be), and not what the stair offers.
    planned = [(k * 200 + i * 200 / (k + 1), k) for k in range(10) for i in range(k + 1)]
    records = [
        rec(n, t, 20 + k, phase="warmup" if n == 0 else "measure")
        for n, (t, k) in enumerate(planned)
    ]
    stairs = summarize(records, load=ramp).stairs
    assert stairs is not None and len(stairs) == 10
    # The ramp's own mean rate on each fifth of a second: 5 + 40 (k + 1/2) / 10 = 7 + 4k.
    assert [s.rate for s in stairs] == pytest.approx([7 + 4 * k for k in range(10)])
    assert [s.requests for s in stairs] == [0, *range(2, 11)]  # the warm-up left out
    assert [s.start_s for s in stairs] == pytest.approx([0.2 * k for k in range(10)])
    assert all(s.ran_s == pytest.approx(0.2) and s.rate_unit == "requests" for s in stairs)
    assert stairs[9].ttft.p(50) == pytest.approx(0.029)


def test_a_ramp_over_its_requests_offers_what_vllms_gaps_plan() -> None:
    counted = LoadSpec.model_validate(
        {"mode": "ramp", "requests": 55, "ramp": {"strategy": "linear", "start_rate": 5,
                                                   "end_rate": 45}}
    )  # fmt: skip
    pacer = ProgressRampPacer(5, 45, 55)
    offsets = [pacer.offset_ns(n) for n in range(55)]
    # Only the first 20 requests were recorded (a stop): the stairs still span the whole plan.
    records = [rec(n, offsets[n] / MS, 20) for n in range(20)]
    stairs = summarize(records, load=counted).stairs
    assert stairs is not None
    span = offsets[-1] / S
    assert sum(s.duration_s for s in stairs) == pytest.approx(span, rel=1e-3)
    # Each stair's rate against the pacer's own plan: its requests there, give or take the one
    # each boundary splits, over the stair.
    for st in stairs:
        lo, hi = st.start_s * S, (st.start_s + st.duration_s) * S
        n = sum(1 for o in offsets if lo <= o < hi)
        assert abs(st.rate * st.duration_s - n) <= 1.5, (st.index, st.rate, n)
    assert sum(s.rate * s.duration_s for s in stairs) == pytest.approx(54, rel=1e-6)
    assert sum(s.requests for s in stairs) == 20
    one = counted.model_copy(update={"requests": 1})  # plans no time: nothing to read in stairs
    assert summarize(records[:1], load=one).stairs is None


def test_a_stop_leaves_the_later_stairs_not_run_and_its_cancels_apart() -> None:
    # Stopped 1.5 s into the 10/s then 20/s staircase: stair 2 ran half, a third never did.
    three = LoadSpec.model_validate(
        {"mode": "steps", "steps": [{"rate": 10, "duration": "1s"}, {"rate": 20, "duration": "1s"},
                                     {"rate": 40, "duration": "1s"}]}
    )  # fmt: skip
    records = [
        *(rec(n, n * 100, 20) for n in range(10)),
        *(rec(10 + n, 1000 + n * 50, 60) for n in range(10)),
    ]
    cut = records[19]
    records[19] = Record.unanswered(
        "t", 19, "measure", "chat", cut.t_intended, cut.t_sent, ErrorKind.CANCELLED, "stopped"
    )
    records[18] = Record.unanswered(
        "t", 18, "measure", "chat", cut.t_intended, cut.t_sent, ErrorKind.HTTP_STATUS, "503"
    )
    stairs = summarize(records, load=three, stopped_ns=START + 1500 * MS).stairs
    assert stairs is not None
    one, two, three_ = stairs
    assert (one.ran_s, one.ran, one.cut) == (1.0, True, False)
    assert (two.ran_s, two.cut, three_.ran_s, three_.ran) == (0.5, True, 0.0, False)
    assert (two.requests, two.succeeded, two.failed, two.cancelled) == (10, 8, 1, 1)
    assert two.sent_per_s == 20.0  # 10 sent over the half second that ran
    assert (three_.rate, three_.requests, three_.sent_per_s) == (40, 0, 0.0)
    rows = stairs_rows(summarize(records, load=three, stopped_ns=START + 1500 * MS))
    assert rows is not None
    assert rows[1][:5] == ["2 cut", "1.00", "20.00", "20.00", "10 (1, 1 cut)"]
    assert rows[2][:5] == ["3 not run", "2.00", "40.00", "-", "-"]


def test_a_session_workloads_stairs_offer_sessions() -> None:
    records = [rec(n, n * 100, 20, session=n // 2, turn=n % 2) for n in range(10)]
    s = summarize(records, load=STEPS)
    assert s.stairs is not None and s.stairs[0].rate_unit == "sessions"
    assert stair_headers(s)[2:4] == ("sessions/s", "sent req/s")
    assert stair_headers(summarize([rec(0, 0, 20)], load=STEPS))[2] == "req/s"


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
    assert "| 2 | 1.00 | 45.00 | 45.00 | 45 (0) |" in md


def test_an_exponential_ramp_between_rates_a_rounding_apart_expects_what_the_pacer_sends() -> None:
    # (e - s) d / ln k divides two rounding errors here; the pacer and the schedule both take
    # s d expm1(ln k) / ln k, so a stair offers what its requests were planned at.
    ramp = {"strategy": "exponential", "start_rate": 0.010000000000000002, "end_rate": 0.01}
    load = LoadSpec.model_validate({"mode": "ramp", "ramp": ramp, "duration": 1000})
    assert expected_by(load, 1000) == pytest.approx(10, rel=1e-9)
    assert expected_by(load, 500) == pytest.approx(5, rel=1e-9)
    pacer = RampPacer(ramp["start_rate"], ramp["end_rate"], 1000, "exponential")
    assert pacer.offset_ns(10) / 1e9 == pytest.approx(1000, rel=1e-9)
