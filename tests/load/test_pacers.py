from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latbench.load.pacers import (
    ConstantPacer,
    Pacer,
    PoissonPacer,
    RampPacer,
    phase_of,
)

S = 1_000_000_000


# --- constant -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "n", "expected"),
    [
        (10, 0, 0),
        (10, 1, 100_000_000),
        (10, 25, 2_500_000_000),
        (3, 1, 333_333_333),  # floored, never planned late
        (3, 2, 666_666_666),
        (3, 3, 1_000_000_000),  # exact again: computed from n, no accumulated error
        (0.1, 1, 10 * S),
        (0.5, 7, 14 * S),
        (10.1, 101, 10 * S),  # the rate as written, not its binary float neighbour
        (1e9, 5, 5),
        (3, 3 * 10**12, 10**21),  # far beyond float precision, still exact
        (3, 10**8 + 1, 33_333_333_666_666_666),  # where n * 1e9 / rate in floats is off by 2
    ],
)
def test_constant_offsets_exact(rate: float, n: int, expected: int) -> None:
    assert ConstantPacer(rate).offset_ns(n) == expected


def test_constant_rate_and_name() -> None:
    p = ConstantPacer(10)
    assert p.rate_at(0) == p.rate_at(123 * S) == 10.0
    assert str(p) == "constant@10.00/s"
    assert str(ConstantPacer(0.25)) == "constant@0.25/s"
    assert isinstance(p, Pacer)


@given(
    rate=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False),
    n=st.integers(min_value=0, max_value=10**9),
)
def test_constant_non_decreasing_and_close_to_ideal(rate: float, n: int) -> None:
    p = ConstantPacer(rate)
    a, b = p.offset_ns(n), p.offset_ns(n + 1)
    assert a <= b
    # Within 1 ns of the ideal plus the float representation error of n / rate.
    assert abs(a - n * S / rate) <= 1 + 1e-12 * n * S / rate


# --- poisson / gamma ------------------------------------------------------------------------


def _gaps_s(p: PoissonPacer, count: int) -> np.ndarray:
    offs = np.array([p.offset_ns(n) for n in range(count + 1)], dtype=np.int64)
    return np.diff(offs) / S


def test_poisson_first_request_at_zero() -> None:
    assert PoissonPacer(5, seed=3).offset_ns(0) == 0
    assert PoissonPacer(5, burstiness=0.2, seed=9).offset_ns(0) == 0


def test_poisson_deterministic_per_seed() -> None:
    ns = [0, 1, 2, 100, 4095, 4096, 4097, 50_000]
    a = [PoissonPacer(7.5, 0.5, seed=42).offset_ns(n) for n in ns]
    b = [PoissonPacer(7.5, 0.5, seed=42).offset_ns(n) for n in ns]
    c = [PoissonPacer(7.5, 0.5, seed=43).offset_ns(n) for n in ns]
    assert a == b
    assert a[1:] != c[1:]
    assert len(set(a)) == len(a)


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    ns=st.lists(st.integers(min_value=0, max_value=3 * PoissonPacer.BLOCK), min_size=1),
)
@settings(max_examples=30, deadline=None)
def test_poisson_answers_do_not_depend_on_call_order(seed: int, ns: list[int]) -> None:
    sequential = PoissonPacer(20, 0.7, seed=seed)
    expected = {n: sequential.offset_ns(n) for n in sorted(set(ns))}
    jumping = PoissonPacer(20, 0.7, seed=seed)
    assert [jumping.offset_ns(n) for n in ns] == [expected[n] for n in ns]


@pytest.mark.parametrize(
    ("rate", "burstiness", "seed"),
    [(10, 1.0, 1), (250, 1.0, 2), (10, 0.25, 3), (10, 0.5, 4), (10, 4.0, 5), (0.5, 2.0, 6)],
)
def test_gamma_mean_rate_and_coefficient_of_variation(
    rate: float, burstiness: float, seed: int
) -> None:
    n = 20_000
    gaps = _gaps_s(PoissonPacer(rate, burstiness, seed=seed), n)
    mean_gap, cv = 1 / rate, 1 / math.sqrt(burstiness)
    # Mean: the standard error of a mean of n gaps is sd / sqrt(n) = mean_gap * cv / sqrt(n);
    # within 3 of them, which a correct pacer misses with probability ~0.3% per seed (and these
    # seeds are fixed, so the test is deterministic).
    assert abs(gaps.mean() - mean_gap) < 3 * mean_gap * cv / math.sqrt(n)
    # CV: for a gamma of shape b, Var(s^2) ~ sigma^4 (2 + 6/b) / n (excess kurtosis 6/b), so the
    # relative standard error of s is about 0.5 * sqrt((2 + 6/b) / n): 1.0% at b=1, 1.8% at
    # b=0.25. Allow 4 of them.
    rel_se = 0.5 * math.sqrt((2 + 6 / burstiness) / n)
    sample_cv = gaps.std(ddof=1) / gaps.mean()
    assert abs(sample_cv / cv - 1) < 4 * rel_se
    assert (gaps >= 0).all()


