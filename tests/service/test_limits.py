"""The service's limits against an API caller who tries to get around them, over real HTTP on
loopback (`latbench serve` in a child process, the simulator as its target): the queue cap
under a burst of concurrent submissions, caps on every workload size, request fields latbench
controls, bounded numbers, and bodies nested hundreds deep. Every refusal is a 4xx naming the
problem, and changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from kit.service import TOKEN, Service, poll, running

from latbench.service.api import API
from latbench.sim import SimConfig, SimProcess

CAP = 5  # limits.max_queued_runs
LIMITS = {
    "max_concurrency": 4,
    "max_duration": "60s",
    "max_requests": 200,
    "max_queued_runs": CAP,
    "max_input_tokens": 4096,
    "max_output_tokens": 512,
}
QUICK: dict[str, Any] = {
    "target": "sim",
    "load": {"concurrency": 1, "requests": 2},
    "workload": {"input_tokens": 8, "output_tokens": 4},
}
LONG: dict[str, Any] = {**QUICK, "load": {"concurrency": 1, "duration": "60s"}}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("limits")
    with (
        SimProcess(SimConfig(ttft=0.01, itl=0.002)) as sim,
        running(sim.url, work, limits=LIMITS) as s,
    ):
        yield s


def count_runs(svc: Service) -> int:
    return len(svc.ok("GET", f"{API}/runs?limit=500")["runs"])


async def _burst(url: str, body: dict[str, Any], n: int) -> list[tuple[int, dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=n), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def post() -> tuple[int, dict[str, Any]]:
            async with session.post(f"{url}{API}/runs", json=body, headers=headers) as r:
                return r.status, await r.json()

        return await asyncio.gather(*(post() for _ in range(n)))


def test_queue_cap_holds_under_a_burst_of_concurrent_submissions(svc: Service) -> None:
    """60 submissions at once with room for 5 in the queue: exactly 5 are accepted, 55 get
    429. The check and the enqueue were separated by the store's await, so every submission of
    a burst passed the check (300 accepted with a cap of 20)."""
    long = svc.submit(LONG)  # holds the target: whatever else is accepted stays queued
    svc.wait_state(long["id"], "running")
    before = count_runs(svc)
    got = asyncio.run(_burst(svc.url, QUICK, 60))
    accepted = [b for s, b in got if s == 202]
    refused = [(s, b) for s, b in got if s != 202]
    assert len(accepted) == CAP, [s for s, _ in got]
    assert all(s == 429 and "limits.max_queued_runs" in b["error"] for s, b in refused), refused
    assert count_runs(svc) == before + CAP
    queued = svc.ok("GET", f"{API}/runs?state=queued")["runs"]
    assert len(queued) == CAP
    for r in [*queued, long]:
        svc.ok("POST", f"{API}/runs/{r['id']}/cancel")
    svc.wait_state(long["id"], "cancelled", timeout=30)


@pytest.mark.parametrize(
    ("workload", "says"),
    [
        ({"input_tokens": 1e13}, "workload.input_tokens: mean 1e+13 is over 4194304 tokens"),
        ({"input_tokens": 5000}, "workload.input_tokens: mean 5000 is over 4096 tokens, this "
         "service's cap (limits.max_input_tokens)"),
        ({"input_tokens": "uniform:1,8000"}, "workload.input_tokens: max 8000 is over 4096"),
        ({"input_tokens": "normal:100,9000"}, "workload.input_tokens: std 9000 is over 4096"),
        ({"output_tokens": 513}, "workload.output_tokens: mean 513 is over 512"),
        ({"output_tokens": None, "input_tokens": 8}, None),  # the default 128 is within 512
        ({"extra_body": {"model": "other"}}, "workload.extra_body: 'model'"),
        ({"extra_body": {"max_tokens": 100000}}, "workload.extra_body: 'max_tokens'"),
        ({"extra_body": {"stream": False}}, "workload.extra_body: 'stream'"),
        ({"extra_body": {"max_completion_tokens": 9}}, "'max_completion_tokens'"),
        ({"extra_body": {"messages": []}}, "workload.extra_body: 'messages'"),
        ({"extra_body": {"n": 64}}, "workload.extra_body.n: more than one completion"),
        ({"extra_body": {"best_of": 8}}, "workload.extra_body.best_of"),
        ({"seed": -1}, "workload.seed"),
        ({"seed": 2**63}, "workload.seed"),
    ],
)  # fmt: skip
def test_workload_sizes_and_controlled_fields(
    svc: Service, workload: dict[str, Any], says: str | None
) -> None:
    before = count_runs(svc)
    body = {**QUICK, "workload": {**QUICK["workload"], **workload}}
    status, got = svc.call("POST", f"{API}/runs", body)
    if says is None:
        assert status == 202, got
        svc.wait_state(got["id"], "completed")
        return
    assert status == (403 if ".n:" in says or "best_of" in says else 400), got
    assert says in got["error"], got
    assert count_runs(svc) == before


def test_an_unbounded_length_distribution_is_clamped_to_the_cap(svc: Service) -> None:
    run = svc.submit({**QUICK, "workload": {"input_tokens": "lognormal:100,50",
                                            "output_tokens": "normal:16,4"}})  # fmt: skip
    assert run["spec"]["workload"]["input_tokens"]["max"] == 4096
    assert run["spec"]["workload"]["output_tokens"]["max"] == 512
    svc.wait_state(run["id"], "completed")


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"target": {"name": "sim", "timeouts": {"total": 1e300}}}, "target.timeouts.total"),
        ({"target": {"name": "sim", "timeouts": {"idle": "1000h"}}}, "target.timeouts.idle"),
        ({"load": {"concurrency": 1, "duration": 5, "warmup": 1e300}}, "load.warmup"),
        ({"load": {"mode": "poisson", "rate": 1, "burstiness": 0, "requests": 2}},
         "load.burstiness"),
        ({"percentiles": [50, 1e300]}, "percentiles.1"),
    ],
)  # fmt: skip
def test_numbers_are_bounded(svc: Service, change: dict[str, Any], says: str) -> None:
    before = count_runs(svc)
    status, got = svc.call("POST", f"{API}/runs", {**QUICK, **change})
    assert status == 400 and says in got["error"], got
    assert count_runs(svc) == before


def _nested(depth: int) -> bytes:
    return (
        b'{"target": "sim", "workload": {"extra_body": '
        + b'{"a": ' * depth
        + b"1"
        + b"}" * (depth + 2)
    )


@pytest.mark.parametrize("depth", [40, 300, 900, 5000])
def test_deeply_nested_json_is_400(svc: Service, depth: int) -> None:
    """A body nested a few hundred deep was an HTTP 500 with thousands of log lines (the copy of
    the body recursed past Python's limit); now a 400 naming the limit, and one log line."""
    before = count_runs(svc)
    log_lines = len(svc.log().splitlines())
    status, body, _ = svc.request("POST", f"{API}/runs", raw=_nested(depth))
    got = json.loads(body)
    assert status == 400, (status, got)
    assert "nested more than 32 levels" in got["error"] or "not JSON" in got["error"], got
    assert count_runs(svc) == before
    new = poll(
        lambda: (
            (n := svc.log().splitlines()[log_lines:])
            and any("POST /api/v1/runs 400" in line for line in n)
            and n
        ),
        5,
        "the access log line",
    )
    # One access line (other runs may log theirs meanwhile), no traceback.
    assert not any("Traceback" in line or "Error" in line for line in new), new
    assert len(new) < 10, new


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b'"text"',
        b"\xff\xfe",
        b'{"target": "sim", "load": {"requests": 1e400}}',
        b'{"target": "sim", "workload": {"input_tokens": {"kind": "uniform", "min": "a"}}}',
        b'{"target": {"name": ["sim"]}}',
        b'{"target": {"name": "sim", "timeouts": [1]}}',
        b'{"target": "sim", "workload": [], "load": "x"}',
        b'{"target": "sim", "slos": [{"a": 1}], "percentiles": "50"}',
    ],
)
def test_bad_bodies_are_4xx(svc: Service, raw: bytes) -> None:
    status, body, _ = svc.request("POST", f"{API}/runs", raw=raw)
    assert 400 <= status < 500, (status, body)
    assert json.loads(body)["error"]
