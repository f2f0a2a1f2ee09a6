"""Stream transcripts: a response's exact bytes with the instant each piece is written.

A transcript file (`*.sse`) is a header of `#` lines, then the body, split into timed pieces:

    # Free text: what the stream is. Lines of the form `# key: value` with these keys are read:
    # api: anthropic                   chat | completions | anthropic | responses (required)
    # source: https://docs...          the documentation page the stream follows (required)
    # status: 200                      HTTP status (default 200)
    # header: retry-after: 1           a response header (repeatable; replaces a default one)
    @ 0ms
    event: message_start
    data: {"type": "message_start", ...}

    @ 120ms
    event: content_block_delta
    ...
    @ 400ms cut

A line `@ <t>ms` starts a piece written `t` milliseconds after the request arrived; offsets are
absolute, so lateness never accumulates, and never decrease. Every other body line, its line end
included, is sent exactly as it is in the file: the bytes on the wire are the file's body, byte
for byte. After the last piece the response ends cleanly, or, after a final `@ <t>ms cut`, the
connection is dropped at `t` without ending the response. The status line and headers leave
with the first piece. Default headers are
`Content-Type: text/event-stream; charset=utf-8` and `Cache-Control: no-cache`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from latbench.shared.errors import SpecError
from latbench.sim.formats import PATHS

_MARKER = re.compile(rb"^@ (\d+(?:\.\d+)?)ms( cut)?\s*$")
_META = re.compile(r"^#\s*(api|source|status|header):\s*(.*?)\s*$")
DEFAULT_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
)


class TranscriptError(ValueError):
    """A transcript file that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Piece:
    at_s: float  # seconds after the request arrived
    data: bytes


@dataclass(frozen=True, slots=True)
class Transcript:
    name: str  # the file name without `.sse`; selects it in the `x-latbench-replay` header
    api: str
    source: str
    status: int
    headers: tuple[tuple[str, str], ...]
    pieces: tuple[Piece, ...]
    cut_at_s: float | None  # drop the connection at this offset instead of ending cleanly

    @property
    def path(self) -> str:
        return PATHS[self.api]

    @property
    def body(self) -> bytes:
        return b"".join(p.data for p in self.pieces)


def load_transcript(path: str | Path) -> Transcript:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise TranscriptError(f"transcript {p}: cannot read it: {e.strerror}") from None
    lines = raw.splitlines(keepends=True)
    meta: dict[str, str] = {}
    headers = dict(DEFAULT_HEADERS)
    i = 0
    while i < len(lines) and lines[i].startswith(b"#"):
        m = _META.match(lines[i].decode("utf-8", "replace"))
        if m is not None:
            key, value = m.groups()
            if key == "header":
                name, sep, hvalue = value.partition(":")
                if not sep or not name.strip():
                    raise TranscriptError(f"{p}:{i + 1}: write a header as `# header: Name: value`")
                # Case-insensitive replace of a default header, keeping the file's spelling.
                for k in [k for k in headers if k.lower() == name.strip().lower()]:
                    del headers[k]
                headers[name.strip()] = hvalue.strip()
            else:
                meta[key] = value
        i += 1
    api = meta.get("api")
    if api not in PATHS:
        raise TranscriptError(f"{p}: `# api:` must be one of {', '.join(PATHS)}, got {api!r}")
    if not meta.get("source"):
        raise TranscriptError(f"{p}: no `# source:` line naming the documentation it follows")
    try:
        status = int(meta.get("status", "200"))
    except ValueError:
        raise TranscriptError(f"{p}: `# status:` is not a number: {meta['status']!r}") from None
    if not 100 <= status <= 599:
        raise TranscriptError(f"{p}: `# status: {status}` is not an HTTP status")

    pieces: list[Piece] = []
    at, buf, cut = 0.0, bytearray(), None
    for lineno, line in enumerate(lines[i:], i + 1):
        m = _MARKER.match(line)
        if m is None:
            if cut is not None:
                raise TranscriptError(f"{p}:{lineno}: nothing may follow a `cut` marker")
            buf += line
            continue
        offset = float(m.group(1)) / 1000
        if offset < at:
            raise TranscriptError(f"{p}:{lineno}: offsets must not decrease ({line.strip()!r})")
        if buf:
            pieces.append(Piece(at, bytes(buf)))
        at, buf = offset, bytearray()
        if m.group(2):
            cut = offset
    if buf:
        pieces.append(Piece(at, bytes(buf)))
    if not pieces:
        raise TranscriptError(f"{p}: the transcript has no body")
    return Transcript(
        name=p.name.removesuffix(".sse"),
        api=api,
        source=meta["source"],
        status=status,
        headers=tuple(headers.items()),
        pieces=tuple(pieces),
        cut_at_s=cut,
    )


