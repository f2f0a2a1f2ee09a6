"""A hostile HTTP server for the fault matrix: raw asyncio, so that it can break HTTP itself.

It speaks OpenAI chat streaming (`POST .../v1/chat/completions`, the simulator's chunk shape)
and lists models at `GET .../v1/models`. What each request gets is chosen by the URL's path
prefix, so one server serves every mode and a run mixes good and bad requests:

    http://127.0.0.1:PORT/h/<mode>/<k>/v1/chat/completions
        every k-th chat request (the 1st, k+1-th, ...) gets <mode>; the others a normal short
        stream. Without `/<k>` every request gets <mode>. Without `/h/...` every request is good.
    http://127.0.0.1:PORT/h/<mode1>+<mode2>+ok+.../v1/chat/completions
        the chat requests get the modes in turn, round and round (`ok` is a good stream).

A header `x-hostile: <mode>` chooses the mode of that one request instead. Every request under
`/moved/` (the model list too) is a 307 to the sink. The modes are the
keys of `MODES`; `GOOD` is the normal stream. Redirects point at `redirect_to` (a `Sink`, which
only counts what reaches it). Sizes are parameters of the server (`big`: bytes of an oversized
line, `flood`: events of a flood), so a test states them.

From a shell or a subprocess: `python tests/kit/hostile.py [--port P] [--big BYTES]` serves until
killed, after printing `http://127.0.0.1:P` on its first line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import socket
import struct
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from latbench.workload import SyntheticWorkload, WorkItem

GOOD = "ok"
MODEL = "m"
TOKENS = 4  # a good stream's completion tokens
# A first good event before the fault, so that a record keeps what came before it.
_MiB = 1 << 20


def _chunk(
    content: str | None = "tok",
    *,
    completion: object = None,
    prompt: object = 3,
    finish: str | None = None,
    choices: bool = True,
) -> bytes:
    obj: dict[str, object] = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "delta": {"content": content} if content is not None else {},
                "finish_reason": finish,
            }
        ]
        if choices
        else [],
    }
    if completion is not None:
        obj["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": 3,
        }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def good_stream() -> list[bytes]:
    """The simulator's shape: token chunks with continuous usage, a usage chunk, [DONE]."""
    events = [_chunk(f" t{i}", completion=i + 1) for i in range(TOKENS - 1)]
    events.append(_chunk(f" t{TOKENS - 1}", completion=TOKENS, finish="length"))
    events.append(_chunk(None, completion=TOKENS, choices=False))
    events.append(b"data: [DONE]\n\n")
    return events


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


