"""A TCP proxy that adds a fixed delay to one direction, for tests of latency seen from far away.

The kernel here has no `netem` qdisc, so a network path's extra latency is made in user space: the
proxy listens on loopback, opens a connection to `upstream` for each client, copies bytes both
ways, and holds every chunk it reads from upstream for `delay_s` before writing it to the client
(chunks stay in order, and a chunk read while others wait is not delayed twice: a path's
latency, not its bandwidth). Client-to-upstream bytes pass at once, so a request reaches the
server on time and its answer comes back `delay_s` late: the TTFT the client measures grows by
`delay_s`, as for a client one `delay_s` further away downstream.

It runs its own asyncio loop in a thread, so synchronous tests can start and stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CHUNK = 65536


class DelayProxy:
    """`start()` listens on 127.0.0.1 (any free port: `url`, `port`); `stop()` closes it and
    every connection. `connections` counts the clients it has served."""

    def __init__(self, upstream_host: str, upstream_port: int, delay_s: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DelayProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = fut.result(timeout=10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._copy(client_r, up_w, 0.0), self._copy(up_r, client_w, self.delay_s)
            )
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (client_w, up_w):
                w.close()
            self._tasks.discard(task)

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
    ) -> None:
        """Copy until EOF, each chunk written `delay_s` after it was read (in order)."""
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(CHUNK):
                    held.put_nowait((loop.time() + delay_s, data))
            except ConnectionError:
                pass
            finally:  # the end (or a reset) passes on, after what came before it
                held.put_nowait((loop.time() + delay_s, b""))

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await held.get()
                # The delay itself, not a test waiting on something: what this proxy is for.
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        finally:
            reading.cancel()


@contextmanager
def delay_proxy(upstream_url: str, delay_s: float) -> Iterator[DelayProxy]:
    """A DelayProxy in front of `upstream_url` (http://HOST:PORT), stopped on the way out."""
    host, _, port = upstream_url.removeprefix("http://").split("/", 1)[0].rpartition(":")
    proxy = DelayProxy(host.strip("[]"), int(port), delay_s).start()
    try:
        yield proxy
    finally:
        proxy.stop()
