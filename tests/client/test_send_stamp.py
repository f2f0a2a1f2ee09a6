"""`t_sent` is when the request's last byte left: the kernel's transmit stamp, read off the
socket's error queue (latbench/shared/rxstamp.py), not the moment the task handed the request to
aiohttp; and that error queue never keeps the event loop awake."""

from __future__ import annotations

import asyncio
import os
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


# A request of 2 KiB or more: aiohttp 3.14 on Python 3.12.9+/3.13.2+ writes its head and body with
# `writelines`, which the transport sends with one `sendmsg`.
LONG = WorkItem(
    prompt="word " * 600,
    messages=({"role": "user", "content": "word " * 600},),
    prompt_tokens=600,
    max_tokens=4,
)


@pytest.mark.parametrize("item", [ITEM, LONG], ids=["short", "long"])
async def test_t_sent_is_when_the_bytes_left_not_when_the_task_asked(
    sim, stamping, item: WorkItem
) -> None:
    server = sim(ttft=0.01, itl=0.002)
    ep = endpoint(server.url)
    loop = asyncio.get_running_loop()
    for i in range(3):  # a new connection, then the pooled one
        # The loop is stalled right after the request is handed over, before aiohttp can write
        # it: a worker busy with other streams. The bytes leave STALL_S late.
        before = monotonic_ns()
        loop.call_soon(time.sleep, STALL_S)
        rec = await stream_request(
            stamping, ep, item, run_id="t", seq=i, phase="measure", t_intended=before
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


def test_bytes_written_with_sendmsg_count_as_sent() -> None:
    # Python 3.12+ transports flush their buffer, and write `writelines`, with sendmsg: a request
    # written so is this socket's own send, not the previous request's write return.
    client, server = connected_pair()
    with client, server:
        assert client.start_tx()
        client.send(b"GET / HTTP/1.1\r\n\r\n")  # an earlier request: 18 bytes
        before = monotonic_ns()
        assert client.sendmsg([b"x" * 3000, memoryview(b"y" * 3000)]) == 6000
        after = monotonic_ns()
        assert client.sent == 6018
        t, late = client.sent_stamp() or (0, -1)
        assert late == 0 and client.tx_key == 6017 and before - 100_000 <= t <= after + 100_000


def test_bytes_written_past_the_count_leave_the_send_unknown() -> None:
    # A write this class does not see (here the descriptor's own): the newest transmit stamp is
    # of a byte it never counted, and the last counted write's return would date this send to an
    # earlier one. Unknown, not wrong.
    client, server = connected_pair()
    with client, server:
        assert client.start_tx()
        client.send(b"a" * 100)
        assert os.write(client.fileno(), b"b" * 100) == 100
        assert client.sent_stamp() is None


async def test_a_request_the_transport_buffers_and_flushes_is_stamped_at_its_last_byte() -> None:
    # More than the kernel takes at once (a small send buffer, a receiver that has not read): the
    # transport keeps the rest and flushes it as the receiver reads, with sendmsg on Python 3.12+.
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        client = rxstamp.client_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ()))
        assert isinstance(client, rxstamp.StampedSocket)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        server, _ = await loop.sock_accept(listener)
    assert client.start_tx()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=client)
    got = 0

    async def receive(n: int) -> None:
        nonlocal got
        async with asyncio.timeout(10):
            while got < n:
                got += len(await loop.sock_recv(server, 1 << 16))

    try:
        transport.write(b"GET / HTTP/1.1\r\n\r\n")  # an earlier request, sent whole
        await receive(18)
        before = monotonic_ns()
        body = [b"POST / HTTP/1.1\r\n\r\n", b"x" * (4 << 20)]
        transport.writelines(body)
        assert transport.get_write_buffer_size() > 0  # the rest waits in the transport
        await receive(18 + sum(map(len, body)))
        async with asyncio.timeout(10):
            while transport.get_write_buffer_size():
                await asyncio.sleep(0)
        assert client.sent == got
        t, late = client.sent_stamp() or (0, -1)
        assert late == 0 and before <= t <= monotonic_ns()
    finally:
        transport.close()
        server.close()


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
