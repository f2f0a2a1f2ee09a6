"""Kernel receive timestamps (SO_TIMESTAMPNS) for TCP sockets that the stdlib event loop reads.

The kernel stamps each segment as it arrives; `recvmsg` hands the stamp of the newest segment a
read consumed to user space. An arrival stamped that way does not depend on when the process got
round to reading: a worker descheduled for 5 ms still stamps the event at its arrival. The
stdlib loop's transports read through the socket object's own `recv`/`recv_into`, so a socket
subclass can take the stamp; uvloop reads the descriptor in C and cannot (which is why a process
that wants these stamps runs the stdlib loop: see docs/performance.md for what that costs).

Stamps are CLOCK_REALTIME; `rx_ns` gives them on the monotonic clock of every other stamp, by
the offset between the two clocks read at the same moment. NTP's slewing changes that offset by
parts per million, nothing over a read's microseconds; a step of the wall clock between a
segment's arrival and its read would move that one stamp by the step (callers refuse one later
than their own clock). A read that carried no stamp leaves `rx_ns` at 0, and callers fall back to
the time they read.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import weakref
from time import monotonic_ns, time_ns
from typing import Any

_TIMESPEC = struct.Struct("@ll")  # struct timespec: time_t and long, both native longs on Linux


def _probe() -> int | None:
    """SO_TIMESTAMPNS where the kernel takes it (Python's socket module does not name it): 35 in
    Linux's asm-generic numbering, which x86, ARM and RISC-V use."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, 35, 1)
    except OSError:
        return None
    return 35


_SO_TIMESTAMPNS = _probe()
_CMSG = socket.CMSG_SPACE(_TIMESPEC.size)

# `LATBENCH_KERNEL_STAMPS=0` turns them off, for bench/ab.py's side-by-side comparison.
AVAILABLE = _SO_TIMESTAMPNS is not None and os.environ.get("LATBENCH_KERNEL_STAMPS") != "0"

# Sockets by descriptor, for the protocol to find its own in `connection_made` (the transport
# hides the socket object behind a read-only wrapper).
_BY_FD: weakref.WeakValueDictionary[int, StampedSocket] = weakref.WeakValueDictionary()


class StampedSocket(socket.socket):
    """A socket whose reads note the kernel's arrival stamp of the newest segment they read."""

    __slots__ = ("rx_ns",)

    def _stamp(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                self.rx_ns = sec * 1_000_000_000 + nsec - (time_ns() - monotonic_ns())
                return
        self.rx_ns = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancdata, _, _ = self.recvmsg(bufsize, _CMSG, flags)
        self._stamp(ancdata)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer)
        n, ancdata, _, _ = self.recvmsg_into([view[:nbytes] if nbytes else view], _CMSG, flags)
        self._stamp(ancdata)
        return n

    def accept(self) -> tuple[socket.socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        return adopt(StampedSocket(self.family, self.type, self.proto, fileno=fd)), addr


def adopt(sock: StampedSocket) -> StampedSocket:
    sock.rx_ns = 0
    if _SO_TIMESTAMPNS is not None:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    _BY_FD[sock.fileno()] = sock
    return sock


def client_socket(addr_info: Any) -> socket.socket:
    """aiohttp's `socket_factory`: a stamped socket for each connection it opens."""
    family, type_, proto, _, _ = addr_info
    return adopt(StampedSocket(family, type_, proto))


def of(transport: Any) -> StampedSocket | None:
    """The stamped socket under `transport` (TLS included), or None."""
    sock = transport.get_extra_info("socket")
    return _BY_FD.get(sock.fileno()) if sock is not None else None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """For a process that stamps arrivals (a worker, the simulator): the stdlib loop where these
    stamps are available, since its transports read through the socket object; else uvloop,
    when installed."""
    if AVAILABLE:
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
