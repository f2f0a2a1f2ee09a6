"""Incremental Server-Sent Events parser (the WHATWG event-stream format).

Bytes arrive in arbitrary pieces: an event can be split across reads, and one read can hold several
events. `feed` returns the `data` payload of every event a piece completed, in order; the caller
stamps them all with the arrival time of that piece, before any JSON decoding.

Handles LF, CRLF and bare CR line ends (also a CRLF split across two reads), comments (`:` lines,
used as keep-alives), fields other than `data` (ignored), multi-line `data` (joined with LF), and
events without data (not dispatched, as the spec says).
"""

from __future__ import annotations


class SSEParser:
    __slots__ = ("_buf", "_cr_pending")

    def __init__(self) -> None:
        self._buf = b""
        self._cr_pending = False

    def feed(self, piece: bytes) -> list[bytes]:
        if self._cr_pending:
            # A CR ended the last piece; an LF opening this one belongs to the same line end.
            if piece.startswith(b"\n"):
                piece = piece[1:]
            self._cr_pending = False
        if b"\r" in piece:
            if piece.endswith(b"\r"):
                self._cr_pending = True
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + piece if self._buf else piece
        out: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            # The common case (one `data: ` line, as vLLM and OpenAI send) skips the line loop.
            if block.startswith(b"data: ") and b"\n" not in block:
                if len(block) > 6:
                    out.append(block[6:])
                continue
            _parse_block(block, out)
        self._buf = buf[start:]
        return out

    def flush(self) -> list[bytes]:
        """The event left unterminated when the stream closed. The spec discards it; callers that
        want to know about a truncated final event can look here."""
        out: list[bytes] = []
        if self._buf.strip(b"\n"):
            _parse_block(self._buf.strip(b"\n"), out)
        self._buf = b""
        return out


def _parse_block(block: bytes, out: list[bytes]) -> None:
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line:
            # A blank line at the start of a block (stray line end) dispatches what came before.
            if data:
                out.append(b"\n".join(data))
                data = []
            continue
        if line.startswith(b":"):
            continue
        name, colon, value = line.partition(b":")
        if name != b"data":
            continue
        if colon and value.startswith(b" "):
            value = value[1:]
        data.append(value)
    if data:
        joined = b"\n".join(data)
        if joined:
            out.append(joined)
