"""Incremental Server-Sent Events parser (the WHATWG event-stream format).

Bytes arrive in arbitrary pieces: an event can be split across reads, and one read can hold several
events. `feed` returns the `data` payload of every event a piece completed, in order; the caller
stamps them all with the arrival time of that piece, before any JSON decoding.

Handles LF, CRLF and bare CR line ends (also a CRLF split across two reads), comments (`:` lines,
used as keep-alives), fields other than `data` (ignored), multi-line `data` (joined with LF), and
events without data (not dispatched, as the spec says).

What it holds is bounded whatever the server sends: a line longer than `max_line_bytes` or an
event longer than `max_event_bytes` (both counted after line ends are normalised to LF, without
the line end) raises `OversizedEvent`, however the stream is split into pieces: the verdict, and
which cap it names (the one whose limit the event's bytes pass first; the line's on a tie), are
those of the bytes alone, so that the same stream always fails the same way. An unterminated
event is kept in a growing buffer whose new bytes alone are searched, so a server that never sends
a line end costs linear time up to the cap, not a re-copy and re-search of the whole on every read.
"""

from __future__ import annotations

from latbench.spec.target import MAX_EVENT_BYTES, MAX_LINE_BYTES


class OversizedEvent(Exception):
    """A line or an event over the parser's cap. `events` holds the payloads the same `feed`
    completed before it, which the caller has not been given."""

    def __init__(self, message: str, events: list[bytes]) -> None:
        super().__init__(message)
        self.events = events


class SSEParser:
    __slots__ = (
        "_buf",
        "_cr_pending",
        "_line_start",
        "_max_event",
        "_max_line",
        "_max_one",
        "_seen",
    )

    def __init__(
        self, max_line_bytes: int = MAX_LINE_BYTES, max_event_bytes: int = MAX_EVENT_BYTES
    ) -> None:
        # The unterminated rest of the stream: bytes, or a bytearray once it grows over reads.
        self._buf: bytes | bytearray = b""
        self._cr_pending = False
        # Line ends in `_buf` are found up to `_seen`; the last line found so far starts at
        # `_line_start`.
        self._seen = 0
        self._line_start = 0
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        # A one-line event obeys both caps: the hot path compares its length with this alone.
        self._max_one = min(max_line_bytes, max_event_bytes)

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
        held = len(self._buf)
        if held:
            buf = self._buf
            if type(buf) is bytes:
                buf = buf + piece  # a rest held over one read: small, copied once
            else:
                buf += piece  # a rest held over reads grows in place, never copied again
            # Only the new bytes (and the one before them, for a blank line across the seam).
            end = buf.find(b"\n\n", held - 1)
            if end >= 0 and type(buf) is not bytes:
                buf = bytes(buf)  # once per completed event, so every payload is bytes
        else:
            buf = piece
            end = buf.find(b"\n\n")
        out: list[bytes] = []
        start = 0
        while end >= 0:
            block = buf[start:end]
            start = end + 2
            # The common case (one `data: ` line, as vLLM and OpenAI send) skips the line loop.
            if block.startswith(b"data: ") and b"\n" not in block:
                if len(block) > self._max_one:
                    # One line, over the smaller cap: its bytes pass that cap first.
                    raise self._over(out, event=self._max_line > self._max_event)
                if len(block) > 6:
                    out.append(block[6:])
            else:
                self._parse_block(block, out)
            end = buf.find(b"\n\n", start)
        if start == len(buf):
            self._buf = b""
            self._seen = self._line_start = 0
            return out
        if start:
            # Events were completed: the rest is new bytes only, its lines not yet measured.
            self._buf = buf = buf[start:]
            self._seen = self._line_start = 0
        else:
            # Nothing completed: from the second read on, the rest grows in place.
            self._buf = buf if not held or type(buf) is bytearray else bytearray(buf)
        if len(buf) > self._max_one:
            # Only now can a cap be passed; measuring lines waits till then (from `_seen`).
            self._check_rest(buf, out)
        return out

    def flush(self) -> list[bytes]:
        """The event left unterminated when the stream closed. The spec discards it; callers that
        want to know about a truncated final event can look here."""
        out: list[bytes] = []
        rest = bytes(self._buf).strip(b"\n")
        if rest:
            self._parse_block(rest, out)
        self._buf = b""
        self._seen = self._line_start = 0
        return out

    def _check_rest(self, buf: bytes | bytearray, out: list[bytes]) -> None:
        """Hold the unterminated rest to the caps, finding each line end once."""
        line = self._line_start
        over = -1  # where the first line over its cap starts
        nl = buf.find(b"\n", self._seen)
        while nl >= 0:
            if nl - line > self._max_line:
                over = line
                break
            line = nl + 1
            nl = buf.find(b"\n", line)
        if over < 0 and len(buf) - line > self._max_line:
            over = line
        # The event so far, without a line end that ends it: the blank line that may follow
        # completes the event without it, so counting it would fail an event of exactly the cap
        # only when that blank line came in a later read. Nor the stray blank lines before it
        # (they dispatch nothing).
        lead = _leading_line_ends(buf)
        self._raise_if_over(
            out, len(buf) - (buf[-1] == 10) - lead, over - lead if over >= 0 else -1
        )
        self._seen = len(buf)
        self._line_start = line

    def _raise_if_over(self, out: list[bytes], size: int, over_line: int) -> None:
        """Raise for an event of `size` bytes whose first line over the line cap starts at
        `over_line` (-1: none): the error names the cap its bytes pass first."""
        if over_line >= 0 and (
            size <= self._max_event or over_line + self._max_line <= self._max_event
        ):
            raise self._over(out)
        if size > self._max_event:
            raise self._over(out, event=True)

    def _parse_block(self, block: bytes, out: list[bytes]) -> None:
        lines = block.split(b"\n")
        if len(block) > self._max_one:
            # Stray blank lines before the event dispatch nothing and are not its bytes.
            lead = _leading_line_ends(block)
            at = -lead
            for line in lines:
                if len(line) > self._max_line:
                    self._raise_if_over(out, len(block) - lead, at)
                at += len(line) + 1
            self._raise_if_over(out, len(block) - lead, -1)
        data: list[bytes] = []
        for line in lines:
            if not line:
                # A blank line at the start of a block (stray line end) dispatches what came
                # before.
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

    def _over(self, out: list[bytes], *, event: bool = False) -> OversizedEvent:
        """The error for a line (or an event) over its cap; what was held is dropped, as
        nothing follows."""
        self._buf = b""
        self._seen = self._line_start = 0
        what, cap = ("an event", self._max_event) if event else ("an event line", self._max_line)
        return OversizedEvent(f"{what} over {cap:,} bytes", out)


def _leading_line_ends(buf: bytes | bytearray) -> int:
    """How many line ends open `buf`: blank lines left over from before an event (a stray line
    end after the blank line that ended the last one). Few: counted, never copied."""
    n = 0
    while n < len(buf) and buf[n] == 10:
        n += 1
    return n
