"""What a ramp's or a staircase's schedule plans, in closed form: how many arrivals it expects by
a time (the integral of its rate), and how long it lasts. The pacers (`load.pacers`) place each
request on these schedules; the summary (`summary.stairs`), which may not import `load`, reads
from here what each stair offered, so a stair's offered rate is the schedule's, not a count of
the records: a run stopped early still shows what its later stairs would have offered, and
Poisson arrivals show their expected rate, not their draws.

A ramp over the run's duration is exact (`RampPacer`'s integral). vLLM's ramp over a request
count (`ProgressRampPacer`) sums one gap per request, 1 / rate(j / (N - 1)); summing N gaps to
answer one question would cost O(N) (a spec may ask 10^9), so its sum is taken as the integral
over [j - 1/2, j + 1/2] of each gap (the midpoint rule), exact for a flat rate. Against the
pacer's own sum (tests/summary/test_stairs.py), 5 -> 45 req/s over 55 requests lasts 2.8809 s
here and 2.8798 s there; from 0 req/s the first gaps are a harmonic series, which the integral
overestimates by a constant, about 0.12 (N - 1) / end_rate seconds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latbench.spec.load import LoadSpec

__all__ = ["expected_by", "span_s"]

_BISECTIONS = 100  # halvings of [0, N - 1]: far below a request's width for any N a spec allows


def expected_by(load: LoadSpec, t_s: float) -> float:
    """Arrivals (requests, or sessions for a session workload) the schedule of a `ramp` or
    `steps` load expects in [0, t_s] from the run's start."""
    t = max(0.0, t_s)
    if load.mode == "steps":
        n, start = 0.0, 0.0
        steps = load.steps or []
        for k, s in enumerate(steps):
            end = start + s.duration
            if t <= end or k == len(steps) - 1:  # past the last stair its rate holds
                return n + s.rate * (t - start)
            n, start = n + s.rate * s.duration, end
        return n
    ramp = load.ramp
    assert load.mode == "ramp" and ramp is not None, load.mode
    s, e = ramp.start_rate, ramp.end_rate
    if load.duration is not None:
        d = load.duration
        lnk = math.log(e / s) if ramp.strategy == "exponential" and s > 0 else 0.0
        # The integral as RampPacer takes it: s d expm1(ln k t / d) / ln k, which stays exact for
        # rates a rounding apart where (e - s) d / ln k divided two rounding errors.
        if t >= d:
            at_end = s * d * math.expm1(lnk) / lnk if lnk else (s + e) / 2 * d
            return at_end + e * (t - d)  # the rate holds at end_rate after the ramp
        if lnk:
            return s * d * math.expm1(lnk * t / d) / lnk
        return s * t + (e - s) * t * t / (2 * d)
    assert load.requests is not None
    last = load.requests - 1
    if t >= _seconds_to(load, last):
        return float(last)
    lo, hi = 0.0, float(last)
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _seconds_to(load, mid) <= t else (lo, mid)
    return lo


def span_s(load: LoadSpec) -> float:
    """How long the schedule of a `ramp` or `steps` load lasts: the run's duration, or a ramp
    over a request count up to its last request."""
    if load.duration is not None:
        return float(load.duration)
    assert load.mode == "ramp" and load.requests is not None, load.mode
    return _seconds_to(load, load.requests - 1)


def _seconds_to(load: LoadSpec, x: float) -> float:
    """When vLLM's ramp over N requests sends request x (continuous): the sum of the gaps before
    it, each gap j the integral of 1 / rate(u / (N - 1)) over [j - 1/2, j + 1/2]."""
    ramp = load.ramp
    assert ramp is not None and load.requests is not None
    if x <= 0:
        return 0.0
    s, e = ramp.start_rate, ramp.end_rate
    m = max(load.requests - 1, 1)
    a, b = 0.5, min(x + 0.5, m)  # b > a: x > 0 and m >= 1
    past = max(0.0, x + 0.5 - m) / e  # past request N - 1 the rate holds at end_rate
    if s == e:
        return past + (b - a) / s
    if ramp.strategy == "linear":

        def rate(u: float) -> float:
            return s + (e - s) * u / m

        return past + m / (e - s) * math.log(rate(b) / rate(a))
    lnk = math.log(e / s)
    return past + m / (s * lnk) * (math.exp(-lnk * a / m) - math.exp(-lnk * b / m))
