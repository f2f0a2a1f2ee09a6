"""Arrival stamps taken where the socket is read, not where the request's task gets round to it.

aiohttp reads a connection in its protocol's `data_received`, parses it there, and only wakes the
task that awaits the response; the task runs after every other callback ready in that turn of the
loop. Stamping in the task would add that wait (and, for the first event, aiohttp's whole
response set-up) to every TTFT and ITL, and a busy worker's backlog would collapse a run of events
onto one late stamp. So the connector's protocol (`StampingConnector`) notes, after each read,
the read's time and how many body bytes the response has had so far; `ReadClock` then gives a
piece of body the time of the read that brought its last byte. METRICS.md's "when the bytes that
complete the event are read" is that read. Where the kernel's arrival stamps are available
(latbench/shared/rxstamp.py: Linux, the stdlib loop), a read's time is the kernel's stamp of its
newest segment, so a worker that was descheduled when the bytes came in still stamps them when
they came.

A response the protocol did not stamp (a session built elsewhere, as in some tests) falls back
to the time the task reads the piece, which is never earlier than the truth, only later.
"""

from __future__ import annotations

import functools
from collections import deque
from time import monotonic_ns
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD

from latbench.shared import rxstamp

_Marks = deque[tuple[int, int]]  # (read's monotonic_ns, body bytes the response had by then)


async def read_bounded(content: aiohttp.StreamReader, limit: int) -> bytearray:
    """A body read to its end, or to its first `limit + 1` bytes: a caller that gets more than
    `limit` knows the body is over it, and has held no more than that of an endless one."""
    raw = bytearray()
    while len(raw) <= limit and (piece := await content.read(min(1 << 20, limit + 1 - len(raw)))):
        raw += piece
    return raw


class BodyFramingError(aiohttp.ClientPayloadError):
    """The response body broke HTTP/1.1's framing: a malformed chunk size or chunk end."""


def framing_detail(message: str, otherwise: str = "malformed HTTP body") -> str:
    """What was wrong, from an aiohttp parser message: its first line is the reason (the C
    parser's later lines show the offending bytes; the Python parser's is sometimes those bytes
    alone). A reason about chunks says so; any other is `otherwise`."""
    reason = message.split("\n", 1)[0].strip().rstrip(":") or "unreadable"
    if "chunk" in reason.lower():
        return f"malformed chunked encoding: {reason}"
    return f"{otherwise}: {reason}"


class StampedResponseHandler(ResponseHandler):
    """aiohttp's response protocol, noting each read's time against the body bytes so far."""

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self.reads: tuple[object, _Marks] | None = None  # (the response's payload, its marks)
        self._sock: rxstamp.StampedSocket | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._sock = rxstamp.of(transport)

    def data_received(self, data: bytes) -> None:
        t = monotonic_ns()
        if self._sock is not None and 0 < self._sock.rx_ns <= t:
            t = self._sock.rx_ns  # the kernel's arrival stamp of this read (shared/rxstamp.py)
        body = self._payload
        # `_exception` is what `exception()` returns (aiohttp's DataQueue), read without two
        # method calls on every read; tests/client/test_stream.py fails if it ever goes.
        failed = self._exception
        super().data_received(data)
        if self._exception is not failed:
            self._fail_body(body)
            return
        payload = self._payload
        if payload is None or payload is EMPTY_PAYLOAD:  # EMPTY_PAYLOAD is shared: not a key
            return
        reads = self.reads
        if reads is None or reads[0] is not payload:
            # A new response on this connection: a new deque, so that a reader still holding the
            # last response's marks keeps its own.
            reads = self.reads = (payload, deque())
        reads[1].append((t, payload.total_bytes))

    def _fail_body(self, body: object) -> None:
        """Hand a parse error in the middle of a body to that body's reader.

        aiohttp's C parser (3.14) drops the body it was feeding when the bytes break the chunked
        encoding, and the protocol keeps the error for a next response nobody waits for: the
        reader of the body would wait for bytes that never come, until an idle timeout reads it
        as a slow server. The Python parser hands it over itself; so does this."""
        exc = self.exception()
        if (
            exc is None
            or not isinstance(body, aiohttp.StreamReader)
            or body is EMPTY_PAYLOAD
            or body.is_eof()
            or body.exception() is not None
        ):
            return
        message = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        body.set_exception(BodyFramingError(framing_detail(message)), exc)


class StampingConnector(aiohttp.TCPConnector):
    """A TCPConnector whose connections stamp their reads, with the kernel's arrival stamps where
    the loop lets the socket take them (`rxstamp.AVAILABLE`, and the stdlib loop)."""

    def __init__(self, **kwargs: Any) -> None:
        if rxstamp.AVAILABLE:
            kwargs.setdefault("socket_factory", rxstamp.client_socket)
        super().__init__(**kwargs)
        # aiohttp has no public hook for its protocol class; `_factory` is what it builds each
        # connection's protocol with (tests/client/test_stream.py fails if that ever changes).
        self._factory = functools.partial(StampedResponseHandler, loop=self._loop)


class ReadClock:
    """The read times of one response's body, consumed in order as the body is."""

    __slots__ = ("_consumed", "_marks", "headers_ns")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        # The body's own reference to its protocol: a response that was already whole when its
        # task got to it may have given its connection back (`resp.connection` is None then).
        proto = getattr(resp.content, "_protocol", None)
        reads = getattr(proto, "reads", None)
        self._marks: _Marks | None = None
        self.headers_ns: int | None = None  # the read that completed the status and headers
        if reads is not None and reads[0] is resp.content and reads[1]:
            self._marks = reads[1]
            self.headers_ns = reads[1][0][0]
        self._consumed = 0

    def stamp(self, n: int) -> int:
        """When the read that brought the last of the next `n` body bytes happened."""
        self._consumed += n
        marks = self._marks
        if marks is not None:
            while marks and marks[0][1] < self._consumed:
                marks.popleft()
            if marks:
                return marks[0][0]
        return monotonic_ns()
