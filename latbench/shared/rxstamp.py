"""Kernel timestamps (SO_TIMESTAMPING) for TCP sockets that the stdlib event loop reads and writes.

Receive: the kernel stamps each segment as it arrives; `recvmsg` hands the stamp of the newest
segment a read consumed to user space. An arrival stamped that way does not depend on when the
process got round to reading: a worker descheduled for 5 ms still stamps the event at its
arrival. The stdlib loop's transports read and write through the socket object's own `recv` and
`send` (and `sendmsg`: Python 3.12+ flushes a transport's buffer and writes `writelines` with it),
so a socket subclass can take the stamps; uvloop reads the descriptor in C and cannot
(which is why a process that wants these stamps runs the stdlib loop: see docs/performance.md).

Each read also notes a floor (`ref_ns`): an instant no byte it brought can have arrived before.
It is the latest of: the start of the last read that left the receive queue empty (a read that
did not fill its buffer, or one that found nothing); the start of the last send (on an HTTP/1.1
connection no response byte comes before its request went out); and, on a loop built by
`new_event_loop`, the start of the last `select` that did not report the socket while it was
registered for reading (epoll is level-triggered: the queue was empty when it looked). The last
keeps the floor close behind the read wherever the loop turns often, as it does with many
streams, so only the time the worker truly missed widens the bound, not the time it idled. The
stamp minus the floor is how late the stamp can be for any byte of the read but its last:
client/reads.py turns it into each event's error bound.

Transmit: a client socket (`start_tx`, once connected: the kernel refuses byte-counted ids on an
unconnected TCP socket) asks for the kernel's software transmit stamp of the last byte of every
send (SOF_TIMESTAMPING_TX_SOFTWARE with OPT_ID: the stamp's id is that byte's offset in the
stream, OPT_TSONLY: no copy of the packet). The stamp is taken as the packet is handed to the
device (loopback included), so it is when the request left, after any wait in the event loop,
aiohttp or the kernel's own queue. Stamps come back on the socket's error queue, which the kernel
reports to epoll as an error condition, level-triggered: an undrained one would wake the loop on
every turn. So the queue is drained after each send (on loopback the stamp is already there) and
whenever a read finds no data (a wake for a stamp that came later); tests/client/test_send_stamp.py
checks that an idle stamped connection does not keep the loop busy. A stamp counts only when its
id is the last byte `send`/`sendmsg` counted; any other is no one's: before `sendmsg` was counted,
the writes of Python 3.12+ left `sent` short, and the fallback to the last counted write's return
dated a request's send to the previous request's, a whole request early, while claiming
microseconds of doubt. So where transmit stamps are on and none matches, the send is unknown.

Stamps are CLOCK_REALTIME; they are given on the monotonic clock of every other stamp by the
offset between the two clocks read at the same moment. NTP's slewing changes that offset by parts
per million, nothing over a read's microseconds; a step of the wall clock between a segment's
arrival and its read would move that one stamp by the step (callers refuse one later than their
own clock). A read that carried no stamp leaves `rx_ns` at 0, and callers fall back to the time
they read.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import struct
import sys
import weakref
from time import monotonic_ns, time_ns
from typing import Any

# struct scm_timestamping: three timespecs (software, deprecated, hardware), native longs on Linux.
_TIMESPEC = struct.Struct("@ll")
# struct sock_extended_err: errno, origin, type, code, pad, info, data (the OPT_ID key).
_EXT_ERR = struct.Struct("=IBBBBII")
_SO_TIMESTAMPING = 37  # Linux's asm-generic numbering (x86, ARM, RISC-V); Python does not name it
_RX_SOFTWARE = 1 << 3
_SOFTWARE = 1 << 4
_TX = (1 << 1) | (1 << 7) | (1 << 11)  # TX_SOFTWARE | OPT_ID | OPT_TSONLY
_OPT_ID_TCP = 1 << 16
_ORIGIN_TIMESTAMPING = 4  # SO_EE_ORIGIN_TIMESTAMPING
_RECVERR = {(0, 11), (41, 25)}  # (SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)


def _probe() -> int | None:
    """SO_TIMESTAMPING where the kernel takes software receive stamps, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPING, _RX_SOFTWARE | _SOFTWARE)
    except OSError:
        return None
    return _SO_TIMESTAMPING


_STAMPING = _probe()
_CMSG = socket.CMSG_SPACE(3 * _TIMESPEC.size)
_ERR_CMSG = _CMSG + socket.CMSG_SPACE(_EXT_ERR.size + 28)  # + the offender's sockaddr_in6
_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)

# `LATBENCH_KERNEL_STAMPS=0` turns them off, for bench/ab.py's side-by-side comparison.
AVAILABLE = _STAMPING is not None and os.environ.get("LATBENCH_KERNEL_STAMPS") != "0"