@given(
    rate=st.floats(min_value=0.01, max_value=1e5),
    burstiness=st.floats(min_value=0.05, max_value=20),
    seed=st.integers(min_value=0, max_value=2**16),
)
@settings(max_examples=25, deadline=None)
def test_poisson_offsets_non_decreasing_across_blocks(
    rate: float, burstiness: float, seed: int
) -> None:
    p = PoissonPacer(rate, burstiness, seed=seed)
    offs = [p.offset_ns(n) for n in range(2 * PoissonPacer.BLOCK + 10)]
    assert offs[0] == 0
    assert all(a <= b for a, b in itertools.pairwise(offs))


def test_poisson_long_run_keeps_bounded_memory() -> None:
    p = PoissonPacer(1000, seed=11)
    bound = 2 * PoissonPacer.BLOCK
    last = -1
    for n in range(1_000_001):
        off = p.offset_ns(n)
        assert off >= last
        last = off
        if n % 997 == 0:
            assert p.cache_size <= bound
    assert p.cache_size <= bound
    # 1e6 arrivals at 1000/s take about 1000 s (sd of the total: sqrt(1e6) gaps of 1 ms = 1 s).
    assert abs(last / S - 1000) < 5


def test_poisson_going_back_gives_the_same_answers() -> None:
    p = PoissonPacer(50, 0.3, seed=8)
    early = [p.offset_ns(n) for n in range(0, 10_000, 37)]
    p.offset_ns(200_000)
    assert [p.offset_ns(n) for n in range(0, 10_000, 37)] == early
    assert p.cache_size <= 2 * PoissonPacer.BLOCK


def test_poisson_names_and_rate() -> None:
    assert str(PoissonPacer(10)) == "poisson@10.00/s"
    assert str(PoissonPacer(10, burstiness=0.5)) == "gamma(0.5)@10.00/s"
    assert str(PoissonPacer(2.5, burstiness=3)) == "gamma(3)@2.50/s"
    assert PoissonPacer(4, 0.5).rate_at(10 * S) == 4.0
    assert isinstance(PoissonPacer(1), Pacer)


# --- ramp -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "duration", "n", "expected"),
    [
        # 0 -> 10/s over 10 s: the integral is t^2 / 2, so n requests by t = sqrt(2n).
        (0, 10, 10, 0, 0),
        (0, 10, 10, 2, 2 * S),
        (0, 10, 10, 8, 4 * S),
        (0, 10, 10, 50, 10 * S),  # the whole ramp
        (0, 10, 10, 60, 11 * S),  # then it holds at 10/s
        # 10 -> 2/s over 4 s: the integral is 10t - t^2, so 24 requests by 4 s.
        (10, 2, 4, 9, 1 * S),
        (10, 2, 4, 24, 4 * S),
        (10, 2, 4, 26, 5 * S),
        # flat ramp equals constant
        (5, 5, 10, 7, 1_400_000_000),
    ],
)
def test_ramp_offsets(start: float, end: float, duration: float, n: int, expected: int) -> None:
    assert RampPacer(start, end, duration).offset_ns(n) == expected


@pytest.mark.parametrize(
    ("offset", "expected"), [(0, 0.0), (5 * S, 5.0), (10 * S, 10.0), (60 * S, 10.0)]
)
def test_ramp_rate_at(offset: int, expected: float) -> None:
    assert RampPacer(0, 10, 10).rate_at(offset) == pytest.approx(expected)


