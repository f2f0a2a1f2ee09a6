"""The measured error bound of a run's TTFT and ITL percentiles (METRICS.md, "Validity of the
measurement").

Why a bound and not a proxy: with kernel receive stamps, event-loop lag no longer turns into
error one for one (issue 15: runs with a loop-lag p99 of 2.7 ms measured TTFT within 0.65 ms of the
simulator's truth, while a run with 10 ms of error on the send side showed no lag at all). What
can still go wrong is known per record, and the client stores it: `sent_late`, how much later
than the true send `t_sent` may be (0 with the kernel's transmit stamp), and `ev_late[i]`, how
much later than its true arrival event i may be stamped (events that queued in the socket while
the worker was late share the newest segment's stamp). So each sample's true value lies in an
interval the record states:

    TTFT      [TTFT - ev_late[0],  TTFT + sent_late]
    ITL gap i [gap - ev_late[i],   gap + ev_late[i-1]]

Why the percentile bound is rigorous: the summary's percentile (`np.percentile`, linear) of n
samples is (1 - f) x_(j) + f x_(j+1), a convex combination of two adjacent order statistics
whose j and f depend only on n and p. Each order statistic is non-decreasing in every sample (raise
one sample and no k-th smallest can fall), so with every true value t_i in [lo_i, hi_i],
x_(k)(lo) <= x_(k)(t) <= x_(k)(hi) for every k, and so q_p(lo) <= q_p(t) <= q_p(hi). The measured
percentile q_p(m) is therefore overstated by at most q_p(m) - q_p(lo) and understated by at most
q_p(hi) - q_p(m). This holds however the errors are spread over the requests, with no
assumption of independence; it is tight when every sample errs the same way. The bound is
computed over exactly the summary's samples (`Samples`, the succeeded measured requests), so it is
the bound of the figure the summary prints.

A record without a bound (no kernel stamps, a records file written before the fields existed)
makes the whole run's bound unknown: one interval missing leaves the order statistics unbounded.
The verdict then falls back to the old proxies, and says so (`summary.validity`).

Bounds are kept in integer nanoseconds, rounded up (past a float residue far below one ns), so a
bound of exactly the tolerance compares equal to it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latbench.records.record import Record
from latbench.summary.samples import NS_PER_S, Samples

# The percentiles every bound is reported at; p99 is the one the verdict judges.
BOUND_PERCENTILES: tuple[float, float] = (50.0, 99.0)
# np.percentile interpolates in float64: at a TTFT of minutes (1e11 ns) its residue is ~1e-5 ns.
_RESIDUE_NS = 1e-3


def _ceil_ns(x: float) -> int:
    return max(0, math.ceil(x - _RESIDUE_NS))


@dataclass(frozen=True)
class QuantileBound:
    """How far one measured percentile may be from the true one, in ns."""

    over_ns: int  # the measured figure may exceed the true one by at most this
    under_ns: int  # ... and fall short of it by at most this

    @property
    def bound_ns(self) -> int:
        return max(self.over_ns, self.under_ns)

    def to_dict(self) -> dict[str, float]:
        return {
            "over_s": self.over_ns / NS_PER_S,
            "under_s": self.under_ns / NS_PER_S,
            "bound_s": self.bound_ns / NS_PER_S,
        }


@dataclass(frozen=True)
class MetricBound:
    """The bound of one metric's p50 and p99; both None when unknown or without samples."""

    metric: str  # "ttft" or "itl"
    samples: int  # the summary's samples of the metric
    missing: int  # succeeded measured requests with samples of the metric but no bound
    p50: QuantileBound | None
    p99: QuantileBound | None

    @property
    def known(self) -> bool:
        return self.missing == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "missing": self.missing,
            "p50": None if self.p50 is None else self.p50.to_dict(),
            "p99": None if self.p99 is None else self.p99.to_dict(),
        }


