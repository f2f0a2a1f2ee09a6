"""Each metric of METRICS.md, defined once: what a record's timestamps and counts turn into.

Every module that needs a latency or a token count takes it from here: the summary, compare and
the server reconciliation (the vectorised `Samples`), the Prometheus sink (`record_samples`, per
record, on the runner's loop), the live progress of the terminal and the service, and the charts.
So no two of them can read the contract differently, and a sample that is exactly 100 ms in the
summary is exactly 0.1 on the Prometheus sink too.

A per-request latency is the span between two instants of the request (`SPANS`); both forms
apply that one table, the vectorised one to flat arrays of instants. Spans are subtracted in
integer nanoseconds first and divided once, so an exact instant stays exact. Samples are flat
numpy arrays (one entry per request, one per gap), never per-token Python objects: a run can hold
100k requests of 1k events each.

The measurement window and what it held (`derived_window`, `delivered`) are here too: the
runner's footer, a summary of a file without one, and the rates all take them from one place.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from latbench.records.record import CONTENT, TOOL_CALL, Record
from latbench.spec.slo import Slo

if TYPE_CHECKING:
    from latbench.spec.load import LoadSpec

NS_PER_S = 1_000_000_000

# Metrics with one sample per gap between events; every other metric has one per request.
GAP_METRICS = frozenset({"itl", "itl_per_token"})

# Per-request latency -> (later instant, earlier instant). The instants: `intended` and `sent`
# (t_intended, t_sent), `last_sent` (the last attempt's send: t_sent unless retried),
# `first` and `last` token-bearing event (reasoning and tool calls count), `first_content`, the
# first content event, and `first_tool_call`, the first tool-call event. A request that lacks an
# instant has no sample.
SPANS: Mapping[str, tuple[str, str]] = {
    "ttft": ("first", "sent"),
    "ttfo": ("first_content", "sent"),
    "e2e": ("last", "sent"),
    "queue_delay": ("sent", "intended"),
    "ttft_from_schedule": ("first", "intended"),
    "e2e_from_schedule": ("last", "intended"),
    # Time to first tool-call token (METRICS.md, "Requested vs measured workload").
    "ttft_tool_call": ("first_tool_call", "sent"),
    # TTFT and E2E of the attempt whose answer was read: what a server's own span of the request
    # describes (summary/spans.py, the Prometheus sink's join), so the time lost to refusals
    # and waits is charged to neither side. Equal to ttft and e2e for a request sent once.
    "attempt_ttft": ("first", "last_sent"),
    "attempt_e2e": ("last", "last_sent"),
}
# TPOT is not a span: (last - first) / (N_out - 1), for N_out > 1 (`tpot_s`).

Instants = Mapping[str, int | None]


def last_sent(r: Record) -> int:
    """The last attempt's send: `t_last_sent` for a retried request, else `t_sent`."""
    return r.t_last_sent if r.attempts > 1 and r.t_last_sent is not None else r.t_sent


# The instants every request has, read straight off the record (fast, for whole arrays).
_ALWAYS: Mapping[str, Callable[[Record], int]] = {
    "intended": attrgetter("t_intended"),
    "sent": attrgetter("t_sent"),
    "last_sent": last_sent,
}


# --------------------------------------------------------------------------------------------
# One record


def instants(r: Record) -> Instants:
    """The instants `SPANS` names, None where the request has none (no event, no content)."""
    ev = r.ev_t
    fc = r.ev_kind.find(CONTENT)
    ft = r.ev_kind.find(TOOL_CALL)
    return {
        "intended": r.t_intended,
        "sent": r.t_sent,
        "last_sent": last_sent(r),
        "first": ev[0] if ev else None,
        "last": ev[-1] if ev else None,
        "first_content": ev[fc] if 0 <= fc < len(ev) else None,
        "first_tool_call": ev[ft] if 0 <= ft < len(ev) else None,
    }


def span_ns(at: Instants, metric: str) -> int | None:
    """A per-request latency in integer ns, from a record's `instants`; None without a sample."""
    later, earlier = SPANS[metric]
    a, b = at[later], at[earlier]
    return None if a is None or b is None else a - b


def spans_ns(records: Sequence[Record], metric: str) -> np.ndarray:
    """A span between two instants every request has (queue delay), for each record, in ns."""
    later, earlier = SPANS[metric]
    n = len(records)
    a = np.fromiter(map(_ALWAYS[later], records), dtype=np.int64, count=n)
    return a - np.fromiter(map(_ALWAYS[earlier], records), dtype=np.int64, count=n)


