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

Each stamp also carries how late it may be (METRICS.md, "Validity of the measurement"). A read's
kernel stamp is the arrival of its newest segment, so the byte that ends a read is exact; any
other byte arrived after the read's floor (shared/rxstamp.py: the start of the last read that
emptied the queue, or of the request's send), so its stamp is late by at most the stamp minus
that floor. A piece of body that spans reads is bounded from the floor of its first read. That
the last body byte of a read shares the newest segment assumes a server writes each HTTP chunk
(size line, data, end) in one write, as aiohttp, h11 (uvicorn, vLLM) and the simulator do. The
last token event of a stream is also exact when the read that brought it holds nothing after it
but the stream's closing events (usage, the end marker): that assumes the server writes those
right after the last token, as vLLM, OpenAI, Anthropic and the simulator do; without it the last
event of nearly every stream would share its read with the closing chunk written microseconds
later, and be bounded by a whole inter-token gap. Neither holds under TLS, where a delivery ends
at a record's end but its stamp may be of the start of the next record: nothing read over TLS is
exact (`ReadClock`). The protocol also notes, at the first read of each response, when its
request left (`rxstamp.StampedSocket.sent_stamp`), before the connection can be handed to
another request.
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

# (read's monotonic_ns, body bytes the response had by then, the read's floor: -1 where the read
# had no kernel stamp, so nothing bounds it; whether its stamp is exact for its last byte)
_Marks = deque[tuple[int, int, int, bool]]
_Sent = tuple[int, int] | None  # (when the request's last byte left, how late that may be)


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
        # (the response's payload, its marks, when its request left)
        self.reads: tuple[object, _Marks, _Sent] | None = None
        self.sock: rxstamp.StampedSocket | None = None
        self.tls = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # aiohttp builds a new protocol for a connection it upgrades (HTTPS through a proxy), and
        # calls this with the TLS transport: the flag is the connection's whole life.
        self.tls = transport.get_extra_info("ssl_object") is not None
        self.sock = sock = rxstamp.of(transport)
        if sock is not None:
            sock.start_tx()

    def data_received(self, data: bytes) -> None:
        t = monotonic_ns()
        ref = -1
        whole = False
        sock = self.sock
        if sock is not None:
            if 0 < sock.rx_ns <= t:
                t = sock.rx_ns  # the kernel's arrival stamp of this read (shared/rxstamp.py)
                ref = sock.ref_ns
                whole = sock.whole
            sock.ref_ns = 0  # taken: the next delivery's floor starts at its own first read
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
            # last response's marks keeps its own; and its request's send, read now, before the
            # connection can carry another request.
            sent = sock.sent_stamp() if sock is not None else None
            reads = self.reads = (payload, deque(), sent)
        reads[1].append((t, payload.total_bytes, ref, whole))

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
    """The read times of one response's body, consumed in order as the body is, with how late
    each can be (`late`, `exact`), and when the request left (`sent`)."""

    __slots__ = ("_consumed", "_marks", "_tls", "exact", "headers_ns", "late", "read", "sent")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        # The body's own reference to its protocol: a response that was already whole when its
        # task got to it may have given its connection back (`resp.connection` is None then).
        proto = getattr(resp.content, "_protocol", None)
        reads = getattr(proto, "reads", None)
        self._marks: _Marks | None = None
        self.headers_ns: int | None = None  # the read that completed the status and headers
        self.sent: _Sent = None
        if reads is not None and reads[0] is resp.content and reads[1]:
            self._marks = reads[1]
            self.headers_ns = reads[1][0][0]
            self.sent = reads[2]
        self._consumed = 0
        # Under TLS a delivery ends at the last complete record, while its stamp is of the newest
        # segment read, which may hold the start of the next record: written later (the next
        # token's, an inter-token gap later), so no byte of a TLS delivery is known to have come
        # with its stamp. Its events keep the read's bound and are never exact (conservative: a
        # delivery that happened to end on a segment's end is not told apart).
        self._tls: bool = getattr(proto, "tls", False)
        # Of the last piece stamped: how late its stamp may be for any of its bytes (-1: not
        # known), whether its last byte ended its read (so that byte's stamp is exact), and which
        # read that was (its end, in body bytes; -1 when the piece spans reads, or under TLS).
        self.late = -1
        self.exact = False
        self.read = -1

    def stamp(self, n: int) -> int:
        """When the read that brought the last of the next `n` body bytes happened."""
        start = self._consumed
        end = self._consumed = start + n
        marks = self._marks
        if marks is not None:
            while marks and marks[0][1] <= start:
                marks.popleft()
            if marks:
                first = marks[0]
                ref = first[2]  # the floor of the read that brought the piece's first byte
                while marks[0][1] < end and len(marks) > 1:
                    marks.popleft()
                t, total, last_ref, whole = marks[0]
                if total >= end:
                    self.read = total if marks[0] is first and not self._tls else -1
                    if ref < 0 or last_ref < 0:
                        self.late, self.exact = -1, False
                    else:
                        self.late = t - ref if t > ref else 0
                        self.exact = whole and total == end and not self._tls
                    return t
        self.late, self.exact, self.read = -1, False, -1
        return monotonic_ns()
