"""The over-saturation detector on made-up timelines: a FIFO server of B slots, each holding a
request for a drawn service time (its first token comes at admission plus a prefill draw),
fed an open loop. Below capacity it must never fire, however noisy; above, it must fire, with
evidence that matches the timeline; with too little evidence it must not."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import pytest

from latbench.records.record import Record
from latbench.spec.saturation import OversaturationSpec
from latbench.summary.saturation import NOT_ENDED, Oversaturation, View, Watch, assess

S = 1_000_000_000


@dataclass(frozen=True)
class Req:
    sent: int
    first: int
    end: int


def timeline(
    rate: float,
    slots: int,
    service_s: float,
    seconds: float,
    *,
    seed: int = 0,
    poisson: bool = True,
    prefill_s: float = 0.05,
    end_rate: float | None = None,
    spread: float | None = None,
) -> list[Req]:
    """Requests of an open loop at `rate` into a FIFO server of `slots` slots; service times
    exponential with mean `service_s` (or fixed when not `poisson`; or uniform within
    `service_s` +- `spread` of it, when given). With `end_rate`, the rate
    ramps linearly from `rate` to it over `seconds` (arrivals even in the ramp's own count)."""
    rng = np.random.default_rng(seed)
    if end_rate is not None:
        # Request n goes where the ramp's cumulative count reaches n.
        t = np.linspace(0, seconds, 100_000)
        count = rate * t + (end_rate - rate) * t**2 / (2 * seconds)
        sends = np.interp(np.arange(1, int(count[-1])), count, t)
    else:
        n = int(rate * seconds)
        gaps = rng.exponential(1 / rate, n) if poisson else np.full(n, 1 / rate)
        sends = np.cumsum(gaps)
    free = [0.0] * slots
    heapq.heapify(free)
    out = []
    for t in sends:
        admit = max(t, heapq.heappop(free))
        if spread is not None:
            service = service_s * rng.uniform(1 - spread, 1 + spread)
        else:
            service = rng.exponential(service_s) if poisson else service_s
        first = admit + min(prefill_s * rng.uniform(0.5, 1.5), service)
        end = admit + max(service, prefill_s * 1.5)
        heapq.heappush(free, end)
        out.append(Req(int(t * S), int(first * S), int(end * S)))
    return out


def watch_over(
    reqs: list[Req], spec: OversaturationSpec, seconds: float
) -> tuple[Oversaturation | None, Watch]:
    """Run a Watch over the timeline as a live run would: once a second, with the records that
    ended by then and the sends still in flight."""
    w = Watch(spec, 0)
    by_end = sorted(reqs, key=lambda r: r.end)
    i = 0
    for now_s in range(1, int(seconds) + 1):
        now = now_s * S
        while i < len(by_end) and by_end[i].end <= now:
            r = by_end[i]
            w.add(Record("run", i, "measure", "chat", r.sent, r.sent, t_end=r.end, ev_t=(r.first,)))
            i += 1
        flying = [r.sent for r in reqs if r.sent <= now < r.end]
        v = w.check(now, flying)
        if v is not None:
            return v, w
    return None, w


SPEC = OversaturationSpec(window=20, hold=3, min_requests=30, min_ttft=1.0)


def test_steady_never_fires() -> None:
    # 8 slots of 1 s: capacity 8/s, offered 4/s.
    reqs = timeline(4, 8, 1.0, 120)
    verdict, w = watch_over(reqs, SPEC, 120)
    assert verdict is None
    assert w.last is not None and w.last.inflight is not None  # it was judged, not skipped


@pytest.mark.parametrize("seed", range(6))
def test_noisy_steady_at_high_load_does_not_fire(seed: int) -> None:
    # 90 % load, Poisson arrivals, exponential service: the queue wanders widely.
    reqs = timeline(7.2, 8, 1.0, 180, seed=seed)
    verdict, _ = watch_over(reqs, OversaturationSpec(window=20, hold=3, min_ttft=0.2), 180)
    assert verdict is None


def test_growing_fires_with_its_evidence() -> None:
    # Offered twice the capacity: the queue grows by ~8 requests a second.
    reqs = timeline(16, 8, 1.0, 120)
    verdict, _ = watch_over(reqs, SPEC, 120)
    assert verdict is not None
    assert verdict.after_s < 60  # it did not wait for the end
    assert verdict.window_s == 20
    # In-flight grows at about the deficit, 16 - 8 a second; TTFT at about 1 - 8/16 s a second.
    assert 5 < verdict.inflight.slope < 11
    assert verdict.inflight.end > verdict.inflight.start
    assert 0.3 < verdict.ttft.slope < 0.7
    assert verdict.ttft.end >= SPEC.min_ttft
    assert verdict.first_tokens >= SPEC.min_requests
    assert verdict.oldest_s is not None and verdict.oldest_s > verdict.ttft.start
    # The evidence survives results.json.
    assert Oversaturation.from_dict(verdict.to_dict()) == verdict
    assert "over-saturated after" in verdict.describe()


def test_constant_rate_overload_fires() -> None:
    reqs = timeline(12, 8, 1.0, 120, poisson=False)
    verdict, _ = watch_over(reqs, SPEC, 120)
    assert verdict is not None


def test_a_ramp_fires_only_once_it_has_crossed_the_knee() -> None:
    # 8 slots of 1 s (capacity 8/s); the rate ramps from 2/s to 16/s over 240 s, crossing the
    # knee at 103 s. A ramp's in-flight count rises with its rate below the knee too, by
    # rate x latency: bounded, and with TTFT flat, so no verdict until the queue builds.
    reqs = timeline(2, 8, 1.0, 240, end_rate=16)
    verdict, _ = watch_over(reqs, OversaturationSpec(), 240)
    assert verdict is not None
    assert verdict.after_s > 103
    # A ramp that stays under the knee never fires.
    reqs = timeline(1, 8, 1.0, 240, end_rate=7.2)
    verdict, _ = watch_over(reqs, OversaturationSpec(min_ttft=0.2), 240)
    assert verdict is None


def test_long_decodes_still_fire_on_the_ttft_they_let_be_known() -> None:
    # Reasoning-length answers: each request holds its slot 36-44 s, longer than the 30 s
    # window, so no request whose first token came in the last window has finished: TTFT is
    # judged over the window that ends the median decode time ago, where first tokens are known.
    # 128 slots of 40 s: the knee is 3.2 requests/s.
    for seed in range(3):
        reqs = timeline(6.4, 128, 40.0, 400, seed=seed, spread=0.1, prefill_s=0.5)
        verdict, _ = watch_over(reqs, OversaturationSpec(), 400)
        assert verdict is not None
        assert verdict.ttft_lag_s > 30  # every TTFT sample came from the earlier window
        assert verdict.ttft.slope > 0
        # Under the knee with the same decodes (half of it, and 90 %), never.
        for rate in (1.6, 2.9):
            reqs = timeline(rate, 128, 40.0, 400, seed=seed, spread=0.1, prefill_s=0.5)
            quiet, _ = watch_over(reqs, OversaturationSpec(min_ttft=0.2), 400)
            assert quiet is None


def test_too_little_evidence_does_not_fire() -> None:
    # Over capacity, but at 1 request a second into 1 slot of 2 s: too few first tokens in any
    # 20 s window to reach min_requests.
    reqs = timeline(1.0, 1, 2.0, 120, poisson=False)
    verdict, w = watch_over(reqs, SPEC, 120)
    assert verdict is None
    assert w.last is not None and "needed" in w.last.why


def test_growing_in_flight_without_first_tokens_does_not_fire() -> None:
    # Long prompts: in flight grows while the fill is still going, and no first token has
    # come (vllm-project/guidellm#606, where the in-flight slope alone stopped such a run).
    sent = np.arange(0, 40 * S, S // 4, dtype=np.int64)
    view = View(
        start_ns=0,
        t_sent=sent,
        t_end=np.full(len(sent), NOT_ENDED),
        first_ns=np.array([], dtype=np.int64),
        ttft_s=np.array([], dtype=np.float64),
        settle_s=1.0,
    )
    a = assess(view, 40 * S, SPEC)
    assert not a.holds and "first tokens" in a.why
    a = assess(View(0, sent, view.t_end, view.first_ns, view.ttft_s, None), 40 * S, SPEC)
    assert not a.holds and "finished" in a.why


def test_the_hold_delays_the_stop() -> None:
    reqs = timeline(16, 8, 1.0, 120)
    quick, _ = watch_over(reqs, OversaturationSpec(window=20, hold=0, min_ttft=1.0), 120)
    held, _ = watch_over(reqs, OversaturationSpec(window=20, hold=5, min_ttft=1.0), 120)
    assert quick is not None and held is not None
    assert held.after_s >= quick.after_s + 5


def test_closed_loop_refuses_it_and_open_loop_has_it_by_default() -> None:
    from latbench.spec import LoadSpec

    assert LoadSpec(mode="poisson", rate=1, duration=10).oversaturation.applies(True)
    assert not LoadSpec(mode="closed", duration=10).oversaturation.applies(False)
    with pytest.raises(ValueError, match=r"oversaturation\.enabled: a closed loop"):
        LoadSpec(mode="closed", duration=10, oversaturation={"enabled": True})
    off = LoadSpec(mode="poisson", rate=1, duration=10, oversaturation={"enabled": False})
    assert not off.oversaturation.applies(True)
    with pytest.raises(ValueError, match="window"):
        LoadSpec(mode="poisson", rate=1, duration=10, oversaturation={"window": 0.5})