@given(
    start=st.floats(min_value=0, max_value=1000),
    end=st.floats(min_value=0.01, max_value=1000),
    duration=st.floats(min_value=0.1, max_value=3600),
    n=st.integers(min_value=0, max_value=10**6),
)
def test_ramp_inverts_the_integral_and_never_goes_back(
    start: float, end: float, duration: float, n: int
) -> None:
    p = RampPacer(start, end, duration)
    a, b = p.offset_ns(n), p.offset_ns(n + 1)
    assert a <= b
    t = a / S
    tr = min(t, duration)
    sent_by_t = start * tr + (end - start) * tr * tr / (2 * duration) + end * max(0.0, t - duration)
    assert sent_by_t == pytest.approx(n, rel=1e-9, abs=1e-6)


def test_ramp_name() -> None:
    assert str(RampPacer(1, 10, 60)) == "ramp@1.00..10.00/s:60s"


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: ConstantPacer(0), "rate"),
        (lambda: ConstantPacer(-1), "rate"),
        (lambda: ConstantPacer(math.inf), "rate"),
        (lambda: ConstantPacer(math.nan), "rate"),
        (lambda: PoissonPacer(0), "rate"),
        (lambda: PoissonPacer(10, burstiness=0), "burstiness"),
        (lambda: PoissonPacer(10, burstiness=-2), "burstiness"),
        (lambda: PoissonPacer(10, seed=-1), "seed"),
        (lambda: PoissonPacer(10, seed=1.5), "seed"),  # type: ignore[arg-type]
        (lambda: RampPacer(-1, 10, 10), "start_rate"),
        (lambda: RampPacer(1, 0, 10), "end_rate"),
        (lambda: RampPacer(1, 10, 0), "duration_s"),
        (lambda: ConstantPacer(1).offset_ns(-1), "n"),
        (lambda: PoissonPacer(1).offset_ns(-1), "n"),
        (lambda: RampPacer(1, 2, 3).offset_ns(-1), "n"),
    ],
)
def test_bad_parameters_name_the_parameter(make: object, name: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b") as exc:
        make()  # type: ignore[operator]
    assert str(exc.value).startswith(name) or f" {name} " in str(exc.value)


# --- phases ---------------------------------------------------------------------------------

_BY_TIME = {
    "warmup_s": 10.0,
    "cooldown_s": 5.0,
    "warmup_requests": 0,
    "cooldown_requests": 0,
    "duration_s": 60.0,
    "total_requests": None,
}
_BY_COUNT = {
    "warmup_s": 0.0,
    "cooldown_s": 0.0,
    "warmup_requests": 3,
    "cooldown_requests": 2,
    "duration_s": None,
    "total_requests": 10,
}


@pytest.mark.parametrize(
    ("n", "offset", "kw", "expected"),
    [
        (0, 0, _BY_TIME, "warmup"),
        (5, 10 * S - 1, _BY_TIME, "warmup"),
        (6, 10 * S, _BY_TIME, "measure"),
        (99, 55 * S - 1, _BY_TIME, "measure"),
        (100, 55 * S, _BY_TIME, "cooldown"),
        (101, 59 * S, _BY_TIME, "cooldown"),
        (0, 0, _BY_COUNT, "warmup"),
        (2, 0, _BY_COUNT, "warmup"),
        (3, 0, _BY_COUNT, "measure"),
        (7, 10**12, _BY_COUNT, "measure"),  # time plays no part without a duration
        (8, 0, _BY_COUNT, "cooldown"),
        (9, 0, _BY_COUNT, "cooldown"),
        # both bounds: whichever edge comes first starts the cool-down
        (4, 58 * S, {**_BY_COUNT, "duration_s": 60.0, "cooldown_s": 5.0}, "cooldown"),
        (8, 1 * S, {**_BY_COUNT, "duration_s": 60.0, "cooldown_s": 5.0}, "cooldown"),
        (4, 1 * S, {**_BY_COUNT, "duration_s": 60.0, "cooldown_s": 5.0}, "measure"),
        # warm-up wins where the windows overlap
        (1, 9 * S, {**_BY_COUNT, "total_requests": 3}, "warmup"),
        # no warm-up or cool-down at all
        (0, 0, {**_BY_COUNT, "warmup_requests": 0, "cooldown_requests": 0}, "measure"),
        (9, 0, {**_BY_COUNT, "warmup_requests": 0, "cooldown_requests": 0}, "measure"),
    ],
)
def test_phase_of(n: int, offset: int, kw: dict[str, object], expected: str) -> None:
    assert phase_of(n, offset, **kw) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["warmup_s", "cooldown_s", "warmup_requests", "cooldown_requests"])
def test_phase_of_rejects_negative(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        phase_of(0, 0, **{**_BY_COUNT, name: -1})  # type: ignore[arg-type]