def ev_n_known(r: Record) -> bool:
    """The server's per-event token counts are usable: a count list that does not match the
    events cannot be attributed to them."""
    return r.ev_n is not None and len(r.ev_n) == len(r.ev_t)


def n_out(r: Record) -> int:
    """N_out: the server's usage when reported, else the sum of per-event counts, else one
    token per token-bearing event."""
    if r.usage_completion_tokens is not None:
        return r.usage_completion_tokens
    if ev_n_known(r):
        assert r.ev_n is not None
        return sum(r.ev_n)
    return len(r.ev_t)


def tpot_s(at: Instants, tokens: int) -> float | None:
    """TPOT of a request with `tokens` = N_out; None unless it has events and N_out > 1."""
    first, last = at["first"], at["last"]
    if first is None or last is None or tokens <= 1:
        return None
    return (last - first) / (float(tokens - 1) * NS_PER_S)


def itl_ns(r: Record) -> np.ndarray:
    """ITL: the gaps between consecutive token-bearing events, in integer ns."""
    return np.diff(np.asarray(r.ev_t, dtype=np.int64))


def itl_per_token_s(r: Record, gaps_ns: np.ndarray, itl_s: np.ndarray) -> np.ndarray:
    """Each gap ÷ the tokens of its later event: `itl_s` itself where the server gave no counts
    (one token an event). An event reported with 0 tokens counts its gap once, as GenAI-Perf
    does, instead of dividing by zero."""
    if not ev_n_known(r) or not gaps_ns.size:
        return itl_s
    assert r.ev_n is not None
    later = np.maximum(np.asarray(r.ev_n[1:], dtype=np.int64), 1).astype(np.float64)
    return gaps_ns / (later * NS_PER_S)


def event_kinds(records: Sequence[Record]) -> np.ndarray:
    """Every event's kind letter (as uint8), in request order: aligned with `Samples.event_t`.
    A record whose kinds do not match its events (a hand-edited file) has them cut or padded
    with content, so that the others stay aligned."""
    kinds = "".join(
        k if len(k := r.ev_kind) == len(r.ev_t) else k[: len(r.ev_t)].ljust(len(r.ev_t), CONTENT)
        for r in records
    )
    return np.frombuffer(kinds.encode("ascii", "replace"), dtype=np.uint8)


def kind_tokens(r: Record, kind: str) -> int:
    """One record's tokens of one event kind (TOOL_CALL, ...), as the summary's `by_kind` counts
    them: each event's reported count, else one an event; kinds aligned as `event_kinds` does."""
    kinds = r.ev_kind[: len(r.ev_t)].ljust(len(r.ev_t), CONTENT)
    if kind not in kinds:
        return 0
    counts = r.ev_n if ev_n_known(r) else None
    return sum(1 if counts is None else counts[i] for i, k in enumerate(kinds) if k == kind)


def last_instant(r: Record) -> int:
    """The latest instant a request holds. Normally t_end; a record cut short may lack it, and
    its events still happened."""
    return max(r.t_sent, r.ev_t[-1] if r.ev_t else r.t_sent, r.t_end or r.t_sent)


