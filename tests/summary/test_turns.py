"""TTFT by turn index, and how sessions ended, as a pure function of the records; the same
figures live, from the records file (`latbench summary`), in results.json and in every report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit.cli import latbench

from latbench.records import Record
from latbench.shared.errors import ErrorKind
from latbench.summary import summarize
from latbench.summary.turns import MAX_TURN_ROWS

MS = 1_000_000


def rec(
    seq: int,
    session: int | None,
    turn: int | None,
    ttft_ms: float,
    *,
    prompt: int = 10,
    error: ErrorKind | None = None,
    phase: str = "measure",
) -> Record:
    t = seq * 100 * MS
    events = () if error else (t + int(ttft_ms * MS), t + int((ttft_ms + 5) * MS))
    return Record(
        run_id="t", seq=seq, phase=phase, api="chat", t_intended=t, t_sent=t,  # type: ignore[arg-type]
        t_headers=t + MS, t_end=t + 200 * MS, ev_t=events, ev_kind="c" * len(events),
        status=200, usage_prompt_tokens=None if error else prompt,
        usage_completion_tokens=None if error else 2, error=error, session=session, turn=turn,
    )  # fmt: skip


def test_ttft_by_turn_is_counted_from_the_records() -> None:
    records = [
        rec(0, 0, 0, 40, prompt=10),
        rec(1, 1, 0, 60, prompt=10),
        rec(2, 0, 1, 10, prompt=30),
        rec(3, 1, 1, 0, error=ErrorKind.HTTP_STATUS),  # ends session 1
        rec(4, 0, 2, 20, prompt=50),
        rec(5, 2, 0, 50, prompt=10, phase="warmup"),  # not measured
        rec(6, 3, 0, 0, error=ErrorKind.CANCELLED),  # an abort: no failure of the session
    ]
    s = summarize(records).sessions
    assert s is not None
    assert (s.sessions, s.requests, s.ended_by_failure) == (3, 6, 1)
    assert s.requests_per_session == 2.0
    rows = {t.turn: t for t in s.by_turn}
    assert sorted(rows) == [0, 1, 2]
    assert (rows[0].requests, rows[0].succeeded) == (3, 2)
    assert rows[0].ttft_p50 == pytest.approx(0.050)
    assert rows[0].ttft_p99 == pytest.approx(0.040 + 0.99 * 0.020)
    assert rows[0].ttft_mean == pytest.approx(0.050)
    assert rows[0].prompt_tokens_mean == 10
    # The failed request counts in its turn, not in its TTFT.
    assert (rows[1].requests, rows[1].succeeded, rows[1].ttft_p50) == (2, 1, pytest.approx(0.010))
    assert rows[1].prompt_tokens_mean == 30
    assert rows[2].ttft_p99 == pytest.approx(0.020) and not rows[2].and_later
    d = s.to_dict()
    assert d["by_turn"][1] == {
        "turn": 1,
        "and_later": False,
        "requests": 2,
        "succeeded": 1,
        "ttft": {"p50": 0.01, "p99": 0.01, "mean": 0.01},
        "prompt_tokens_mean": 30.0,
    }
    assert summarize(records).to_dict()["sessions"] == d
    assert s.describe() == "3 sessions, 6 requests (mean 2.00 a session; 1 ended by a failed turn)"


def test_single_requests_have_no_session_figures() -> None:
    summary = summarize([rec(0, None, None, 30), rec(1, None, None, 40)])
    assert summary.sessions is None and summary.to_dict()["sessions"] is None


def test_long_sessions_share_one_row_from_the_last_turn_shown() -> None:
    records = [rec(k, 0, k, 10 + k) for k in range(MAX_TURN_ROWS + 4)]
    s = summarize(records).sessions
    assert s is not None and len(s.by_turn) == MAX_TURN_ROWS + 1
    last = s.by_turn[-1]
    assert (last.turn, last.and_later, last.requests, last.label) == (
        MAX_TURN_ROWS,
        True,
        4,
        f"{MAX_TURN_ROWS}+",
    )
    assert last.ttft_mean == pytest.approx((10 + MAX_TURN_ROWS + 1.5) / 1000)


def test_a_session_run_reports_ttft_by_turn_everywhere(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    # A loaded test machine must not turn this run client-bound (exit 4): not what is tested.
    spec.write_text("validity: {ttft_tolerance: 2s, itl_tolerance: 2s, queue_delay_p99: 2s}\n")
    run = latbench(
        "run", "--spec", str(spec), "--turns", "3", "--think-time", "0.01", "--system-tokens",
        "4", "--input-tokens", "6", "--output-tokens", "3", "--concurrency", "2", "--requests",
        "12", "--out", str(tmp_path), "--json", "--sim", "ttft=0.002", "--sim", "itl=0.001",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    live = json.loads(run.stdout)["sessions"]
    assert (live["sessions"], live["requests"], live["ended_by_failure"]) == (4, 12, 0)
    # Each turn resends the last: 4 system + 6 a message + 3 a reply.
    prompts = [t["prompt_tokens_mean"] for t in live["by_turn"]]
    assert prompts == [10, 10 + 3 + 6, 10 + 2 * (3 + 6)]
    assert all(t["requests"] == 4 and t["ttft"]["p50"] > 0 for t in live["by_turn"])
    (records,) = tmp_path.glob("*/records.jsonl")
    again = latbench("summary", str(records), "--json")
    assert json.loads(again.stdout)["sessions"] == live
    assert json.loads((records.parent / "results.json").read_text())["summary"]["sessions"] == live
    report = latbench("report", str(records.parent))
    assert report.returncode == 0, report.stderr
    html = (records.parent / "report.html").read_text()
    assert "TTFT by turn</h2>" in html and "4 sessions, 12 requests" in html
    md = (records.parent / "report.md").read_text()
    assert "TTFT by turn (ms):" in md and "| 2 | 4 (0) | 28 |" in md
