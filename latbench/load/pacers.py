"""Open-loop pacers: when request n should go, as a pure function of n.

A pacer answers "at what offset from the run's start is request n intended to be sent", in
integer nanoseconds. It reads no clock and never sleeps: the runner owns the one monotonic clock,
stamps `t_intended = start + offset_ns(n)`, and sends late requests at once rather than shifting
the plan, so a stalled server cannot make the load back off (coordinated omission, see wrk2).
Because offsets come from n and not from the previous send, the schedule cannot drift.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np

from latbench.records.record import Phase
from latbench.spec import LoadSpec
from latbench.spec.ramp import stairs

__all__ = [
    "EXACT_GAPS",
    "ConstantPacer",
    "Pacer",
    "PoissonPacer",
    "ProgressRampPacer",
    "RampPacer",
    "StepsPacer",
    "UnitArrivals",
    "phase_of",
    "planned_length_s",
    "shaped_pacer",
]

NS_PER_S = 1_000_000_000

# Mixed into the seed so that a pacer and a workload given the same user seed draw from
# unrelated random streams (otherwise gap k and request k's lengths would be correlated).
_PACER_STREAM = 0x5EED_0001


@runtime_checkable
class Pacer(Protocol):
    def offset_ns(self, n: int) -> int:
        """Intended send time of request n (0, 1, 2, ...) in ns from the start; non-decreasing."""
        ...

    def rate_at(self, offset_ns: int) -> float:
        """Intended requests per second at that offset, for reports."""
        ...

    def __str__(self) -> str: ...


def _positive(name: str, value: float, unit: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number above 0 ({unit}), got {value!r}")
    return v


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"request index n must be >= 0, got {n}")


class ConstantPacer:
    """Request n goes at exactly n / rate seconds."""

    def __init__(self, rate: float) -> None:
        self.rate = _positive("rate", rate, "requests per second")
        # Exact rational arithmetic on the rate as written (10.1, not its binary neighbour), so
        # offsets stay exact and monotonic however large n grows.
        frac = Fraction(repr(self.rate))
        self._num, self._den = frac.numerator, frac.denominator

    def offset_ns(self, n: int) -> int:
        _check_n(n)
        # Floor, so a request is never planned later than its ideal instant.
        return n * NS_PER_S * self._den // self._num

    def rate_at(self, offset_ns: int) -> float:
        return self.rate

    def __str__(self) -> str:
        return f"constant@{self.rate:.2f}/s"

    def __repr__(self) -> str:
        return f"ConstantPacer(rate={self.rate!r})"


class PoissonPacer:
    """Gaps between requests are gamma-distributed with mean 1/rate and shape `burstiness`.

    burstiness 1 gives a Poisson process (exponential gaps); below 1 the arrivals come in bursts,
    above 1 they are more even (coefficient of variation 1/sqrt(burstiness)). This matches
    `vllm bench serve --burstiness`. Request 0 goes at offset 0.

    Gaps are drawn in blocks of `BLOCK`, each from its own stream seeded by (seed, block index),
    so the answers depend only on the seed, never on the order of calls. Only the current and
    the previous block are kept, so memory stays bounded however long the run; asking for a
    request further back replays the gaps from the start (correct, but slow).
    """

    BLOCK = 4096

    def __init__(self, rate: float, burstiness: float = 1.0, seed: int = 0) -> None:
        self.rate = _positive("rate", rate, "requests per second")
        self.burstiness = _positive("burstiness", burstiness, "gamma shape; 1 is Poisson")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._rewind()

    def _rewind(self) -> None:
        self._index = -1  # block held in _offsets; -1 before the first
        self._offsets = np.zeros(0, dtype=np.int64)
        self._prev_offsets: np.ndarray | None = None
        self._next_base = 0  # offset of the first request of block _index + 1

    def _gaps_ns(self, block: int) -> np.ndarray:
        ss = np.random.SeedSequence(self.seed, spawn_key=(_PACER_STREAM, block))
        rng = np.random.default_rng(ss)
        # scale = mean / shape, so the mean gap is 1/rate whatever the shape.
        gaps = rng.gamma(self.burstiness, 1.0 / (self.rate * self.burstiness), self.BLOCK)
        # Rounding each gap (not the running sum) to whole ns keeps the sum in exact integers,
        # so blocks join without floating-point drift over hours.
        return np.rint(gaps * NS_PER_S).astype(np.int64)

    def _advance(self) -> None:
        gaps = self._gaps_ns(self._index + 1)
        # Request i of the block goes after the gaps of requests 0..i-1 of the block.
        offsets = np.empty(self.BLOCK, dtype=np.int64)
        offsets[0] = self._next_base
        np.cumsum(gaps[:-1], out=offsets[1:])
        offsets[1:] += self._next_base
        self._prev_offsets = self._offsets if self._index >= 0 else None
        self._offsets = offsets
        self._next_base = int(offsets[-1] + gaps[-1])
        self._index += 1

    def offset_ns(self, n: int) -> int:
        _check_n(n)
        block, i = divmod(n, self.BLOCK)
        if block == self._index:
            return int(self._offsets[i])
        if block == self._index - 1 and self._prev_offsets is not None:
            return int(self._prev_offsets[i])
        if block < self._index:
            self._rewind()
        while self._index < block:
            self._advance()
        return int(self._offsets[i])

    @property
    def cache_size(self) -> int:
        """How many offsets are held in memory now (bounded by two blocks)."""
        prev = 0 if self._prev_offsets is None else len(self._prev_offsets)
        return len(self._offsets) + prev

    def rate_at(self, offset_ns: int) -> float:
        return self.rate

    def __str__(self) -> str:
        if self.burstiness == 1.0:
            return f"poisson@{self.rate:.2f}/s"
        return f"gamma({self.burstiness:g})@{self.rate:.2f}/s"

    def __repr__(self) -> str:
        return (
            f"PoissonPacer(rate={self.rate!r}, burstiness={self.burstiness!r}, seed={self.seed!r})"
        )


class UnitArrivals:
    """Arrival positions in expected requests: where request n falls on a schedule whose rate
    is 1. Even arrivals put request n at exactly n; gamma ones (`burstiness`, 1 is Poisson) at
    the sum of n unit-mean gamma gaps, drawn by a `PoissonPacer` at rate 1 and so seeded and
    reproducible the same way. A ramp or a staircase maps these positions through the inverse of
    its integrated rate (time rescaling), so one schedule of gaps serves every rate profile and
    Poisson arrivals along a ramp cost nothing extra."""

    def __init__(self, burstiness: float | None = None, seed: int = 0) -> None:
        self._gamma = None if burstiness is None else PoissonPacer(1.0, burstiness, seed)
        self.burstiness = burstiness

    def at(self, n: int) -> Fraction:
        _check_n(n)
        if self._gamma is None:
            return Fraction(n)
        return Fraction(self._gamma.offset_ns(n), NS_PER_S)

    def label(self) -> str:
        if self.burstiness is None:
            return ""
        return " poisson" if self.burstiness == 1.0 else f" gamma({self.burstiness:g})"


def _rate_fraction(name: str, value: float) -> Fraction:
    return Fraction(repr(_positive(name, value, "requests per second")))


class RampPacer:
    """The rate goes from start_rate to end_rate over duration_s, linearly or exponentially,
    then holds at end_rate.

    Request n goes at the t where the integral of the rate from 0 to t equals n (its arrival
    position, `UnitArrivals`), so the plan follows the ramp exactly instead of stepping: linear,
    rate(t) = s + (e - s) t / D, integral s t + (e - s) t^2 / 2D; exponential, rate(t) =
    s (e/s)^(t/D), integral s D (k^(t/D) - 1) / ln k with k = e/s. end_rate must be above 0: the
    rate holds there after the ramp, and a zero rate would never send the rest; an exponential
    ramp needs start_rate above 0 too (0 times any factor stays 0).
    """

    def __init__(
        self,
        start_rate: float,
        end_rate: float,
        duration_s: float,
        strategy: str = "linear",
        arrivals: UnitArrivals | None = None,
    ) -> None:
        s = float(start_rate)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(
                f"start_rate must be a finite number >= 0 (requests per second), got {start_rate!r}"
            )
        if strategy not in ("linear", "exponential"):
            raise ValueError(f"strategy must be linear or exponential, got {strategy!r}")
        self.strategy = strategy
        if strategy == "exponential":
            s = _positive("start_rate", s, "an exponential ramp cannot start at 0 requests/s")
        self.start_rate = s
        self.end_rate = _positive("end_rate", end_rate, "requests per second")
        self.duration_s = _positive("duration_s", duration_s, "seconds")
        self.arrivals = arrivals or UnitArrivals()
        # Linear: rate(t) = start + 2*a*t on the ramp, so its integral is start*t + a*t^2.
        self._a = (self.end_rate - self.start_rate) / (2 * self.duration_s)
        # Exponential: ln of the factor the rate grows by over the ramp (0: flat).
        self._lnk = math.log(self.end_rate / self.start_rate) if self.start_rate > 0 else 0.0
        if strategy == "linear" or self._lnk == 0:
            self._n_at_end = (self.start_rate + self.end_rate) / 2 * self.duration_s
        else:
            # s D (k - 1) / ln k, as expm1: written (e - s) D / ln k, a ramp between two rates
            # a rounding apart (0.01 and 0.010000000000000002) divided two rounding errors.
            self._n_at_end = self.start_rate * self.duration_s * math.expm1(self._lnk) / self._lnk

    def _seconds(self, x: float) -> float:
        if x == 0:
            return 0.0
        if x > self._n_at_end:
            return self.duration_s + (x - self._n_at_end) / self.end_rate
        if self.strategy == "exponential" and self._lnk != 0:
            # log1p keeps the precision of a gentle ramp (x * ln k small against s * D).
            return (
                self.duration_s
                / self._lnk
                * math.log1p(x * self._lnk / (self.start_rate * self.duration_s))
            )
        if self._a == 0:
            return x / self.start_rate
        # Root of a*t^2 + start*t - x = 0 written without the subtraction in the textbook
        # formula, which loses precision when a is small; valid for a < 0 too, since on the ramp
        # the discriminant is at least end_rate^2.
        return 2 * x / (self.start_rate + math.sqrt(self.start_rate**2 + 4 * self._a * x))

    def offset_ns(self, n: int) -> int:
        x = self.arrivals.at(n)
        # Nearest, not floor: t is a float, and 0.3 s may come out as 0.29999... s.
        return round(self._seconds(float(x)) * NS_PER_S)

    def rate_at(self, offset_ns: int) -> float:
        t = offset_ns / NS_PER_S
        if t <= 0:
            return self.start_rate
        if t >= self.duration_s:
            return self.end_rate
        if self.strategy == "exponential":
            return self.start_rate * math.exp(self._lnk * t / self.duration_s)
        return self.start_rate + 2 * self._a * t

    def __str__(self) -> str:
        kind = "" if self.strategy == "linear" else "exp-"
        return (
            f"{kind}ramp@{self.start_rate:.2f}..{self.end_rate:.2f}/s:{self.duration_s:g}s"
            f"{self.arrivals.label()}"
        )

    def __repr__(self) -> str:
        return (
            f"RampPacer(start_rate={self.start_rate!r}, end_rate={self.end_rate!r}, "
            f"duration_s={self.duration_s!r}, strategy={self.strategy!r})"
        )


class _Cursor:
    """A running sum of per-request gaps in whole ns, walked forward (rewound when asked for an
    earlier request), so answers depend on n only while each call costs O(1) in a shard's
    increasing walk."""

    def __init__(self, gap_ns: Callable[[int], int]) -> None:
        self._gap_ns = gap_ns
        self.n = 0
        self.ns = 0

    def to(self, n: int) -> int:
        if n < self.n:
            self.n, self.ns = 0, 0
        while self.n < n:
            self.n += 1
            self.ns += self._gap_ns(self.n)
        return self.ns


class ProgressRampPacer:
    """vLLM's ramp (`vllm bench serve --ramp-up-strategy`): the rate follows the run's progress
    through its request count, not the clock.

    With N requests, the gap before request j is 1 / rate(j / (N - 1)) (its unit-mean share of
    the arrival positions, `UnitArrivals`, over that rate), where rate(p) = s + (e - s) p
    (linear) or s (e/s)^p (exponential), as vLLM's `_get_current_request_rate` computes it.
    vLLM's request 0 also waits one gap; here it goes at 0 like every latbench pacer's, so the
    gaps are vLLM's and the whole schedule is vLLM's shifted by 1/s earlier. Requests past N
    (none in a run that stops at N) keep end_rate. Each gap is rounded to whole ns before it is
    summed, so offsets are exact integers whatever the order of the calls.
    """

    def __init__(
        self,
        start_rate: float,
        end_rate: float,
        total_requests: int,
        strategy: str = "linear",
        arrivals: UnitArrivals | None = None,
    ) -> None:
        if strategy not in ("linear", "exponential"):
            raise ValueError(f"strategy must be linear or exponential, got {strategy!r}")
        s = float(start_rate)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(
                f"start_rate must be a finite number >= 0 (requests per second), got {start_rate!r}"
            )
        if strategy == "exponential":
            s = _positive("start_rate", s, "an exponential ramp cannot start at 0 requests/s")
        if total_requests < 1:
            raise ValueError(f"total_requests must be >= 1, got {total_requests!r}")
        self.strategy = strategy
        self.start_rate = s
        self.end_rate = _positive("end_rate", end_rate, "requests per second")
        self.total_requests = int(total_requests)
        self.arrivals = arrivals or UnitArrivals()
        self._offsets = _Cursor(self._gap_ns)
        self._due = _Cursor(self._gap_ns)  # rate_at's own walk, so it never rewinds the other
        # rate_at is read by the exporter's scrape thread while the loop may read it too.
        self._due_lock = threading.Lock()

    def rate_of(self, j: int) -> float:
        """The rate of the gap before request j."""
        p = min(1.0, j / max(self.total_requests - 1, 1))
        if self.strategy == "linear":
            return self.start_rate + (self.end_rate - self.start_rate) * p
        return self.start_rate * (self.end_rate / self.start_rate) ** p

    def _gap_ns(self, j: int) -> int:
        # Every shard walks every gap, so even arrivals skip the fractions (0.7 us a gap, not 3).
        if self.arrivals.burstiness is None:
            return round(NS_PER_S / self.rate_of(j))
        units = self.arrivals.at(j) - self.arrivals.at(j - 1)
        return round(float(units) / self.rate_of(j) * NS_PER_S)

    def offset_ns(self, n: int) -> int:
        _check_n(n)
        return self._offsets.to(n)

    def gaps_s(self, j0: int, j1: int) -> float:
        """The even gaps before requests j0 + 1 .. j1 (1 <= j0, j1 < total_requests) summed in
        closed form, in s: the integral of f = 1 / rate over [j0, j1] plus the Euler-Maclaurin
        terms (f(j1) - f(j0)) / 2 + (f'(j1) - f'(j0)) / 12, the gaps unrounded."""
        if j1 <= j0:
            return 0.0
        m = max(self.total_requests - 1, 1)
        r0, r1 = self.rate_of(j0), self.rate_of(j1)
        if self.strategy == "linear":
            slope = (self.end_rate - self.start_rate) / m  # rate' (per request)
            whole = (j1 - j0) / r0 if slope == 0 else math.log(r1 / r0) / slope
            d0, d1 = -slope / r0**2, -slope / r1**2
        else:
            growth = math.log(self.end_rate / self.start_rate) / m  # rate' / rate
            whole = (j1 - j0) / r0 if growth == 0 else (1 / r0 - 1 / r1) / growth
            d0, d1 = -growth / r0, -growth / r1
        return whole + (1 / r1 - 1 / r0) / 2 + (d1 - d0) / 12

    def rate_at(self, offset_ns: int) -> float:
        """The rate of the gap running at that offset: after request m, the gap before m + 1."""
        with self._due_lock:
            if offset_ns < self._due.ns:
                self._due.to(0)
            while self._due.ns + self._gap_ns(self._due.n + 1) <= offset_ns:
                self._due.to(self._due.n + 1)
            return self.rate_of(self._due.n + 1)

    def __str__(self) -> str:
        kind = "" if self.strategy == "linear" else "exp-"
        return (
            f"{kind}ramp@{self.start_rate:.2f}..{self.end_rate:.2f}/s:{self.total_requests}req"
            f"{self.arrivals.label()}"
        )

    def __repr__(self) -> str:
        return (
            f"ProgressRampPacer(start_rate={self.start_rate!r}, end_rate={self.end_rate!r}, "
            f"total_requests={self.total_requests!r}, strategy={self.strategy!r})"
        )


class StepsPacer:
    """A staircase: rate r_k for d_k seconds, one stair after the other, then the last rate holds.

    The integrated rate is piecewise linear, and request n goes where it equals n's arrival
    position (`UnitArrivals`), in exact fractions of the rates and durations as written, so
    with even arrivals stair k holds exactly the requests whose position lies in
    [sum of r_i d_i for i < k, that plus r_k d_k): r_k d_k of them, give or take the one
    that straddles each boundary.
    """

    def __init__(
        self, steps: Sequence[tuple[float, float]], arrivals: UnitArrivals | None = None
    ) -> None:
        if not steps:
            raise ValueError("steps must hold at least one (rate, duration) stair")
        self.steps = [(float(r), float(d)) for r, d in steps]
        self.arrivals = arrivals or UnitArrivals()
        self._rates: list[Fraction] = []
        self._t0: list[Fraction] = []  # each stair's start, s
        self._x0: list[Fraction] = []  # arrival position reached at each stair's start
        t, x = Fraction(0), Fraction(0)
        for i, (r, d) in enumerate(self.steps):
            rate = _rate_fraction(f"steps[{i}].rate", r)
            dur = Fraction(repr(_positive(f"steps[{i}].duration", d, "seconds")))
            self._rates.append(rate)
            self._t0.append(t)
            self._x0.append(x)
            t, x = t + dur, x + rate * dur

    def offset_ns(self, n: int) -> int:
        x = self.arrivals.at(n)
        k = bisect_right(self._x0, x) - 1
        t = self._t0[k] + (x - self._x0[k]) / self._rates[k]
        # Floor, as ConstantPacer: never planned later than its ideal instant.
        return math.floor(t * NS_PER_S)

    def stair_at(self, offset_ns: int) -> int:
        """Which stair an offset lies on (the last holds for ever)."""
        return max(0, bisect_right(self._t0, Fraction(offset_ns, NS_PER_S)) - 1)

    def rate_at(self, offset_ns: int) -> float:
        return self.steps[self.stair_at(offset_ns)][0]

    def __str__(self) -> str:
        stairs = ",".join(f"{r:g}/s*{d:g}s" for r, d in self.steps)
        return f"steps[{stairs}]{self.arrivals.label()}"

    def __repr__(self) -> str:
        return f"StepsPacer(steps={self.steps!r})"


def shaped_pacer(load: LoadSpec, seed: int) -> Pacer:
    """The pacer of a `ramp` or `steps` load: a ramp over the run's duration when it has one,
    else over its request count (vLLM's ramp); a staircase over its stairs."""
    arrivals = UnitArrivals(load.burstiness if load.arrivals == "poisson" else None, seed)
    if load.mode == "steps":
        return StepsPacer(stairs(load), arrivals)
    ramp = load.ramp
    assert load.mode == "ramp" and ramp is not None
    if load.duration is not None:
        return RampPacer(ramp.start_rate, ramp.end_rate, load.duration, ramp.strategy, arrivals)
    assert load.requests is not None
    return ProgressRampPacer(ramp.start_rate, ramp.end_rate, load.requests, ramp.strategy, arrivals)


# planned_length_s sums this many gaps one by one (2 ms), the rest in closed form.
EXACT_GAPS = 4096


def planned_length_s(load: LoadSpec) -> float | None:
    """How long a ramp over the request count plans to take (its last request's offset, even
    arrivals), which nothing else bounds; None for every other load.

    The service checks it on its event loop, and walking a gap costs 0.66 us: 10^9 requests
    (the spec's cap) would block it for 11 minutes. So the first `EXACT_GAPS` gaps are summed
    as the pacer sums them (where a ramp from 0 curves most) and the rest in closed form
    (`ProgressRampPacer.gaps_s`): within 4e-11 of the walked sum, relative, for linear and
    exponential ramps up, down, flat and from 0 over 10^4 to 3 * 10^6 requests (walked in up
    to 2.3 s; tests/load/test_ramp.py checks a few)."""
    ramp = load.ramp
    if load.mode != "ramp" or ramp is None or load.duration is not None or not load.requests:
        return None
    pacer = ProgressRampPacer(ramp.start_rate, ramp.end_rate, load.requests, ramp.strategy)
    last = load.requests - 1
    head = min(last, EXACT_GAPS)
    return pacer.offset_ns(head) / NS_PER_S + pacer.gaps_s(head, last)


def phase_of(
    n: int,
    offset_ns: int,
    *,
    warmup_s: float,
    cooldown_s: float,
    warmup_requests: int,
    cooldown_requests: int,
    duration_s: float | None,
    total_requests: int | None,
) -> Phase:
    """Which phase request n, planned at offset_ns, belongs to.

    Warm-up wins over cool-down when both match (a run too short to have a measurement window
    should report none rather than count warm-up requests). A run bounded by both a request
    count and a duration cools down at whichever edge comes first.
    """
    for name, v in (
        ("warmup_s", warmup_s),
        ("cooldown_s", cooldown_s),
        ("warmup_requests", warmup_requests),
        ("cooldown_requests", cooldown_requests),
    ):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v!r}")
    if n < warmup_requests or offset_ns < warmup_s * NS_PER_S:
        return "warmup"
    if total_requests and n >= total_requests - cooldown_requests:
        return "cooldown"
    if duration_s and offset_ns >= (duration_s - cooldown_s) * NS_PER_S:
        return "cooldown"
    return "measure"


