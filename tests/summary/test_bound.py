"""The error bound of a run's TTFT and ITL percentiles (summary.bound): the quantile-interval
arithmetic on hand-built records, its rigour against any true values inside the intervals, and
what an unknown bound looks like."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from latbench.records import Record
from latbench.summary import Samples
from latbench.summary.bound import ErrorBounds, error_bounds, record_bounds_s

MS = 1_000_000


def rec(
    seq: int,
    events_ns: Sequence[int],
    ev_late: Sequence[int] | None,
    sent_late: int | None = 0,
) -> Record:
    return Record(
        run_id="t",
        seq=seq,
        phase="measure",
        api="chat",
        t_intended=0,
        t_sent=0,
        t_end=events_ns[-1] + 1 if events_ns else 1,
        ev_t=tuple(events_ns),
        ev_kind="c" * len(events_ns),
        sent_late=sent_late,
        ev_late=None if ev_late is None else tuple(ev_late),
    )


def bounds(records: Sequence[Record]) -> ErrorBounds:
    return error_bounds(records, Samples.build(records))


def test_ttft_bound_is_the_distance_between_the_percentiles_of_m_and_of_its_interval() -> None:
    # TTFT 50, 60, 70, 80 ms; the first event may be stamped late by 1, 2, 3, 10 ms; the sends
    # by 0, 0, 4, 0 ms (a late send stamp understates TTFT).
    ttft = [50 * MS, 60 * MS, 70 * MS, 80 * MS]
    late = [1 * MS, 2 * MS, 3 * MS, 10 * MS]
    sent = [0, 0, 4 * MS, 0]
    b = bounds(
        [rec(i, [t], [lt], s) for i, (t, lt, s) in enumerate(zip(ttft, late, sent, strict=True))]
    )
    assert b.known and b.missing == 0 and b.ttft.samples == 4
    # lo = 49, 58, 67, 70: p50 62.5 against 65; p99 69.91 against 79.7 (linear, as the summary).
    assert b.ttft.p50 is not None and b.ttft.p99 is not None
    assert b.ttft.p50.over_ns == 2_500_000
    assert b.ttft.p99.over_ns == 9_790_000
    # hi = 50, 60, 74, 80: p50 67 against 65; p99 79.82 against 79.7.
    assert b.ttft.p50.under_ns == 2_000_000
    assert b.ttft.p99.under_ns == 120_000
    assert b.ttft.p99.bound_ns == 9_790_000
    d = b.to_dict()
    assert d["ttft"]["p99"] == {"over_s": 0.00979, "under_s": 0.00012, "bound_s": 0.00979}
    assert d["known"] is True


def test_itl_gap_i_lies_between_gap_minus_its_own_late_and_gap_plus_the_previous() -> None:
    # One request, events at 100, 110, 130 ms, late by 0, 3, 1 ms: gaps 10 ms in [7, 10] and
    # 20 ms in [19, 23].
    b = bounds([rec(0, [100 * MS, 110 * MS, 130 * MS], [0, 3 * MS, 1 * MS])])
    assert b.itl.samples == 2
    p50, p99 = b.itl.p50, b.itl.p99
    assert p50 is not None and p99 is not None
    # m: 15 and 19.9; lo (7, 19): 13 and 18.88; hi (10, 23): 16.5 and 22.87.
    assert (p50.over_ns, p50.under_ns) == (2_000_000, 1_500_000)
    assert (p99.over_ns, p99.under_ns) == (1_020_000, 2_970_000)


def test_the_gaps_of_several_requests_do_not_pair_events_across_requests() -> None:
    # The second request's first event is late by 50 ms: it bounds its TTFT, never a gap.
    records = [
        rec(0, [10 * MS, 20 * MS], [0, 0]),
        rec(1, [10 * MS, 20 * MS], [50 * MS, 0]),
    ]
    b = bounds(records)
    # Its own gap may be 10 to 60 ms (hi = 10, 60: p99 59.5 against 10), never shorter.
    assert b.itl.p99 is not None
    assert (b.itl.p99.over_ns, b.itl.p99.under_ns) == (0, 49_500_000)
    assert b.ttft.p99 is not None and b.ttft.p99.over_ns > 0
    one = bounds(records[:1])
    assert one.itl.p99 is not None and one.itl.p99.bound_ns == 0


@pytest.mark.parametrize("seed", range(5))
def test_the_true_percentile_always_lies_inside_the_bound(seed: int) -> None:
    """Rigour: whatever the true values inside the records' intervals (drawn at random, and
    at the intervals' ends), the true p50 and p99 lie within [m - over, m + under]."""
    rng = np.random.default_rng(seed)
    n = 200
    events = rng.integers(1, 6, size=n)
    records = []
    for i in range(n):
        t = np.cumsum(rng.integers(1 * MS, 30 * MS, size=events[i]))
        late = rng.integers(0, 8 * MS, size=events[i]) * (rng.random(events[i]) < 0.3)
        records.append(rec(i, t.tolist(), late.tolist(), int(rng.integers(0, 3 * MS))))
    b = bounds(records)
    s = Samples.build(records)
    measured = {"ttft": s.samples("ttft") * 1e9, "itl": s.samples("itl") * 1e9}
    for trial in range(50):
        true_ttft, true_gaps = [], []
        for r in records:
            assert r.ev_late is not None and r.sent_late is not None
            lat = np.asarray(r.ev_late)
            # How early each true arrival was, and how early the true send, in their ranges.
            u = rng.random(lat.size) if trial > 1 else np.full(lat.size, float(trial))
            arrival = np.asarray(r.ev_t) - np.rint(u * lat)
            sent = r.t_sent - round((rng.random() if trial > 1 else trial) * r.sent_late)
            true_ttft.append(arrival[0] - sent)
            true_gaps.extend(np.diff(arrival))
        for metric, truth in (("ttft", true_ttft), ("itl", true_gaps)):
            mb = getattr(b, metric)
            for p, q in ((50, mb.p50), (99, mb.p99)):
                m = np.percentile(measured[metric], p)
                t = np.percentile(np.asarray(truth, dtype=np.float64), p)
                assert m - q.over_ns - 1 <= t <= m + q.under_ns + 1, (metric, p, trial)


