"""Ramps and staircases: each pacer's offsets against its closed form (the integral of the rate
inverted exactly, vLLM's sum of gaps, a staircase's boundaries), Poisson arrivals along them,
the spec's rules, and real runs against the simulator whose records hold the rate each segment
asked for (counted from `t_intended`, never timed)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit.cli import latbench
from kit.load import Collect, chat_endpoint

from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.load.pacers import (
    EXACT_GAPS,
    ProgressRampPacer,
    RampPacer,
    StepsPacer,
    UnitArrivals,
    planned_length_s,
    shaped_pacer,
)
from latbench.load.runner import Runner
from latbench.records import Record
from latbench.shared.errors import SpecError
from latbench.sim import SimProcess
from latbench.spec import LoadSpec, load_spec
from latbench.spec.ramp import RampSpec
from latbench.workload import SyntheticWorkload

S = 1_000_000_000


# --- duration ramps: the integral of the rate, inverted --------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, 0),
        # 2 -> 6/s over 4 s: n(t) = 2t + t^2/2, so 6 requests by 2 s and 16 by 4 s.
        (6, 2 * S),
        (16, 4 * S),
        (22, 5 * S),  # then it holds at 6/s
    ],
)
def test_linear_ramp_offsets_are_the_inverse_of_its_integral(n: int, expected: int) -> None:
    assert RampPacer(2, 6, 4, "linear").offset_ns(n) == expected


def test_exponential_ramp_matches_its_closed_form() -> None:
    # 1/s growing by e each second for 10 s: n(t) = e^t - 1, so request n goes at ln(1 + n).
    p = RampPacer(1, math.exp(10), 10, "exponential")
    for n in (1, 2, 7, 100, 5000, 22025):
        assert abs(p.offset_ns(n) - math.log1p(n) * S) <= 1, n
    assert p.rate_at(0) == 1 and p.rate_at(3 * S) == pytest.approx(math.exp(3))
    assert p.rate_at(11 * S) == pytest.approx(math.exp(10))
    # After the ramp the rate holds: e^10 - 1 requests by 10 s, then e^10 a second.
    n_end = math.exp(10) - 1
    assert p.offset_ns(30000) == pytest.approx((10 + (30000 - n_end) / math.exp(10)) * S, abs=2)


@given(
    start=st.floats(min_value=0.01, max_value=1000),
    end=st.floats(min_value=0.01, max_value=1000),
    duration=st.floats(min_value=0.1, max_value=3600),
    n=st.integers(min_value=0, max_value=10**6),
)
def test_exponential_ramp_inverts_its_integral_and_never_goes_back(
    start: float, end: float, duration: float, n: int
) -> None:
    p = RampPacer(start, end, duration, "exponential")
    a, b = p.offset_ns(n), p.offset_ns(n + 1)
    assert a <= b
    t = min(a / S, duration)
    lnk = math.log(end / start)
    on_ramp = start * t if lnk == 0 else start * duration / lnk * math.expm1(lnk * t / duration)
    sent_by_t = on_ramp + end * max(0.0, a / S - duration)
    assert sent_by_t == pytest.approx(n, rel=1e-7, abs=1e-5)


# --- vLLM's ramp: over the request count ------------------------------------------------------


def vllm_rate(strategy: str, s: float, e: float, j: int, total: int) -> float:
    """vllm/benchmarks/serve.py `_get_current_request_rate`, as vLLM 0.32 writes it."""
    progress = j / max(total - 1, 1)
    if strategy == "linear":
        return s + (e - s) * progress
    return s * (e / s) ** progress


@pytest.mark.parametrize(("strategy", "s", "e"), [("linear", 1, 20), ("exponential", 2, 50)])
def test_a_request_count_ramp_sums_vllms_gaps(strategy: str, s: float, e: float) -> None:
    total = 200
    p = ProgressRampPacer(s, e, total, strategy)
    want, acc = [0], 0
    for j in range(1, total):
        acc += round(S / vllm_rate(strategy, s, e, j, total))
        want.append(acc)
    assert [p.offset_ns(n) for n in range(total)] == want
    # A pure function of n: asked backwards, it answers the same.
    assert [p.offset_ns(n) for n in reversed(range(total))] == want[::-1]
    # The rate in force between two requests is the one of the gap that is running.
    assert p.rate_at(0) == vllm_rate(strategy, s, e, 1, total)
    assert p.rate_at(want[150]) == pytest.approx(vllm_rate(strategy, s, e, 151, total))
    assert p.rate_at(want[-1] + 10 * S) == e


def test_a_linear_request_count_ramp_may_start_at_zero() -> None:
    # vLLM refuses (its request 0 would wait 1/0 s); here request 0 goes at 0 and gap j has
    # rate 10 j / 9, so the schedule is 0.9 s times the harmonic numbers.
    p = ProgressRampPacer(0, 10, 10)
    for n in range(10):
        harmonic = sum(Fraction(1, j) for j in range(1, n + 1))
        assert abs(p.offset_ns(n) - float(harmonic) * 0.9 * S) <= n


@pytest.mark.parametrize(
    ("strategy", "s", "e"),
    [("linear", 0, 20), ("linear", 20, 1), ("linear", 5, 5), ("exponential", 1, 1000)],
)
def test_a_request_count_ramps_planned_length_is_its_walked_sum_in_closed_form(
    strategy: str, s: float, e: float
) -> None:
    # The service checks it on its event loop: past EXACT_GAPS gaps it is not walked.
    total = 30_000
    ramp = RampSpec(strategy=strategy, start_rate=s, end_rate=e)
    load = LoadSpec(mode="ramp", requests=total, ramp=ramp)
    walked = ProgressRampPacer(s, e, total, strategy).offset_ns(total - 1) / S
    assert planned_length_s(load) == pytest.approx(walked, rel=1e-10)
    assert total > EXACT_GAPS * 5
    # 10^9 requests (the spec's cap) in closed form: ~ (N / 20) ln N s from 0 to 20 req/s.
    ramp = RampSpec(strategy="linear", start_rate=0, end_rate=20)
    huge = LoadSpec(mode="ramp", requests=10**9, ramp=ramp)
    harmonic = math.log(10**9 - 1) + 0.5772156649
    assert planned_length_s(huge) == pytest.approx((10**9 - 1) / 20 * harmonic, rel=1e-9)


# --- staircases ---------------------------------------------------------------------------------


def test_stairs_change_rate_at_their_boundaries() -> None:
    p = StepsPacer([(5, 2), (10, 3)])
    assert [p.offset_ns(n) for n in (0, 1, 9)] == [0, S // 5, 9 * S // 5]
    assert p.offset_ns(10) == 2 * S  # the first request of the second stair, on its boundary
    assert p.offset_ns(11) == 2 * S + S // 10
    assert p.offset_ns(40) == 5 * S  # past the last stair its rate holds
    assert (p.rate_at(2 * S - 1), p.rate_at(2 * S), p.rate_at(99 * S)) == (5, 10, 10)
    assert (p.stair_at(0), p.stair_at(2 * S - 1), p.stair_at(2 * S)) == (0, 0, 1)


def test_a_stair_whose_requests_do_not_fill_it_passes_the_rest_on() -> None:
    # 3/s for 0.5 s is 1.5 requests: request 1 at 1/3 s, request 2 half a request into the
    # 4/s stair, 0.5 / 4 s after its start.
    p = StepsPacer([(3, 0.5), (4, 1)])
    assert [p.offset_ns(n) for n in range(4)] == [0, 333_333_333, 625_000_000, 875_000_000]


# --- Poisson arrivals along a shape ----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda a: RampPacer(10, 200, 20, "linear", a),
        lambda a: RampPacer(10, 200, 20, "exponential", a),
        lambda a: StepsPacer([(20, 5), (150, 5), (60, 10)], a),
    ],
)
def test_poisson_arrivals_follow_the_shape_and_the_seed(make: Callable[..., object]) -> None:
    p = make(UnitArrivals(1.0, seed=7))
    even = make(UnitArrivals())
    offsets = [p.offset_ns(n) for n in range(3000)]  # type: ignore[attr-defined]
    assert offsets == sorted(offsets)
    assert offsets == [make(UnitArrivals(1.0, seed=7)).offset_ns(n) for n in range(3000)]
    assert offsets != [make(UnitArrivals(1.0, seed=8)).offset_ns(n) for n in range(3000)]
    # Over each half of the shape the count is the even schedule's within 4 sigma of a Poisson
    # count (the gaps are random; the number of them that fit is what the rate promises).
    for lo, hi in ((0, 10 * S), (10 * S, 20 * S)):
        want = sum(1 for n in range(3000) if lo <= even.offset_ns(n) < hi)  # type: ignore[attr-defined]
        got = sum(1 for o in offsets if lo <= o < hi)
        assert abs(got - want) <= 4 * math.sqrt(want), (lo, got, want)


# --- the spec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "names"),
    [
        ({"mode": "ramp", "duration": 10}, "ramp: mode 'ramp' needs ramp"),
        (
            {
                "mode": "ramp",
                "rate": 3,
                "duration": 10,
                "ramp": {"strategy": "linear", "start_rate": 1, "end_rate": 5},
            },
            "rate: mode 'ramp' sets the rate itself",
        ),
        (
            {
                "mode": "ramp",
                "duration": 10,
                "ramp": {"strategy": "exponential", "start_rate": 0, "end_rate": 5},
            },
            "load.ramp: start_rate: an exponential ramp cannot start at 0",
        ),
        (
            {
                "mode": "ramp",
                "duration": 10,
                "ramp": {"strategy": "cubic", "start_rate": 1, "end_rate": 5},
            },
            "load.ramp.strategy",
        ),
        ({"mode": "steps"}, "steps: mode 'steps' needs steps"),
        (
            {"mode": "steps", "steps": [{"rate": 5, "duration": "2s"}, {"rate": 0, "duration": 1}]},
            "load.steps.1.rate",
        ),
        (
            {"mode": "steps", "steps": [{"rate": 5, "duration": 0}]},
            "load.steps.0: duration: a stair must last",
        ),
        (
            {"mode": "steps", "duration": 3, "steps": [{"rate": 5, "duration": "2s"}]},
            "duration: the steps last 2 s, not 3 s",
        ),
        (
            {"mode": "poisson", "rate": 3, "duration": 3, "steps": [{"rate": 5, "duration": 2}]},
            "steps is for mode 'steps', not 'poisson'",
        ),
        ({"mode": "constant", "rate": 3, "duration": 3, "arrivals": "bursty"}, "load.arrivals"),
        (
            {"mode": "constant", "rate": 3, "duration": 3, "arrivals": "poisson"},
            "arrivals: for modes ramp and steps, not 'constant'",
        ),
    ],
)
def test_spec_errors_name_the_field(load: dict[str, object], names: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec({"load": load})
    assert names in str(err.value)


def test_a_ramp_runs_over_the_duration_else_over_the_request_count() -> None:
    ramp = {"strategy": "linear", "start_rate": 1, "end_rate": 9}
    timed = load_spec({"load": {"mode": "ramp", "ramp": ramp, "duration": 10}}).load
    counted = load_spec({"load": {"mode": "ramp", "ramp": ramp, "requests": 50}}).load
    assert isinstance(shaped_pacer(timed, 0), RampPacer)
    assert isinstance(shaped_pacer(counted, 0), ProgressRampPacer)
    stairs = load_spec({"load": {"mode": "steps", "steps": [{"rate": 2, "duration": "3s"}] * 2}})
    assert stairs.load.duration == 6 and stairs.load.open_loop


# --- real runs ------------------------------------------------------------------------------------


async def run_load(url: str, load: LoadSpec, session: aiohttp.ClientSession) -> list[Record]:
    sink = Collect()
    workload = SyntheticWorkload(4, 4, seed=1)
    runner = Runner("ramp-test", chat_endpoint(url), workload, load, [sink], seed=1, workers=2)
    out = await runner.run(session)
    return sorted(out.records, key=lambda r: r.seq)


async def test_each_stair_of_a_run_asked_its_rate(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    s = sim(ttft=0.002, itl=0.001)
    load = LoadSpec.model_validate(
        {"mode": "steps", "steps": [{"rate": 20, "duration": 1}, {"rate": 60, "duration": 1}]}
    )
    recs = await run_load(s.url, load, session)
    start = recs[0].t_intended
    assert all(r.error is None for r in recs), [r.error_detail for r in recs if r.error]
    per_stair = [
        sum(1 for r in recs if k * S <= r.t_intended - start < (k + 1) * S) for k in (0, 1)
    ]
    # Counted, not timed: 20 requests planned on the first second, 60 on the next, none after.
    assert per_stair == [20, 60] and len(recs) == 80


async def test_a_vllm_ramp_run_sends_its_requests_on_the_ramp(
    sim: Callable[..., SimProcess], session: aiohttp.ClientSession
) -> None:
    s = sim(ttft=0.002, itl=0.001)
    load = LoadSpec.model_validate(
        {"mode": "ramp", "ramp": {"strategy": "linear", "start_rate": 10, "end_rate": 90},
         "requests": 60}
    )  # fmt: skip
    recs = await run_load(s.url, load, session)
    assert [r.seq for r in recs] == list(range(60))
    start = recs[0].t_intended
    pacer = ProgressRampPacer(10, 90, 60)
    assert [r.t_intended - start for r in recs] == [pacer.offset_ns(n) for n in range(60)]
    # The achieved arrival rate of each third of the requests (planned: count over span) is the
    # ramp's mean rate over that third, within the one gap the span leaves out.
    for lo, hi in ((0, 20), (20, 40), (40, 59)):
        span = (recs[hi].t_intended - recs[lo].t_intended) / S
        mean_rate = (hi - lo) / sum(1 / pacer.rate_of(j) for j in range(lo + 1, hi + 1))
        assert (hi - lo) / span == pytest.approx(mean_rate, rel=1e-6)


# --- vLLM's flags ----------------------------------------------------------------------------


def flags(*argv: str) -> LoadSpec:
    ns = build_parser().parse_args(["run", *argv])
    return load_spec(spec_from_args(ns), source="flags").load


def test_vllms_ramp_flags_ramp_over_the_prompts_with_vllms_gamma_gaps() -> None:
    load = flags(
        "--ramp-up-strategy", "exponential", "--ramp-up-start-rps", "2", "--ramp-up-end-rps", "20",
        "--num-prompts", "100", "--burstiness", "0.5",
    )  # fmt: skip
    assert load.mode == "ramp" and load.rate is None and load.requests == 100
    assert load.ramp is not None and (load.ramp.strategy, load.ramp.start_rate) == (
        "exponential",
        2,
    )
    assert (load.arrivals, load.burstiness) == ("poisson", 0.5)
    pacer = shaped_pacer(load, 0)
    assert isinstance(pacer, ProgressRampPacer) and pacer.rate_of(99) == pytest.approx(20)
    # With a duration the ramp runs over the clock instead, and --arrivals even is kept.
    timed = flags("--ramp-up-strategy", "linear", "--ramp-up-start-rps", "0",
                  "--ramp-up-end-rps", "8", "--duration", "30s", "--arrivals", "even")  # fmt: skip
    assert timed.arrivals == "even" and isinstance(shaped_pacer(timed, 0), RampPacer)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ramp-up-start-rps", "1", "--ramp-up-end-rps", "5"], "need --ramp-up-strategy"),
        (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1"],
         "both --ramp-up-start-rps and --ramp-up-end-rps must be specified"),
        (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "5",
          "--request-rate", "3"], "do not specify --request-rate"),
        (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "9", "--ramp-up-end-rps", "5"],
         "Ramp-up start RPS must be less than end RPS"),
        (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "-1", "--ramp-up-end-rps", "5"],
         "must be non-negative"),
        (["--ramp-up-strategy", "exponential", "--ramp-up-start-rps", "0",
          "--ramp-up-end-rps", "5"], "For exponential ramp-up, the start RPS cannot be 0."),
    ],
)  # fmt: skip
def test_vllms_ramp_flags_are_refused_as_vllm_refuses_them(argv: list[str], message: str) -> None:
    with pytest.raises(SpecError) as err:
        flags(*argv, "--num-prompts", "10")
    assert message in str(err.value)


def test_a_ramp_run_writes_vllms_ramp_keys(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("validity: {ttft_tolerance: 2s, itl_tolerance: 2s, queue_delay_p99: 2s}\n")
    run = latbench(
        "run", "--spec", str(spec), "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "20",
        "--ramp-up-end-rps", "60", "--num-prompts", "40", "--input-len", "4", "--output-len", "4",
        "--sim", "ttft=0.002", "--sim", "itl=0.001", "--out", str(tmp_path), "--save-result",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (path,) = tmp_path.glob("*/vllm-results.json")
    doc = json.loads(path.read_text())
    assert (doc["request_rate"], doc["burstiness"]) == ("inf", 1.0)
    assert (doc["ramp_up_strategy"], doc["ramp_up_start_rps"], doc["ramp_up_end_rps"]) == (
        "linear", 20.0, 60.0,
    )  # fmt: skip
    assert doc["completed"] == 40