_NO_GAPS = np.empty(0, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class RecordSamples:
    """One record's metric samples, in seconds; None where it has no sample."""

    per_request: Mapping[str, float | None]
    itl: np.ndarray
    itl_per_token: np.ndarray
    n_out: int


def record_samples(r: Record) -> RecordSamples:
    """Every metric of one record, bit for bit what `Samples` gives for it (the Prometheus
    sink observes these per record on the runner's loop, so `span_ns` is inlined here)."""
    at = instants(r)
    per: dict[str, float | None] = {}
    for metric, (later, earlier) in SPANS.items():
        a, b = at[later], at[earlier]
        per[metric] = None if a is None or b is None else (a - b) / NS_PER_S
    tokens = n_out(r)
    per["tpot"] = tpot_s(at, tokens)
    if len(r.ev_t) < 2:
        return RecordSamples(per, _NO_GAPS, _NO_GAPS, tokens)
    gaps = itl_ns(r)
    itl = gaps / NS_PER_S
    return RecordSamples(per, itl, itl_per_token_s(r, gaps, itl), tokens)


def record_meets_all(s: RecordSamples, slos: Sequence[Slo]) -> bool:
    """`Samples.meets_all` for one record: at or under every SLO's threshold, judged on its own
    sample (its worst gap for ITL); a metric it has no sample of is not judged."""
    for slo in slos:
        if slo.metric in GAP_METRICS:
            gaps = s.itl if slo.metric == "itl" else s.itl_per_token
            if gaps.size and float(gaps.max()) > slo.threshold_s:
                return False
        else:
            v = s.per_request.get(slo.metric)
            if v is not None and v > slo.threshold_s:
                return False
    return True


# --------------------------------------------------------------------------------------------
# Many records, vectorised


@dataclass(frozen=True)
class Samples:
    """Every metric's samples over a set of records (the succeeded ones, for the summary), as
    flat arrays built once.

    Per-request arrays hold NaN where a request has no sample (no events, no content, N_out <= 1);
    gap arrays hold one value per gap, in request order. `event_t` holds every event's arrival,
    in request order, and `ev_tokens` its reported token count where any request reported them.
    """

    per_request: dict[str, np.ndarray]  # seconds
    gaps: dict[str, np.ndarray]  # seconds
    worst_gap: dict[str, np.ndarray]  # per request, its largest gap; NaN without gaps
    n_out: np.ndarray
    usage: np.ndarray  # usage completion tokens, -1 when not reported
    ev_n_known: np.ndarray
    ev_n_sum: np.ndarray
    n_events: np.ndarray
    event_t: np.ndarray  # ns
    ev_tokens: np.ndarray | None  # per event; 1 where its request gave no counts
    gap_keep: np.ndarray  # over consecutive pairs of `event_t`: the pair is a gap of one request

    @property
    def event_starts(self) -> np.ndarray:
        """Per request, the index in `event_t` of its first event."""
        return np.cumsum(self.n_events) - self.n_events

    @classmethod
    def build(cls, records: Sequence[Record]) -> Samples:
        nreq = len(records)
        n_ev = np.fromiter((len(r.ev_t) for r in records), dtype=np.int64, count=nreq)
        total = int(n_ev.sum())
        t = np.fromiter(
            itertools.chain.from_iterable(r.ev_t for r in records), dtype=np.int64, count=total
        )
        ends = np.cumsum(n_ev)
        starts = ends - n_ev
        has = n_ev > 0
        first = np.zeros(nreq, dtype=np.int64)
        last = np.zeros(nreq, dtype=np.int64)
        first[has] = t[starts[has]]
        last[has] = t[ends[has] - 1]
        fc = np.fromiter((r.ev_kind.find(CONTENT) for r in records), dtype=np.int64, count=nreq)
        has_c = (fc >= 0) & (fc < n_ev)
        first_c = np.zeros(nreq, dtype=np.int64)
        first_c[has_c] = t[starts[has_c] + fc[has_c]]
        ft = np.fromiter((r.ev_kind.find(TOOL_CALL) for r in records), dtype=np.int64, count=nreq)
        has_t = (ft >= 0) & (ft < n_ev)
        first_t = np.zeros(nreq, dtype=np.int64)
        first_t[has_t] = t[starts[has_t] + ft[has_t]]
        always = np.ones(nreq, dtype=bool)
        # The instants of `instants`, each with the mask of requests that have it.
        at: dict[str, tuple[np.ndarray, np.ndarray]] = {
            name: (np.fromiter(map(get, records), dtype=np.int64, count=nreq), always)
            for name, get in _ALWAYS.items()
        }
        at |= {
            "first": (first, has),
            "last": (last, has),
            "first_content": (first_c, has_c),
            "first_tool_call": (first_t, has_t),
        }

        # N_out, as `n_out`: usage, else the sum of per-event counts, else one per event.
        usage = np.fromiter(
            (
                -1 if r.usage_completion_tokens is None else r.usage_completion_tokens
                for r in records
            ),
            dtype=np.int64,
            count=nreq,
        )
        known = np.fromiter((ev_n_known(r) for r in records), dtype=bool, count=nreq)
        ev_sum = n_ev.copy()
        n: np.ndarray | None = None  # tokens per event, only when some request reported them
        if known.any():
            # 1 per event where the server did not report counts (METRICS.md).
            n = np.fromiter(
                itertools.chain.from_iterable(
                    r.ev_n if ev_n_known(r) else itertools.repeat(1, len(r.ev_t)) for r in records
                ),
                dtype=np.int64,
                count=total,
            )
            ev_sum[has] = np.add.reduceat(n, starts[has])
        tokens = np.where(usage >= 0, usage, np.where(known, ev_sum, n_ev))

        def span(
            a: np.ndarray, b: np.ndarray, mask: np.ndarray, per: np.ndarray | None = None
        ) -> np.ndarray:
            # Subtract in integer ns, then divide once, so that an exact instant stays exact.
            out = np.full(nreq, np.nan)
            out[mask] = (a[mask] - b[mask]) / (NS_PER_S if per is None else per[mask] * NS_PER_S)
            return out

        per_request: dict[str, np.ndarray] = {}
        for metric, (later, earlier) in SPANS.items():
            (a, a_has), (b, b_has) = at[later], at[earlier]
            per_request[metric] = span(a, b, a_has & b_has)
        per_request["tpot"] = span(last, first, has & (tokens > 1), (tokens - 1).astype(np.float64))

        # Gaps between consecutive events; the one into each request's first event is not a gap.
        keep = np.ones(max(total - 1, 0), dtype=bool)
        first_idx = starts[has]
        keep[first_idx[first_idx > 0] - 1] = False
        gap_ns = np.diff(t)[keep]
        itl = gap_ns / NS_PER_S
        if n is None:
            itl_per_token = itl
        else:
            # As `itl_per_token_s`: a 0-token event counts its gap once.
            later_n = np.maximum(n[1:][keep], 1).astype(np.float64)
            itl_per_token = gap_ns / (later_n * NS_PER_S)
        gaps = {"itl": itl, "itl_per_token": itl_per_token}

        gcount = np.maximum(n_ev - 1, 0)
        gstart = np.cumsum(gcount) - gcount
        with_gaps = gcount > 0
        worst_gap: dict[str, np.ndarray] = {}
        for name, values in gaps.items():
            worst = np.full(nreq, np.nan)
            if values.size:
                # Segments are contiguous and non-empty once requests without gaps are skipped.
                worst[with_gaps] = np.maximum.reduceat(values, gstart[with_gaps])
            worst_gap[name] = worst
        return cls(per_request, gaps, worst_gap, tokens, usage, known, ev_sum, n_ev, t, n, keep)

    def samples(self, metric: str) -> np.ndarray:
        """The metric's samples, in seconds, requests without one left out."""
        if metric in GAP_METRICS:
            return self.gaps[metric]
        values = self.per_request[metric]
        return values[~np.isnan(values)]

    def gap_t(self) -> np.ndarray:
        """The arrival (ns) of each gap's later event, aligned with `gaps`."""
        return self.event_t[1:][self.gap_keep]

    def event_tokens(self) -> np.ndarray:
        """Tokens per event: its reported count, else one."""
        if self.ev_tokens is None:
            return np.ones(self.event_t.size, dtype=np.int64)
        return self.ev_tokens

    def meets_all(self, slos: Sequence[Slo]) -> np.ndarray:
        """Per request: at or under every SLO's threshold.

        A request is judged on its own sample, and on every one of its gaps for ITL. One without
        a sample of a metric (no second token, no content) is not judged on that metric; vLLM's
        goodput does the same by counting a missing TPOT as 0.
        """
        good = np.ones(self.n_out.size, dtype=bool)
        for slo in slos:
            own = (self.worst_gap if slo.metric in GAP_METRICS else self.per_request)[slo.metric]
            good &= ~(own > slo.threshold_s)  # NaN compares False: not judged
        return good


# --------------------------------------------------------------------------------------------
# The measurement window and the rates over it
#
# A rate is what the server delivered inside the window, whatever the phase of the request it
# delivered it to: the window is a fixed span of time, and in a closed loop with warm-up the
# server is never idle at its start (warm-up requests are still streaming) nor at its end (with
# a duration, measured ones still are). Counting only measure-phase requests over the window, as
# latbench did, left those streams out and read the default demo (8 users, 1.32 s E2E, 2 s
# warm-up, 15 s) at 5.76 req/s and 737 tok/s for a steady state of 6.05 and 774.


def derived_window(
    records: Iterable[Record], load: LoadSpec | None = None
) -> tuple[int, int] | None:
    """[start, end) of the measurement, monotonic ns, from a run's records (every phase) and
    its load; None without a measure-phase request. The runner's footer records this same window
    (cut at a stop), so a file without a footer reads as the live run did.

    The run's start is the earliest `t_intended` (an open loop's request 0 is intended at the
    start itself; a closed loop's first requests at it or within a timer's lateness of it).
    Start: the start plus `warmup` seconds; with `warmup_requests`, the first measured request's
    intended send. End: the earliest of the start plus `duration - cooldown` seconds, the first
    cool-down request's intended send, and just after the latest instant of any request (a run
    bounded by a request count ends when its last request does). Without a load (a caller that
    has only records), warm-up and cool-down are read from the phases as if counted in requests.
    """
    run_start = first_measured = first_cooldown = last = None
    warmup_seen = False
    for r in records:
        t, end = r.t_intended, last_instant(r)
        run_start = t if run_start is None else min(run_start, t)
        last = end if last is None else max(last, end)
        if r.phase == "measure":
            first_measured = t if first_measured is None else min(first_measured, t)
        elif r.phase == "cooldown":
            first_cooldown = t if first_cooldown is None else min(first_cooldown, t)
        else:
            warmup_seen = True
    if run_start is None or first_measured is None or last is None:
        return None
    if load is None:
        start = first_measured if warmup_seen else run_start
    elif load.warmup_requests:
        start = first_measured
    else:
        start = run_start + round(load.warmup * NS_PER_S)
    # One past the last instant, so that [start, end) holds the run's last event.
    ends = [last + 1]
    if first_cooldown is not None:
        ends.append(first_cooldown)
    if load is not None and load.duration is not None:
        ends.append(run_start + round((load.duration - load.cooldown) * NS_PER_S))
    return start, max(min(ends), start)


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a set of requests delivered inside a window.

    `tokens` are the output tokens of the events that arrived in it: N_out spread over a
    request's events by their token counts (one an event where the server gave none), so a
    request wholly inside gives exactly N_out. `requests` counts each request for the share of
    its output that arrived in the window, so one wholly inside counts 1 and one cut by an edge
    the part inside: a closed loop's users finish in waves, and a whole count would move in
    steps of the concurrency as an edge crosses a wave (see docs/metrics.md). A request without
    token events counts at its last instant. `good` is `requests` over those that met every SLO.
    """

    requests: float = 0.0
    good: float = 0.0
    tokens: float = 0.0

    def __add__(self, other: Delivered) -> Delivered:
        return Delivered(
            self.requests + other.requests, self.good + other.good, self.tokens + other.tokens
        )


def delivered(
    s: Samples, records: Sequence[Record], window: tuple[int, int], good: np.ndarray
) -> Delivered:
    """What `records` (the ones `s` was built from, succeeded) delivered in [start, end);
    `good` is `s.meets_all(slos)`."""
    n = len(records)
    if n == 0:
        return Delivered()
    ws, we = window
    # Per-request sums over each request's run of events, as `Samples.build` takes them: no
    # per-event index array (a run can hold 10^8 events).
    inside = (s.event_t >= ws) & (s.event_t < we)
    weight = inside if s.ev_tokens is None else np.where(inside, s.ev_tokens, 0)
    with_events = s.n_events > 0
    starts = s.event_starts[with_events]
    within = np.zeros(n)
    if starts.size:
        within[with_events] = np.add.reduceat(weight, starts, dtype=np.float64)
    total = s.ev_n_sum.astype(np.float64)  # the events' tokens: counts, else one an event
    ends = np.fromiter(map(last_instant, records), dtype=np.int64, count=n)
    has = total > 0
    share = np.where(has, within / np.where(has, total, 1.0), (ends >= ws) & (ends < we))
    n_out = s.n_out.astype(np.float64)
    # Where N_out is the events' own sum (the usual case) the tokens inside are an exact sum.
    tokens = np.where(n_out == total, within, share * n_out)
    return Delivered(float(share.sum()), float(share[good].sum()), float(tokens.sum()))


def delivered_by(
    records: Iterable[Record], window: tuple[int, int], slos: Sequence[Slo]
) -> Delivered:
    """`delivered` for succeeded records that have no `Samples` yet (the warm-up and cool-down
    requests): only those whose lifetime meets the window are built, a few at each edge."""
    ws, we = window
    meet = [r for r in records if r.error is None and r.t_sent < we and last_instant(r) >= ws]
    s = Samples.build(meet)
    return delivered(s, meet, window, s.meets_all(slos))