def test_a_record_without_a_bound_makes_the_run_bound_unknown_and_is_counted() -> None:
    records = [
        rec(0, [10 * MS, 20 * MS], [0, 0]),
        rec(1, [10 * MS, 20 * MS], None),  # no kernel stamps: no bound at all
        rec(2, [10 * MS, 20 * MS], [0, 0], sent_late=None),  # the send's bound unknown
    ]
    b = bounds(records)
    assert not b.known
    assert b.missing == 2
    assert (b.ttft.missing, b.itl.missing) == (2, 1)
    assert b.ttft.p99 is None and b.itl.p99 is None
    assert b.to_dict()["ttft"]["p99"] is None
    # Without the send-side unknown, ITL alone is missing one record, and TTFT too.
    assert bounds(records[:2]).missing == 1


def test_a_bound_list_that_does_not_match_the_events_is_no_bound() -> None:
    b = bounds([rec(0, [10 * MS, 20 * MS], [0])])
    assert not b.known and b.missing == 1


def test_requests_without_events_are_not_missing_a_bound() -> None:
    b = bounds([rec(0, [10 * MS], [1 * MS]), rec(1, [], None)])
    assert b.known and b.ttft.samples == 1 and b.itl.samples == 0
    assert b.itl.p99 is None  # nothing to bound


def test_no_sample_at_all_is_not_a_known_bound() -> None:
    assert not bounds([]).known


def test_one_records_own_bounds_for_prometheus() -> None:
    ttft, gaps = record_bounds_s(rec(0, [10 * MS, 20 * MS, 30 * MS], [2 * MS, 0, 1 * MS], MS // 2))
    assert ttft == 0.002
    assert gaps is not None and gaps.tolist() == [0.002, 0.001]
    ttft, gaps = record_bounds_s(rec(0, [10 * MS], [3 * MS], None))
    assert ttft is None and gaps is not None and gaps.size == 0  # one event: no gap
    assert record_bounds_s(rec(0, [10 * MS], None)) == (None, None)