class TracePacer:
    """Request n goes at a trace's own instant: `offsets[n]`, the trace's row n from its first,
    already scaled by the replay's speed (workload/trace.py computes them, exactly, in ns).

    A client that cannot keep the trace's pace sends late, and that lateness is the run's send
    lag against these instants, judged by the validity verdict like any open-loop schedule's.
    Past the last row the offset stays the last (the run's request bound, set to the trace's
    length, stops every worker there). `rate_at` is the trace's local rate: its arrivals in the
    `window_s` before the offset, over the window (10 s: a trace's second-to-second bursts are
    Poisson noise at the rates the public traces hold, ~1-10/s).
    """

    def __init__(self, offsets_ns: np.ndarray, label: str = "trace", window_s: float = 10.0):
        offsets = np.asarray(offsets_ns, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size == 0:
            raise ValueError("a trace pacer needs at least one offset")
        if offsets[0] < 0 or np.any(np.diff(offsets) < 0):
            raise ValueError("trace offsets must start at 0 or later and never decrease")
        self._offsets = offsets
        self.label = label
        self.window_s = _positive("window_s", window_s, "seconds")

    def __len__(self) -> int:
        return len(self._offsets)

    def offset_ns(self, n: int) -> int:
        _check_n(n)
        return int(self._offsets[min(n, len(self._offsets) - 1)])

    def rate_at(self, offset_ns: int) -> float:
        w = round(self.window_s * NS_PER_S)
        hi = int(np.searchsorted(self._offsets, offset_ns, side="right"))
        lo = int(np.searchsorted(self._offsets, offset_ns - w, side="right"))
        return (hi - lo) / self.window_s

    def __str__(self) -> str:
        span = int(self._offsets[-1]) / NS_PER_S
        return f"{self.label}:{len(self._offsets)} requests over {span:.3g}s"

    def __repr__(self) -> str:
        return f"TracePacer(<{len(self._offsets)} offsets>, label={self.label!r})"


def trace_pacer(workload: object) -> TracePacer:
    """The pacer of a trace replay (load.mode trace): the offsets of the trace inside the
    workload, through the wrappers that decorate it (images, tools)."""
    from latbench.workload.trace import trace_of  # only a trace replay reads one

    trace = trace_of(workload)
    if trace is None:
        raise ValueError("load.mode trace needs a trace workload (workload.source trace)")
    return TracePacer(trace.offsets_ns, label=f"trace({trace.format})@{trace.speed:g}x")