def load_all(paths: list[Path], api: str | None = None) -> list[Transcript]:
    """The transcripts `paths` name: files as given, a directory for its `*.sse` files in name
    order. With `api`, at least one must be for that API kind. Raises TranscriptError."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.glob("*.sse")) if p.is_dir() else [p])
    if paths and not files:
        raise TranscriptError(f"no *.sse transcript in {', '.join(map(str, paths))}")
    out: list[Transcript] = []
    seen: dict[str, Path] = {}
    for f in files:
        t = load_transcript(f)
        if t.name in seen:
            raise TranscriptError(f"two transcripts named {t.name!r}: {seen[t.name]} and {f}")
        seen[t.name] = f
        out.append(t)
    kinds = sorted({t.api for t in out})
    if api is not None and out and api not in kinds:
        raise TranscriptError(
            f"no transcript is for the {api!r} API (they are for: {', '.join(kinds)})"
        )
    return out


class Replayer:
    """The transcripts one server replays. A request gets the one its `x-latbench-replay` header
    names, else the next of those for its path, in file order, round robin."""

    HEADER = "x-latbench-replay"

    def __init__(self, transcripts: list[Transcript]) -> None:
        self.by_name = {t.name: t for t in transcripts}
        self._cycles: dict[str, Iterator[Transcript]] = {}
        for path in dict.fromkeys(t.path for t in transcripts):
            self._cycles[path] = itertools.cycle([t for t in transcripts if t.path == path])

    @property
    def paths(self) -> list[str]:
        return list(self._cycles)

    def pick(self, request: web.Request) -> Transcript | str:
        """The transcript for `request`, or why there is none."""
        name = request.headers.get(self.HEADER)
        if name is None:
            return next(self._cycles[request.path])
        t = self.by_name.get(name)
        if t is None:
            return f"no transcript named {name!r}; this server replays: {', '.join(self.by_name)}"
        if t.path != request.path:
            return f"transcript {name!r} is for {t.path}, not {request.path}"
        return t


async def replay(
    request: web.Request, t: Transcript, stopping: asyncio.Event
) -> web.StreamResponse:
    """Write `t`'s pieces at their offsets from `arrival` (the loop's clock, at handler entry)."""
    loop = asyncio.get_running_loop()
    arrival = loop.time()
    await request.read()  # the body is not looked at, but must be consumed
    resp = web.StreamResponse(status=t.status, headers=dict(t.headers))
    try:
        for piece in t.pieces:
            if await _wait_until(arrival + piece.at_s, loop, stopping):
                return _hang_up(request, resp)
            if not resp.prepared:
                # The status line and headers leave with the first piece: the transcript times
                # them too (a slow refusal, a stream whose headers wait for the first token).
                await resp.prepare(request)
            await resp.write(piece.data)
        if t.cut_at_s is not None:
            await _wait_until(arrival + t.cut_at_s, loop, stopping)
            return _hang_up(request, resp)
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away
    return resp


async def _wait_until(
    when: float, loop: asyncio.AbstractEventLoop, stopping: asyncio.Event
) -> bool:
    """Sleep until `when` on the loop's clock; True if the server began shutting down first."""
    delay = when - loop.time()
    if delay <= 0:
        return stopping.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)
    return stopping.is_set()


def _hang_up(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.close()
    return resp


def check_replay(paths: list[Path], api: str | None = None) -> None:
    """Read the transcripts to replay before the server starts, so that a bad one is a usage
    error naming the file rather than a server that dies at start-up."""
    try:
        load_all(paths, api)
    except TranscriptError as e:
        raise SpecError(f"sim.replay: {e}") from None
