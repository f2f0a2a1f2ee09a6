"""Open-loop pacers: when request n should go, as a pure function of n.

A pacer answers "at what offset from the run's start is request n intended to be sent", in
integer nanoseconds. It reads no clock and never sleeps: the runner owns the one monotonic clock,
stamps `t_intended = start + offset_ns(n)`, and sends late requests at once rather than shifting
the plan, so a stalled server cannot make the load back off (coordinated omission, see wrk2).
Because offsets come from n and not from the previous send, the schedule cannot drift.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np

from latbench.records.record import Phase

__all__ = ["ConstantPacer", "Pacer", "PoissonPacer", "RampPacer", "phase_of"]

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


class RampPacer:
    """The rate rises (or falls) linearly from start_rate to end_rate over duration_s, then holds.

    Request n goes at the t where the integral of the rate from 0 to t equals n, so the plan
    follows the ramp exactly instead of stepping. end_rate must be above 0: the rate holds there
    after the ramp, and a zero rate would never send the rest.
    """

    def __init__(self, start_rate: float, end_rate: float, duration_s: float) -> None:
        s = float(start_rate)
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(
                f"start_rate must be a finite number >= 0 (requests per second), got {start_rate!r}"
            )
        self.start_rate = s
        self.end_rate = _positive("end_rate", end_rate, "requests per second")
        self.duration_s = _positive("duration_s", duration_s, "seconds")
        # Rate(t) = start + 2*a*t on the ramp, so its integral is start*t + a*t^2.
        self._a = (self.end_rate - self.start_rate) / (2 * self.duration_s)
        self._n_at_end = (self.start_rate + self.end_rate) / 2 * self.duration_s

    def _seconds(self, n: int) -> float:
        if n == 0:
            return 0.0
        if n > self._n_at_end:
            return self.duration_s + (n - self._n_at_end) / self.end_rate
        if self._a == 0:
            return n / self.start_rate
        # Root of a*t^2 + start*t - n = 0 written without the subtraction in the textbook
        # formula, which loses precision when a is small; valid for a < 0 too, since on the ramp
        # the discriminant is at least end_rate^2.
        return 2 * n / (self.start_rate + math.sqrt(self.start_rate**2 + 4 * self._a * n))

    def offset_ns(self, n: int) -> int:
        _check_n(n)
        # Nearest, not floor: t is a float, and 0.3 s may come out as 0.29999... s.
        return round(self._seconds(n) * NS_PER_S)

    def rate_at(self, offset_ns: int) -> float:
        t = offset_ns / NS_PER_S
        if t <= 0:
            return self.start_rate
        if t >= self.duration_s:
            return self.end_rate
        return self.start_rate + 2 * self._a * t

    def __str__(self) -> str:
        return f"ramp@{self.start_rate:.2f}..{self.end_rate:.2f}/s:{self.duration_s:g}s"

    def __repr__(self) -> str:
        return (
            f"RampPacer(start_rate={self.start_rate!r}, end_rate={self.end_rate!r}, "
            f"duration_s={self.duration_s!r})"
        )


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