@dataclass(frozen=True)
class ErrorBounds:
    """The run's TTFT and ITL error bounds."""

    ttft: MetricBound
    itl: MetricBound
    missing: int  # succeeded measured requests with a sample but without a bound for it

    @property
    def known(self) -> bool:
        """Every sample is bounded, and there is a TTFT sample to bound: only then can the
        bound, not a proxy, judge the run."""
        return self.ttft.known and self.itl.known and self.ttft.samples > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "known": self.known,
            "missing": self.missing,
            "ttft": self.ttft.to_dict(),
            "itl": self.itl.to_dict(),
        }


def _quantile_bounds(m: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[QuantileBound]:
    qm = np.percentile(m, BOUND_PERCENTILES)
    qlo = np.percentile(lo, BOUND_PERCENTILES)
    qhi = np.percentile(hi, BOUND_PERCENTILES)
    return [
        QuantileBound(_ceil_ns(float(a - b)), _ceil_ns(float(c - a)))
        for a, b, c in zip(qm, qlo, qhi, strict=True)
    ]


def _metric(
    metric: str, m: np.ndarray, lo: np.ndarray, hi: np.ndarray, missing: int
) -> MetricBound:
    if missing or m.size == 0:
        return MetricBound(metric, int(m.size), missing, None, None)
    p50, p99 = _quantile_bounds(m, lo, hi)
    return MetricBound(metric, int(m.size), 0, p50, p99)


def _ev_late(r: Record) -> Sequence[int] | None:
    """The record's per-event bound, None unless it has one for every event."""
    late = r.ev_late
    return late if late is not None and len(late) == len(r.ev_t) else None


def error_bounds(ok: Sequence[Record], s: Samples) -> ErrorBounds:
    """The bounds of the summary's TTFT and ITL p50/p99; `s` is `Samples.build(ok)`, the samples
    the summary's figures come from."""
    nreq = len(ok)
    ev_late = [_ev_late(r) for r in ok]
    has_ev = np.fromiter((x is not None for x in ev_late), dtype=bool, count=nreq)
    has_sent = np.fromiter((r.sent_late is not None for r in ok), dtype=bool, count=nreq)
    sent = np.fromiter((r.sent_late or 0 for r in ok), dtype=np.int64, count=nreq)
    # Per event, aligned with `s.event_t`; 0 where the record has no bound (it is then missing).
    late = np.fromiter(
        itertools.chain.from_iterable(
            x if x is not None else itertools.repeat(0, len(r.ev_t))
            for x, r in zip(ev_late, ok, strict=True)
        ),
        dtype=np.int64,
        count=int(s.n_events.sum()),
    )
    starts = s.event_starts

    ttft_s = s.per_request["ttft"]
    with_ttft = ~np.isnan(ttft_s)
    m = np.rint(ttft_s[with_ttft] * NS_PER_S)
    first_late = late[starts[with_ttft]]
    ttft_known = (has_ev & has_sent)[with_ttft]
    ttft = _metric("ttft", m, m - first_late, m + sent[with_ttft], int((~ttft_known).sum()))

    with_gaps = s.n_events >= 2
    gaps = np.rint(s.gaps["itl"] * NS_PER_S)
    earlier, later = late[:-1][s.gap_keep], late[1:][s.gap_keep]
    itl = _metric("itl", gaps, gaps - later, gaps + earlier, int((with_gaps & ~has_ev).sum()))

    lacking = (with_ttft & ~(has_ev & has_sent)) | (with_gaps & ~has_ev)
    return ErrorBounds(ttft, itl, int(lacking.sum()))


def record_bounds_s(r: Record) -> tuple[float | None, np.ndarray | None]:
    """One record's own bounds, in seconds, for the Prometheus sink: its TTFT's (the wider side
    of its interval) and each gap's; None where it has no bound or no sample."""
    late = _ev_late(r)
    if late is None or not late:
        return None, None
    ttft = None if r.sent_late is None else max(late[0], r.sent_late) / NS_PER_S
    arr = np.asarray(late, dtype=np.int64)
    return ttft, np.maximum(arr[1:], arr[:-1]) / NS_PER_S