@dataclass
class Conn:
    """One accepted connection and the request just read from it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    method: str
    path: str
    headers: dict[str, str]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        """One chunk of a chunked body."""
        await self.send(b"%x\r\n%s\r\n" % (len(data), data))

    async def end(self) -> None:
        await self.send(b"0\r\n\r\n")

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[["HostileServer", Conn], Awaitable[None]]


async def _good(srv: HostileServer, c: Conn) -> None:
    await c.send(SSE_HEAD)
    for ev in good_stream():
        await c.chunk(ev)
    await c.end()


def _good_with_head(head: bytes) -> Handler:
    async def handler(srv: HostileServer, c: Conn) -> None:
        await c.send(head)
        for ev in good_stream():
            await c.chunk(ev)
        await c.end()

    return handler


async def _fault_after_first(c: Conn, fault: bytes | list[bytes]) -> None:
    """A first good token, then `fault` (one chunk or several), then the rest of a good stream:
    the client must stop at the fault, and keep the token before it."""
    await c.send(SSE_HEAD)
    await c.chunk(_chunk(" first", completion=1))
    for piece in fault if isinstance(fault, list) else [fault]:
        await c.chunk(piece)
    for ev in good_stream()[1:]:
        await c.chunk(ev)
    await c.end()


async def _oversized_line(srv: HostileServer, c: Conn) -> None:
    # `big` bytes of one line without a line end, a MiB a chunk, then the stream goes on.
    await c.send(SSE_HEAD)
    await c.chunk(_chunk(" first", completion=1))
    block = b"x" * _MiB
    await c.chunk(b"data: ")
    for _ in range(srv.big // _MiB):
        await c.chunk(block)
    await c.chunk(b"\n\n")
    await c.end()


async def _oversized_event(srv: HostileServer, c: Conn) -> None:
    # Short lines (1 KiB), but no blank line to end the event: `big` bytes of one event.
    line = b"data: " + b"y" * 1018 + b"\n"
    group = line * 1024  # 1 MiB
    await c.send(SSE_HEAD)
    await c.chunk(_chunk(" first", completion=1))
    for _ in range(srv.big // _MiB):
        await c.chunk(group)
    await c.chunk(b"\n")
    await c.end()


def _bad_usage(value: bytes) -> Handler:
    async def handler(srv: HostileServer, c: Conn) -> None:
        # The raw bytes of the value (a >64-bit integer must not go through Python's JSON).
        ev = _chunk(" tok", completion=12345).replace(b"12345", value)
        await _fault_after_first(c, ev)

    return handler


async def _usage_down(srv: HostileServer, c: Conn) -> None:
    await _fault_after_first(c, [_chunk(" a", completion=5), _chunk(" b", completion=3)])


async def _invalid_utf8(srv: HostileServer, c: Conn) -> None:
    await _fault_after_first(c, _chunk(" tok", completion=2).replace(b" tok", b"\xff\xfe\xfa"))


async def _invalid_json(srv: HostileServer, c: Conn) -> None:
    await _fault_after_first(c, b'data: {"choices": [{"delta": {"content": "x"}}\n\n')


async def _reset_before_headers(srv: HostileServer, c: Conn) -> None:
    c.reset()


async def _reset_after_headers(srv: HostileServer, c: Conn) -> None:
    await c.send(SSE_HEAD)
    c.reset()


async def _reset_mid_stream(srv: HostileServer, c: Conn) -> None:
    await c.send(SSE_HEAD)
    for ev in good_stream()[:2]:
        await c.chunk(ev)
    c.reset()


async def _slow_headers(srv: HostileServer, c: Conn) -> None:
    await asyncio.sleep(srv.slow_s)
    await _good(srv, c)


def _redirect(status: int) -> Handler:
    async def handler(srv: HostileServer, c: Conn) -> None:
        where = srv.redirect_to + "/v1/chat/completions"
        await c.send(
            f"HTTP/1.1 {status} Moved\r\nLocation: {where}\r\nContent-Length: 0\r\n\r\n".encode()
        )

    return handler


def _body(ctype: str, body: bytes) -> Handler:
    async def handler(srv: HostileServer, c: Conn) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        await c.send(head.encode() + body)

    return handler


def _stalled(status: int, ctype: str) -> Handler:
    async def handler(srv: HostileServer, c: Conn) -> None:
        # The headers of a chunked body, then nothing: the client must say what it got, not
        # wait for a token that cannot come.
        await c.send(
            f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        await asyncio.sleep(srv.hold_s)

    return handler


async def _bad_chunk(srv: HostileServer, c: Conn) -> None:
    # A chunk size that is not hexadecimal, in a later read than a good first token; then
    # nothing, the connection left open (as a broken proxy would), so only the parse error can
    # end it.
    await c.send(SSE_HEAD)
    await c.chunk(_chunk(" first", completion=1))
    await asyncio.sleep(0.05)
    await c.send(b"zz\r\ndata: \r\n")
    await asyncio.sleep(srv.hold_s)


async def _bad_chunk_at_once(srv: HostileServer, c: Conn) -> None:
    # The same bytes as bad_chunk in one write, as a worker that stalled reads them: the
    # headers, the first token and the bad chunk size in one read.
    ev = _chunk(" first", completion=1)
    await c.send(SSE_HEAD + b"%x\r\n%s\r\nzz\r\ndata: \r\n" % (len(ev), ev))
    await asyncio.sleep(srv.hold_s)


async def _chunk_overrun(srv: HostileServer, c: Conn) -> None:
    # A chunk longer than its declared size (no CRLF where the size says it ends), in the same
    # read as the headers: aiohttp fails the response, not its body.
    await c.send(SSE_HEAD)
    await c.chunk(_chunk(" first", completion=1))
    ev = _chunk(" second", completion=2)
    await c.send(b"%x\r\n%sEXTRA\r\n" % (len(ev), ev))
    await asyncio.sleep(srv.hold_s)


async def _flood(srv: HostileServer, c: Conn) -> None:
    # `flood` tiny events (a keep-alive comment and a one-character token each), many a chunk,
    # then a normal end: not an error, only a lot of small work for the client.
    tiny = b": k\n\n" + _chunk("x").replace(b',"finish_reason":null', b"")
    batch = tiny * 512
    await c.send(SSE_HEAD)
    for _ in range(srv.flood // 512):
        await c.chunk(batch)
    await c.chunk(_chunk(None, completion=srv.flood // 512 * 512, choices=False))
    await c.chunk(b"data: [DONE]\n\n")
    await c.end()


async def _endless(srv: HostileServer, c: Conn) -> None:
    # Tokens every 10 ms, forever (until the client goes away).
    await c.send(SSE_HEAD)
    for i in itertools.count(1):
        await c.chunk(_chunk(" more", completion=i))
        await asyncio.sleep(0.01)


MODES: dict[str, Handler] = {
    GOOD: _good,
    "oversized_line": _oversized_line,
    "oversized_event": _oversized_event,
    "invalid_utf8": _invalid_utf8,
    "invalid_json": _invalid_json,
    "usage_float": _bad_usage(b"1.5"),
    "usage_bigint": _bad_usage(b"1180591620717411303424"),  # 2**70
    "usage_over_2_53": _bad_usage(b"9007199254740993"),
    "usage_negative": _bad_usage(b"-5"),
    "usage_string": _bad_usage(b'"7"'),
    "usage_bool": _bad_usage(b"true"),
    "usage_object": _bad_usage(b'{"n": 1}'),
    "usage_down": _usage_down,
    "reset_before_headers": _reset_before_headers,
    "reset_after_headers": _reset_after_headers,
    "reset_mid_stream": _reset_mid_stream,
    "slow_headers": _slow_headers,
    **{f"redirect_{s}": _redirect(s) for s in (301, 302, 303, 307, 308)},
    "html": _body("text/html; charset=utf-8", b"<html><body>Sign in to continue</body></html>"),
    "json_body": _body("application/json", b'{"id": "x", "choices": []}'),
    "html_stalled": _stalled(200, "text/html"),
    "error_stalled": _stalled(500, "application/json"),
    "bad_chunk": _bad_chunk,
    "bad_chunk_at_once": _bad_chunk_at_once,
    "chunk_overrun": _chunk_overrun,
    "flood": _flood,
    # Not faults: event streams labelled unusually, which must be read as any other.
    "no_content_type": _good_with_head(
        SSE_HEAD.replace(b"Content-Type: text/event-stream; charset=utf-8\r\n", b"")
    ),
    "upper_content_type": _good_with_head(
        SSE_HEAD.replace(b"text/event-stream", b"Text/Event-Stream")
    ),
    "endless": _endless,
}


@dataclass
class Sink:
    """A listening server that must receive nothing: it counts connections and bytes."""

    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError):
            self.received += await reader.read(65536)
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class HostileServer:
    redirect_to: str = "http://127.0.0.1:9"
    big: int = 50 * _MiB  # bytes of an oversized line or event
    flood: int = 100_000  # events of a flood
    slow_s: float = 3.0  # how long slow_headers waits
    hold_s: float = 30.0  # how long a broken stream is held open
    models: int = 1  # how many models /v1/models lists (MODEL first)
    port: int = 0
    served: Counter[str] = field(default_factory=Counter)  # mode -> requests given it
    _counts: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self, mode: str, every: int = 1) -> str:
        """The base URL whose chat requests get `mode` (every `every`-th one)."""
        return f"{self.url}/h/{mode}/{every}"

    def cycle(self, modes: list[str]) -> str:
        """The base URL whose chat requests get `modes` in turn."""
        return f"{self.url}/h/{'+'.join(modes)}/0"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                conn = await self._read_request(reader, writer)
                if conn is None:
                    return
                await self._answer(conn)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            return  # shut down: a cancelled handler task would only be logged as an error
        finally:
            writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Conn | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        if n:
            await reader.readexactly(n)
        return Conn(reader, writer, method, path, headers)

    async def _answer(self, c: Conn) -> None:
        if c.path.startswith("/moved/"):
            # Everything under /moved/, the model list included, redirects to the sink.
            await _redirect(307)(self, c)
            return
        if c.path.split("?")[0].endswith("/v1/models"):
            await self._models(c)
            return
        if not c.path.endswith("/v1/chat/completions") or c.method != "POST":
            await c.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        mode = self._mode(c)
        if mode not in MODES:
            await c.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        self.served[mode] += 1
        await MODES[mode](self, c)

    def _mode(self, c: Conn) -> str:
        if "x-hostile" in c.headers:
            return c.headers["x-hostile"]
        parts = c.path.split("/")
        if len(parts) < 4 or parts[1] != "h":
            return GOOD
        key = parts[2]
        n = self._counts[key]
        self._counts[key] += 1
        if "+" in key:
            cycle = key.split("+")
            return cycle[n % len(cycle)]
        every = int(parts[3]) if parts[3].isdigit() else 1
        return key if n % every == 0 else GOOD

    async def _models(self, c: Conn) -> None:
        ids = [MODEL, *(f"model-{i:05d}" for i in range(self.models - 1))]
        body = orjson.dumps({"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        await c.send(head.encode() + b"\r\n\r\n" + body)


class Running:
    """Servers on their own thread and event loop, so a test (or `latbench` in a subprocess)
    can talk to them over real sockets while the test's own loop, if any, stays free."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []

    def serve(self, handler: Callable[..., Awaitable[None]]) -> int:
        async def start() -> int:
            srv = await asyncio.start_server(handler, "127.0.0.1", 0, limit=1 << 16)
            self._servers.append(srv)
            return int(srv.sockets[0].getsockname()[1])

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=10)

    def close(self) -> None:
        async def stop() -> None:
            for s in self._servers:
                s.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def start(**kwargs: object) -> tuple[Running, HostileServer, Sink]:
    """A hostile server whose redirects point at a sink, both running; close with `.close()`."""
    running = Running()
    sink = Sink()
    sink.port = running.serve(sink.handle)
    srv = HostileServer(redirect_to=sink.url, **kwargs)  # type: ignore[arg-type]
    srv.port = running.serve(srv.handle)
    return running, srv, sink


class FlakyWorkload:
    """A workload whose item `n` cannot be built for the numbers in `bad` (bad input on
    latbench's own side of a request: its record must say so, and its user go on)."""

    def __init__(self, bad: set[int]) -> None:
        self.inner = SyntheticWorkload(4, 3, seed=1)
        self.bad = bad

    def item(self, n: int) -> WorkItem:
        if n in self.bad:
            raise ValueError(f"item {n} is broken")
        return self.inner.item(n)

    def describe(self) -> dict[str, object]:
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--big", type=int, default=50 * _MiB)
    ap.add_argument("--models", type=int, default=1)
    args = ap.parse_args()

    async def serve() -> None:
        sink = Sink()
        s1 = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
        sink.port = s1.sockets[0].getsockname()[1]
        srv = HostileServer(redirect_to=sink.url, big=args.big, models=args.models)
        s2 = await asyncio.start_server(srv.handle, "127.0.0.1", args.port)
        srv.port = s2.sockets[0].getsockname()[1]
        print(srv.url, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
