"""The planned load that lost workers never offered (load/shortfall.py), against a count made
the slow way: every request of the schedule, its shard and its instant, one by one."""

from __future__ import annotations

import pytest

from latbench.load.pacers import ConstantPacer, PoissonPacer
from latbench.load.shortfall import first_at, in_shard, planned_requests, shortfall
from latbench.load.worker import make_pacer
from latbench.spec import LoadSpec

S = 1_000_000_000


def brute(pacer: object, total: int, w: int, cut: dict[int, int]) -> int:
    """Requests n < total of a lost shard (n mod w in `cut`) planned at or after its cut."""
    return sum(
        1
        for n in range(total)
        if n % w in cut and pacer.offset_ns(n) >= cut[n % w]  # type: ignore[attr-defined]
    )


def test_in_shard_counts_one_residue() -> None:
    for w in (1, 2, 3, 7):
        for k in range(w):
            for lo in range(0, 12):
                for hi in range(0, 15):
                    want = sum(1 for n in range(lo, hi) if n % w == k)
                    assert in_shard(lo, hi, k, w) == want, (lo, hi, k, w)


def test_first_at_finds_the_first_request_at_or_after_an_instant() -> None:
    p = PoissonPacer(40.0, seed=9)
    for t in (0, 1, S // 3, 5 * S, 10**15):
        n = first_at(p, t, 500)
        assert n == next((i for i in range(500) if p.offset_ns(i) >= t), 500)


@pytest.mark.parametrize(
    "load",
    [
        LoadSpec(mode="constant", rate=25, duration=8.0),
        LoadSpec(mode="constant", rate=25, duration=8.0, requests=150),
        LoadSpec(mode="poisson", rate=30, duration=6.0),
        LoadSpec(mode="poisson", rate=30, requests=90),
    ],
)
def test_an_open_loop_counts_the_lost_shard_after_its_loss(load: LoadSpec) -> None:
    pacer = make_pacer(load, 4)
    assert pacer is not None
    total = planned_requests(load, pacer)
    d = load.duration
    want_total = sum(
        1 for n in range(load.requests or 10_000) if d is None or pacer.offset_ns(n) < d * S
    )
    assert total == want_total
    cut = {1: int(2.5 * S)}
    got = shortfall(
        load, make_pacer(load, 4), 3, sessions=False, losses=cut, stopped=None,
        sent=[0, 0, 0], ran_ns=0, lost=["agent 1 (host h)"],
    )  # fmt: skip
    assert got is not None
    assert got.unit == "requests" and got.planned == total and not got.stopped
    assert got.not_offered == brute(pacer, total, 3, cut)
    assert got.share == got.not_offered / total
    assert got.describe().endswith(
        f"of the planned load was not offered ({got.not_offered:,} of {total:,} planned "
        "requests): agent 1 (host h) was lost"
    )


def test_an_open_loop_counts_a_silent_shard_from_its_first_unannounced_request() -> None:
    # Shard 1 of 3 last announced request 13 (1.3 s) and went silent; its loss was noticed at
    # 6 s. Everything of shard 1 from request 16 on was never offered, not just from 6 s.
    load = LoadSpec(mode="constant", rate=10, duration=10.0)
    got = shortfall(
        load, ConstantPacer(10), 3, sessions=False, losses={1: 6 * S}, stopped=None,
        sent=[0, 0, 0], ran_ns=0, lost=["agent 1"], unannounced={1: 16},
    )  # fmt: skip
    assert got is not None
    assert got.not_offered == sum(1 for n in range(16, 100) if n % 3 == 1) == 28


def test_a_loss_that_stops_the_run_counts_every_shard_after_the_stop() -> None:
    load = LoadSpec(mode="constant", rate=10, duration=10.0)
    pacer = ConstantPacer(10)
    lost_at, stop_at = int(4.05 * S), int(4.1 * S)
    got = shortfall(
        load, pacer, 3, sessions=False, losses={1: lost_at}, stopped=stop_at,
        sent=[0, 0, 0], ran_ns=0, lost=["worker 1"],
    )  # fmt: skip
    assert got is not None and got.stopped
    # Shard 1 from 4.05 s, shards 0 and 2 from 4.1 s: requests 41 (shard 2, 4.1 s) onwards,
    # and nothing of shard 1 between 4.05 and 4.1 s (request 41 is shard 2's).
    want = sum(1 for n in range(100) if n / 10 >= (4.05 if n % 3 == 1 else 4.1))
    assert got.not_offered == want == 59
    assert "the run then stopped (--on-agent-loss stop)" in got.describe()


def test_a_closed_loop_over_time_counts_the_lost_users_share_of_the_time_left() -> None:
    load = LoadSpec(concurrency=5, duration=60.0)
    # 5 users over 2 workers: 3 and 2. Worker 1 (2 users) lost 15 s in: 2 x 45 user-seconds.
    got = shortfall(
        load, None, 2, sessions=False, losses={1: 15 * S}, stopped=None, sent=[9, 9],
        ran_ns=60 * S, lost=["agent 1"],
    )  # fmt: skip
    assert got is not None and got.unit == "user-seconds"
    assert got.planned == pytest.approx(300.0) and got.not_offered == pytest.approx(90.0)
    assert got.share == pytest.approx(0.3)
    assert "90.0 of 300.0 planned user-seconds" in got.describe()


def test_a_closed_loop_over_a_request_budget_counts_the_lost_shard_s_unsent_requests() -> None:
    load = LoadSpec(concurrency=4, requests=100)
    # 3 workers: shards of 34, 33, 33 requests; worker 2 sent 10 of its 33 before it was lost.
    got = shortfall(
        load, None, 3, sessions=False, losses={2: S}, stopped=None, sent=[30, 30, 10],
        ran_ns=4 * S, lost=["worker 2"],
    )  # fmt: skip
    assert got is not None and got.unit == "requests"
    assert (got.not_offered, got.planned) == (23, 100)


def test_nothing_lost_is_no_shortfall() -> None:
    load = LoadSpec(mode="constant", rate=10, duration=10.0)
    got = shortfall(
        load, ConstantPacer(10), 2, sessions=False, losses={}, stopped=None, sent=[0, 0],
        ran_ns=0, lost=[],
    )  # fmt: skip
    assert got is None


def test_an_open_loop_of_sessions_counts_the_lost_shard_s_share_of_the_time_left() -> None:
    # A session's requests are decided by its replies: 4 shards, one lost 2 s into 10 s.
    load = LoadSpec(mode="constant", rate=5, duration=10.0)
    got = shortfall(
        load, ConstantPacer(5), 4, sessions=True, losses={3: 2 * S}, stopped=None,
        sent=[0] * 4, ran_ns=10 * S, lost=["agent 3"],
    )  # fmt: skip
    assert got is not None and got.unit == "shard-seconds"
    assert (got.not_offered, got.planned, got.share) == (8.0, 40.0, 0.2)