# Sockets by descriptor, for the protocol to find its own in `connection_made` (the transport
# hides the socket object behind a read-only wrapper).
_BY_FD: weakref.WeakValueDictionary[int, StampedSocket] = weakref.WeakValueDictionary()


def _realtime(raw: bytes) -> int:
    """A cmsg's software stamp (the first timespec) on the monotonic clock; 0 when absent."""
    sec, nsec = _TIMESPEC.unpack_from(raw)
    if not sec and not nsec:
        return 0
    # The clocks' offset, from readings bracketed by the monotonic clock: a process preempted
    # between two readings (a starved worker, the case these stamps exist for) would otherwise
    # shift the stamp by the whole preemption. A bracket over 20 us is read again.
    while True:
        m0 = monotonic_ns()
        wall = time_ns()
        m1 = monotonic_ns()
        if m1 - m0 < 20_000:
            return sec * 1_000_000_000 + nsec - wall + ((m0 + m1) >> 1)


class TurnSelector(selectors.EpollSelector):
    """The loop's selector, numbering its turns: when each `select` began (`start`, and `prev` for
    the one before), and from which turn each descriptor has been registered for reading."""

    def __init__(self) -> None:
        super().__init__()
        self.turn = 0
        self.start = self.prev = 0
        self.reading: dict[int, int] = {}

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.prev = self.start
        self.start = monotonic_ns()
        self.turn += 1
        return super().select(timeout)

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        if events & selectors.EVENT_READ:
            self.reading[key.fd] = self.turn
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        was = self.get_key(fileobj).events
        key = super().modify(fileobj, events, data)
        if not events & selectors.EVENT_READ:
            self.reading.pop(key.fd, None)
        elif not was & selectors.EVENT_READ:
            self.reading[key.fd] = self.turn
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self.reading.pop(key.fd, None)
        return key


