"""`t_sent` is when the request's last byte left: the kernel's transmit stamp, read off the
socket's error queue (latbench/shared/rxstamp.py), not the moment the task handed the request to
aiohttp; and that error queue never keeps the event loop awake."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from time import monotonic_ns
from typing import Any

import aiohttp
import pytest
from kit.client import options

from latbench.client import API_KINDS, Endpoint, StampingConnector, Timeouts, stream_request
from latbench.shared import rxstamp
from latbench.workload import WorkItem

pytestmark = pytest.mark.skipif(not rxstamp.AVAILABLE, reason="kernel stamps: Linux only")

ITEM = WorkItem(
    prompt="one two three",
    messages=({"role": "user", "content": "one two three"},),
    prompt_tokens=3,
    max_tokens=4,
)
STALL_S = 0.06


@pytest.fixture
async def stamping() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=StampingConnector()) as s:
        yield s


def endpoint(url: str) -> Endpoint:
    return Endpoint(url, API_KINDS["chat"], options(), {}, Timeouts(total=30))


async def arrivals(session: aiohttp.ClientSession, url: str) -> list[int]:
    """The simulator's kernel arrival stamp of each request since its start, in order."""
    async with session.get(url + "/sim/truth?raw=1") as t:
        return [e["arrival_ns"] for e in (await t.json())["requests"]]


async def test_t_sent_is_when_the_bytes_left_not_when_the_task_asked(sim, stamping) -> None:
    server = sim(ttft=0.01, itl=0.002)
    ep = endpoint(server.url)
    loop = asyncio.get_running_loop()
    for i in range(3):  # a new connection, then the pooled one
        # The loop is stalled right after the request is handed over, before aiohttp can write
        # it: a worker busy with other streams. The bytes leave STALL_S late.
        before = monotonic_ns()
        loop.call_soon(time.sleep, STALL_S)
        rec = await stream_request(
            stamping, ep, ITEM, run_id="t", seq=i, phase="measure", t_intended=before
        )
        assert rec.ok, rec.error_detail
        arrived = (await arrivals(stamping, server.url))[i]
        assert rec.sent_late == 0  # the kernel's own stamp
        # The stall is send lag (t_sent - t_intended), not TTFT; and the request reached the
        # server no earlier than it left (the clocks' conversions agree to well under 0.1 ms).
        assert rec.t_sent - before >= STALL_S * 1e9
        assert rec.t_sent <= arrived + 100_000
        # A stamp taken before the stall would be STALL_S before the arrival.
        assert arrived - rec.t_sent < STALL_S * 1e9 / 2


def connected_pair() -> tuple[rxstamp.StampedSocket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = rxstamp.client_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ()))
        assert isinstance(client, rxstamp.StampedSocket)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def test_without_a_transmit_stamp_t_sent_is_the_write_return_bounded_by_its_duration() -> None:
    client, server = connected_pair()
    with client, server:
        assert client.sent_stamp() is None  # nothing sent
        before = monotonic_ns()
        client.send(b"x" * 1000)  # no start_tx: no transmit stamps asked for
        after = monotonic_ns()
        stamp = client.sent_stamp()
        assert stamp is not None
        t, late = stamp
        assert before <= t - late <= t <= after and late > 0
        # With transmit stamps: the stamp of the last byte, inside the write, exact.
        assert client.start_tx()
        before = monotonic_ns()
        client.send(b"y" * 3000)
        client.send(b"z")
        after = monotonic_ns()
        t, late = client.sent_stamp() or (0, -1)
        assert late == 0 and client.tx_key == 3000 and before - 100_000 <= t <= after + 100_000


async def test_a_stamped_connection_waiting_for_its_answer_does_not_wake_the_loop(
    sim, stamping
) -> None:
    # A transmit stamp left on the error queue is an error condition to epoll, level-triggered:
    # the loop would wake for it on every turn while the request waits for its first token, and
    # after it while the connection idles in the pool. Drained, both are silent.
    server = sim(ttft=0.4, itl=0.001)
    selector: Any = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    woken = 0
    select = selector.select

    def counting(timeout: float | None = None) -> Any:
        nonlocal woken
        ready = select(timeout)
        woken += bool(ready)
        return ready

    async def idle(seconds: float) -> None:
        deadline = monotonic_ns() + int(seconds * 1e9)
        while monotonic_ns() < deadline:
            await asyncio.sleep(0.01)  # a turn of the loop every 10 ms, each a chance to spin

    request = asyncio.ensure_future(stream_request(
        stamping, endpoint(server.url), ITEM, run_id="t", seq=0, phase="measure",
        t_intended=monotonic_ns(),
    ))  # fmt: skip
    selector.select = counting
    try:
        await idle(0.25)  # the request is out, its first token 0.4 s away
        waiting = woken
        rec = await request
        woken = 0
        await idle(0.25)  # pooled, idle
    finally:
        del selector.select
    assert rec.ok and rec.sent_late == 0
    # Connecting, writing and the response's head take a handful of wake-ups, not one a turn.
    assert waiting <= 6, f"the loop woke {waiting} times waiting for the first token"
    assert woken <= 2, f"the loop woke {woken} times for an idle connection"
