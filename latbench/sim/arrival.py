"""When a request reached the simulator: stamped as the event loop hands its first bytes over.

The handler runs only after aiohttp has parsed the request and its task has had a turn of the
loop, behind every other ready callback; under load that takes milliseconds. A truth that starts
there charges the server's own intake to whichever client it scores. So the listening socket's
protocols are wrapped (`ArrivalStamps`) to stamp the read that brings a request's first bytes,
and `arrival_middleware` hands that stamp to the request. Bytes read while a request is in
progress (the rest of a large body, or a pipelined request) are not stamped, so a request with
no stamp of its own falls back to handler entry, never to an older request's read. On the
stdlib loop under Linux the stamp is the kernel's arrival stamp of that read
(latbench/shared/rxstamp.py), so even the time the simulator's process waited to be scheduled
counts as the server's.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from latbench.shared import rxstamp

_KEY = "latbench_sim_arrival_ns"


class _Stamping(asyncio.Protocol):
    __slots__ = ("_busy", "_inner", "_sock", "_stamp")

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._sock: rxstamp.StampedSocket | None = None
        self._stamp: int | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sock = rxstamp.of(transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._stamp is None and not self._busy:
            now = time.monotonic_ns()
            rx = self._sock.rx_ns if self._sock is not None else 0
            self._stamp = rx if 0 < rx <= now else now
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def begin(self) -> int | None:
        stamp, self._stamp, self._busy = self._stamp, None, True
        return stamp

    def end(self) -> None:
        self._stamp, self._busy = None, False


class ArrivalStamps:
    """A protocol factory for `loop.create_server` that wraps aiohttp's own (`runner.server`)."""

    def __init__(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self._factory = factory

    def __call__(self) -> asyncio.Protocol:
        return _Stamping(self._factory())


async def listen(
    runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool = False
) -> asyncio.Server:
    """Serve `runner`'s app on host:port with arrival stamps (in place of `web.TCPSite`); the
    caller closes the returned server before `runner.cleanup()`."""
    assert runner.server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    factory = ArrivalStamps(runner.server)
    # A deep backlog: a benchmark may open thousands of connections at once.
    if not rxstamp.AVAILABLE or type(loop).__module__.startswith("uvloop"):
        return await loop.create_server(factory, host, port, backlog=4096, reuse_port=reuse_port)
    family, type_, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = rxstamp.StampedSocket(family, type_, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(addr)
        listener.listen(4096)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    # Accepted connections are `StampedSocket`s too (its `accept`), read by the stdlib loop.
    return await loop.create_server(factory, sock=listener, backlog=4096)


@web.middleware
async def arrival_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    transport = request.transport
    proto = transport.get_protocol() if transport is not None else None
    if not isinstance(proto, _Stamping):  # served without `ArrivalStamps` (an in-process app)
        return await handler(request)
    request[_KEY] = proto.begin()
    try:
        return await handler(request)
    finally:
        proto.end()


def arrival_ns(request: web.Request, default: int) -> int:
    """The stamped arrival of `request`, or `default` (handler entry) where none was taken."""
    stamp: Any = request.get(_KEY)
    return stamp if isinstance(stamp, int) else default
