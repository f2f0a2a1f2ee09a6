"""The harness's scoring against server truth (bench/_truth.py): the figures the performance
table is made of, on hand-made truth whose answers are known."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bench._truth import decompose, score
from latbench.records import Record

MS = 1_000_000
S = 1_000_000_000


def entry(arrival_ms: float, ttft_ms: float, gaps_ms: list[float]) -> dict[str, Any]:
    t = int((arrival_ms + ttft_ms) * MS)
    events = [t]
    for g in gaps_ms:
        t += int(g * MS)
        events.append(t)
    return {
        "arrival_ns": int(arrival_ms * MS),
        "handler_ns": int((arrival_ms + 1) * MS),  # aiohttp's intake took 1 ms
        "events_ns": events,
        "tokens": len(events),
    }


def test_truth_skips_the_warm_up_and_pools_gaps() -> None:
    # One request every 100 ms for 10 s; the first second's have a slow TTFT (warm-up).
    entries = [entry(i * 100, 500 if i < 10 else 50, [10, 10, 30]) for i in range(100)]
    t = score(entries, skip_s=1.0, tail_s=0.0)
    assert t.requests == 90
    assert t.ttft_ms == {50.0: pytest.approx(50), 99.0: pytest.approx(50)}
    assert t.itl_ms[50.0] == pytest.approx(10) and t.itl_ms[99.0] == pytest.approx(30)
    assert t.tpot_ms[50.0] == pytest.approx(50 / 3)
    # Ingest counts every event written inside the window [1 s, 9.9 s] (the last arrival), also
    # those of requests that arrived before it: what the server wrote, not who asked.
    written = sum(1 for e in entries for ns in e["events_ns"] if S <= ns <= 9_900 * MS)
    assert t.window == (S, 9_900 * MS)
    assert t.ingest_tok_s == pytest.approx(written / 8.9)
    assert 40 < t.ingest_tok_s < 45  # four events per 100 ms, plus the slow warm-up's spill


def record(seq: int, sent_ns: int, ev_ns: list[int]) -> Record:
    return Record(
        run_id="r", seq=seq, phase="measure", api="chat", t_intended=sent_ns, t_sent=sent_ns,
        ev_t=tuple(ev_ns), ev_kind="c" * len(ev_ns),
    )  # fmt: skip


def test_decomposition_splits_send_delay_from_receive_delay() -> None:
    entries = [entry(1000 + i * 100, 50, [10, 10]) for i in range(20)]
    # The client sent 2 ms before each arrival and stamped each event 0.5 ms after its write.
    records = [
        record(i, e["arrival_ns"] - 2 * MS, [t + MS // 2 for t in e["events_ns"]])
        for i, e in enumerate(entries)
    ]
    d = decompose(records, entries, None)
    assert d.matched == 20
    assert d.send_to_arrival_ms == {50.0: pytest.approx(2), 99.0: pytest.approx(2)}
    assert d.arrival_to_handler_ms == {50.0: pytest.approx(1), 99.0: pytest.approx(1)}
    assert d.write_to_read_ms == {50.0: pytest.approx(0.5), 99.0: pytest.approx(0.5)}
    # A record whose event count differs from the server's request is not paired with it.
    short = [*records[:-1], record(19, records[-1].t_sent, list(records[-1].ev_t[:2]))]
    assert decompose(short, entries, None).matched == 19


def test_the_bound_check_sets_the_true_error_against_the_records_bound() -> None:
    from bench._truth import check_bound

    entries = [entry(1000 + i * 100, 50, [10, 10]) for i in range(20)]

    def records(late_ms: float, bound_ms: float) -> list[Record]:
        # Every second event is stamped `late_ms` late (read with the next one): its bound says
        # by how much it may be.
        out = []
        for i, e in enumerate(entries):
            lates = [int(late_ms * MS) if k == 1 else 0 for k in range(3)]
            stamps = [t + d for t, d in zip(e["events_ns"], lates, strict=True)]
            r = record(i, e["arrival_ns"], stamps)
            out.append(dataclasses.replace(r, sent_late=0, ev_late=(0, int(bound_ms * MS), 0)))
        return out

    c = check_bound(records(4, 5), entries, None)
    assert c.matched == 20
    assert c.ttft_err_ms == {50.0: pytest.approx(0), 99.0: pytest.approx(0)}
    assert c.itl_err_ms[99.0] == pytest.approx(4)  # 10 + 4 ms where the truth has 10
    assert c.itl_bound_ms is not None and c.itl_bound_ms[99.0] == pytest.approx(5)
    assert c.holds() is True
    assert check_bound(records(4, 1), entries, None).holds() is False  # a bound below the error
    assert check_bound(records(4, 0), entries, None).itl_bound_ms == {50.0: 0, 99.0: 0}
    unbounded = [dataclasses.replace(r, ev_late=None) for r in records(4, 5)]
    assert check_bound(unbounded, entries, None).holds() is None
