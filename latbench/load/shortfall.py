"""How much of a run's planned load lost workers never offered: the one place of that arithmetic.

A worker (a local process, or one of an agent's slots) that dies mid-run takes the rest of its
shard with it: the other shards do not pick it up, since each request's number and instant are
its shard's (`load.worker`), and a run that redistributed them would no longer send the
schedule it was asked to. What is missing is therefore known from the schedule alone, and the
runner computes it once, when the run ends (`Shortfall`, in the footer's validity); every report
reads that.

- Open loop over requests (`constant`, `poisson`, ramps, stairs, a trace): shard k of W plans
  requests n = k, k + W, ... at the pacer's offsets, up to the run's bound (`load.requests`, or
  the first offset at or past `load.duration`), and sends them in that order. A lost shard did
  not offer those from its first request it never announced (`s` frame) on: what the runner
  heard is what it knows was sent, however late it noticed the loss (a frozen host is noticed
  only when its connection times out, many seconds on). When the loss stopped the run
  (`--on-agent-loss stop`), no shard offers those at or after the stop. The share is their
  count over the requests the run planned, so it is the planned load less what was recorded.
- Closed loop over a request budget (no duration): shard k's users take the numbers n = k,
  k + W, ... below `load.requests`; what the lost shards had not sent is what they did not
  offer.
- With only a time to go by (a closed loop with a duration; an open loop of sessions, whose
  requests the replies decide): the lost shards' share of the users (or of the shards) over
  the time left after the loss, in user-seconds (or shard-seconds), over the run's planned
  total (its duration, else how long it ran). The runner gives as the loss the instant it
  last heard from the shard (a heartbeat comes every 0.1 s), not when it noticed.

Pacer offsets never decrease, so the first request at or after an instant is found by bisection:
a handful of `offset_ns` calls, however long the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from latbench.load.pacers import Pacer
from latbench.load.worker import split
from latbench.spec import LoadSpec
from latbench.summary.validity import Shortfall

NS_PER_S = 1_000_000_000


def first_at(pacer: Pacer, t_ns: int, hi: int) -> int:
    """The first request number n in [0, hi] whose offset is at or after `t_ns`; `hi` when
    none below it is."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if pacer.offset_ns(mid) >= t_ns:
            hi = mid
        else:
            lo = mid + 1
    return lo


def planned_requests(load: LoadSpec, pacer: Pacer) -> int:
    """How many requests an open loop plans: its request bound, or those its pacer places
    before the duration's end, whichever is fewer (a spec gives at least one bound)."""
    if load.duration is None:
        assert load.requests is not None
        return load.requests
    end = round(load.duration * NS_PER_S)
    if load.requests is not None:
        return first_at(pacer, end, load.requests)
    hi = 1
    while pacer.offset_ns(hi) < end:  # the first power of two past the end, then bisect
        hi *= 2
    return first_at(pacer, end, hi)


def in_shard(lo: int, hi: int, k: int, w: int) -> int:
    """How many n in [lo, hi) are shard k's of w (n = k mod w)."""

    def below(x: int) -> int:  # n in [0, x) with n = k mod w
        return max(0, (x - k + w - 1) // w)

    return max(0, below(hi) - below(max(lo, 0)))


def shortfall(
    load: LoadSpec,
    pacer: Pacer | None,
    workers: int,
    *,
    sessions: bool,
    losses: Mapping[int, int],
    stopped: int | None,
    sent: Sequence[int],
    ran_ns: int,
    lost: Sequence[str],
    unannounced: Mapping[int, int] | None = None,
) -> Shortfall | None:
    """What the lost shards never offered. `losses`: shard index -> the offset from the run's
    start (ns) at which it was lost; `stopped`: the offset of the stop the loss caused, None
    when it caused none; `sent`: requests each shard sent; `ran_ns`: how long the run ran;
    `lost`: who was lost, as the reports name them; `unannounced`: a lost shard's first
    request number it never announced (an open loop counts from it, not from its loss's
    offset). None when nothing was lost."""
    if not losses:
        return None
    never = 1 << 62
    cut = [
        max(0, min(losses.get(k, never), never if stopped is None else stopped))
        for k in range(workers)
    ]
    hit = [k for k in range(workers) if cut[k] < never]
    who = tuple(lost)
    if pacer is not None and not sessions:
        total = planned_requests(load, pacer)
        resume = unannounced or {}

        def first_missing(k: int) -> int:
            at = first_at(pacer, cut[k], total)
            return min(at, resume[k]) if k in resume else at

        missing = sum(in_shard(first_missing(k), total, k, workers) for k in hit)
        return _made(missing, total, "requests", who, stopped)
    if pacer is None and load.duration is None:
        assert load.requests is not None
        total = load.requests
        missing = sum(max(0, split(total, workers, k) - sent[k]) for k in hit)
        return _made(missing, total, "requests", who, stopped)
    span = round(load.duration * NS_PER_S) if load.duration is not None else ran_ns
    if pacer is None:  # closed loop: each shard's users
        assert load.concurrency is not None
        weight = [split(load.concurrency, workers, k) for k in range(workers)]
        unit = "user-seconds"
    else:
        weight = [1] * workers
        unit = "shard-seconds"
    total_s = sum(weight) * span / NS_PER_S
    missing_s = sum(weight[k] * max(0, span - cut[k]) for k in hit) / NS_PER_S
    return _made(missing_s, total_s, unit, who, stopped)


def _made(
    missing: float, total: float, unit: str, who: tuple[str, ...], stopped: int | None
) -> Shortfall:
    return Shortfall(
        share=missing / total if total > 0 else 0.0,
        not_offered=missing,
        planned=total,
        unit=unit,
        lost=who,
        stopped=stopped is not None,
    )