class StampedSocket(socket.socket):
    """A socket whose reads note the kernel's arrival stamp of the newest segment they read and
    the floor under it, and whose sends (once `start_tx` ran) get the kernel's transmit stamp."""

    __slots__ = (
        "_fd",
        "_floor",
        "_turn",
        "ref_ns",
        "rx_ns",
        "sel",
        "sent",
        "tx_key",
        "tx_ns",
        "tx_on",
        "whole",
        "write0_ns",
        "write1_ns",
    )

    def _stamp(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPING:
                self.rx_ns = _realtime(raw)
                return
        self.rx_ns = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        t0 = monotonic_ns()
        try:
            data, ancdata, _, _ = self.recvmsg(bufsize, _CMSG, flags)
        except BlockingIOError:
            self._empty(t0)
            raise
        self._stamp(ancdata)
        self._read(t0, len(data) < bufsize)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer)
        if nbytes:
            view = view[:nbytes]
        t0 = monotonic_ns()
        try:
            n, ancdata, _, _ = self.recvmsg_into([view], _CMSG, flags)
        except BlockingIOError:
            self._empty(t0)
            raise
        self._stamp(ancdata)
        self._read(t0, n < len(view))
        return n

    def _read(self, t0: int, drained: bool) -> None:
        sel = self.sel
        if sel is not None:
            turn = sel.turn
            # Not read in the previous turn, so that turn's select did not report it: if it was
            # registered for reading by then, its queue was empty when that select looked.
            if self._turn < turn - 1 and sel.prev > self._floor:
                since = sel.reading.get(self._fd)
                if since is not None and since < turn - 1:
                    self._floor = sel.prev
            self._turn = turn
        # The floor of the first read the protocol has not taken yet: under TLS several socket
        # reads can make one delivery, whose bytes are no later than the first read's floor.
        if not self.ref_ns:
            self.ref_ns = self._floor
        # A read that filled its buffer may have split a segment, whose stamp (of its newest
        # part, as segments merge in the queue) may then be later than the read's last byte.
        self.whole = drained
        if drained:
            # It took everything queued: whatever the next read brings arrived after this one
            # began. A read that filled its buffer may have left older bytes behind.
            self._floor = t0

    def _empty(self, t0: int) -> None:
        """A read that found nothing: the queue was empty at `t0`; and the wake that led to it
        may have been a transmit stamp's (an error condition to epoll)."""
        self._floor = t0
        if self.sel is not None:
            self._turn = self.sel.turn
        if self.tx_on:
            self.drain_tx()

    def send(self, data: Any, flags: int = 0) -> int:
        t0 = monotonic_ns()
        n = super().send(data, flags)
        self._wrote(t0, n)
        return n

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        # Python 3.12+ transports flush their buffer, and `writelines` writes (aiohttp: headers
        # and a body of 2 KiB or more), with one sendmsg of all the buffers: those bytes count too.
        t0 = monotonic_ns()
        n = super().sendmsg(buffers, *args)
        self._wrote(t0, n)
        return n

    def _wrote(self, t0: int, n: int) -> None:
        """A write that began at `t0` and handed `n` bytes to the kernel."""
        self.write1_ns = monotonic_ns()
        self.write0_ns = self._floor = t0
        self.sent += n
        if self.tx_on:
            self.drain_tx()

    def start_tx(self) -> bool:
        """Transmit stamps from now on (a connected socket); False where the kernel refuses."""
        if _STAMPING is None:
            return False
        # OPT_ID_TCP (Linux 6.2) counts ids from the next byte written; plain OPT_ID from the
        # first byte not yet acknowledged, the same on a fresh connection, but not after a TLS
        # handshake whose last bytes are still in flight (the ids then never match `sent`, and
        # `sent_stamp` says unknown).
        for flags in (_RX_SOFTWARE | _SOFTWARE | _TX | _OPT_ID_TCP, _RX_SOFTWARE | _SOFTWARE | _TX):
            try:
                self.setsockopt(socket.SOL_SOCKET, _STAMPING, flags)
            except OSError:
                continue
            self.sent, self.tx_key, self.tx_on = 0, -1, True
            return True
        return False

    def drain_tx(self) -> None:
        """Take every transmit stamp waiting on the error queue; keep the newest (highest id)."""
        while True:
            try:
                _, ancdata, _, _ = self.recvmsg(0, _ERR_CMSG, _ERRQUEUE)
            except OSError:  # BlockingIOError: empty; anything else is the reads' to report
                return
            ts = key = -1
            for level, kind, raw in ancdata:
                if kind == _SO_TIMESTAMPING and level == socket.SOL_SOCKET:
                    ts = _realtime(raw)
                elif (level, kind) in _RECVERR and len(raw) >= _EXT_ERR.size:
                    _, origin, _, _, _, _, data = _EXT_ERR.unpack_from(raw)
                    if origin == _ORIGIN_TIMESTAMPING:
                        key = data
            if ts > 0 and key > self.tx_key:
                self.tx_ns, self.tx_key = ts, key

    def sent_stamp(self) -> tuple[int, int] | None:
        """(when the last byte sent so far left, how late that instant may be): the kernel's
        transmit stamp of that byte (exact: 0); without transmit stamps, the moment the last send
        returned (late by at most that send's duration); None before any send, and None where
        transmit stamps are on but none is of the last byte counted: bytes written past this
        class's `send`/`sendmsg` would leave the last counted send's return a whole request early
        while claiming to be late by microseconds, so unknown is the honest answer."""
        if self.tx_on:
            self.drain_tx()
            if self.tx_key == self.sent - 1 and self.tx_ns:
                return self.tx_ns, 0
            return None
        if not self.write1_ns:
            return None
        return self.write1_ns, self.write1_ns - self.write0_ns

    def accept(self) -> tuple[socket.socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        return adopt(StampedSocket(self.family, self.type, self.proto, fileno=fd)), addr


def adopt(sock: StampedSocket) -> StampedSocket:
    sock.rx_ns = sock.ref_ns = sock._floor = sock._turn = 0
    sock.whole = False
    sock.sel = None
    sock._fd = sock.fileno()
    sock.sent = sock.tx_ns = sock.write0_ns = sock.write1_ns = 0
    sock.tx_key = -1
    sock.tx_on = False
    if _STAMPING is not None:
        sock.setsockopt(socket.SOL_SOCKET, _STAMPING, _RX_SOFTWARE | _SOFTWARE)
    _BY_FD[sock.fileno()] = sock
    return sock


def client_socket(addr_info: Any) -> socket.socket:
    """aiohttp's `socket_factory`: a stamped socket for each connection it opens."""
    family, type_, proto, _, _ = addr_info
    sock = adopt(StampedSocket(family, type_, proto))
    try:
        sel = getattr(asyncio.get_running_loop(), "_selector", None)
    except RuntimeError:  # made outside a loop
        sel = None
    if isinstance(sel, TurnSelector):
        sock.sel = sel
    return sock


def of(transport: Any) -> StampedSocket | None:
    """The stamped socket under `transport` (TLS included), or None."""
    sock = transport.get_extra_info("socket")
    return _BY_FD.get(sock.fileno()) if sock is not None else None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """For a process that stamps arrivals (a worker, the simulator): the stdlib loop where these
    stamps are available, since its transports read through the socket object; else uvloop,
    when installed."""
    if AVAILABLE:
        return asyncio.SelectorEventLoop(TurnSelector())
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
