"""The coordinator's side: the endpoint agents connect to, who they are, their clocks, and a
`Channel` per worker slot for the runner.

`AgentPool` serves `GET /v1/agents` (a WebSocket, `agents.protocol`) from its own aiohttp
AppRunner on the caller's event loop, the run's: the runner reads the agents' frames there as it
reads local workers' pipes, and the records it gets are the same objects either way. An agent is
taken only when its handshake proves the token for a fresh nonce (`protocol.Nonces`: the
proof compared in constant time, the nonce within two minutes of our wall clock and never seen
before; 401 otherwise, before the WebSocket opens), its hello names this latbench and protocol
version and an index nobody else holds (or none: the pool gives it the lowest free one), and
its clock has been measured (`protocol.PINGS` exchanges, the shortest round trip's offset). One
whose offset is uncertain beyond `max_uncertainty_ns` still runs, flagged, so that a run can say so.

`wait_for(n, deadline)` hands a run n idle agents (the lowest indexes, of a location if asked)
or raises `AgentError` saying how many came and which indexes are missing; `channels(agents)`
gives one `AgentChannel` per worker slot, slot-major (every agent's slot 0, then every agent's
slot 1, ...), so a run that needs fewer workers than there are slots still spreads over the
agents; `release` puts them back for the next run (the service), `finish` tells them their work
is over (`latbench run`: they exit 0).

An agent whose connection closes mid-run ends its channels' streams: the runner records their
in-flight requests `lost` with `describe_death`'s reason and goes on, as for a local worker
that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import monotonic_ns
from typing import Any

from aiohttp import WSMsgType, web

from latbench.agents.protocol import (
    HEARTBEAT_S,
    MAX_MESSAGE,
    NONCE_HEADER,
    PATH,
    PINGS,
    REFUSED_HEADER,
    ClockSample,
    Hello,
    Nonces,
    ProtocolError,
    best_sample,
    control,
    coordinator_proof,
    parse_control,
    parse_hello,
    sign,
)
from latbench.load.channel import describe_status
from latbench.load.wire import Origin
from latbench.shared.errors import LatbenchError

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
PONG_TIMEOUT_S = 5.0
DEFAULT_MAX_UNCERTAINTY_NS = 5_000_000  # 5 ms: far below any latency worth measuring remotely
MAX_REFUSALS = 20  # kept to explain a wait that failed; older ones are forgotten


class AgentError(LatbenchError):
    """Agents could not be had: too few came before the deadline, or the pool cannot listen."""


@dataclass(eq=False)
class AgentConn:
    """One registered agent: who it is, its clock, its connection."""

    hello: Hello
    index: int
    ws: web.WebSocketResponse
    token: str
    nonce: str  # the agent's, from its handshake: every shard's MAC is bound to it
    offset_ns: int = 0
    uncertainty_ns: int = 0
    rtt_ns: int = 0
    synced_ns: int = 0  # when the clock was last measured (this host's monotonic clock)
    connected_at: float = field(default_factory=time.time)  # Unix time, for listings
    flagged: bool = False
    busy: bool = False
    registered: bool = False
    closed: bool = False
    close_reason: str = "connection closed"
    origin: Origin | None = None
    slots: list[AgentChannel | None] = field(default_factory=list)
    exits: dict[int, int] = field(default_factory=dict)  # slot -> its worker's exit status
    errors: dict[int, str] = field(default_factory=dict)  # slot -> what it refused, and why
    _out: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    _pong: asyncio.Future[ClockSample] | None = None
    _ping_t1: int | None = None  # the ping in flight: a late pong to an older one is not its
    _writer: asyncio.Task[None] | None = None

    @property
    def location(self) -> str | None:
        return self.hello.location

    @property
    def host(self) -> str:
        return self.hello.host

    @property
    def workers(self) -> int:
        return self.hello.workers

    def describe(self) -> str:
        """How error lines name it: "agent 2 (host h, location eu)"."""
        where = f"host {self.host}" + (
            "" if self.location is None else f", location {self.location}"
        )
        return f"agent {self.index} ({where})"

    def to_dict(self) -> dict[str, Any]:
        """What results.json's "agents" says of it (a run adds its records and losses)."""
        return {
            "index": self.index,
            "location": self.location,
            "host": self.host,
            "pid": self.hello.pid,
            "workers": self.workers,
            "offset_ns": self.offset_ns,
            "uncertainty_ns": self.uncertainty_ns,
            "rtt_ns": self.rtt_ns,
            "flagged": self.flagged,
        }

    def send(self, message: str | bytes) -> None:
        """Queued for the connection's one writer, so messages leave in the order sent."""
        if not self.closed:
            self._out.put_nowait(message)

    async def _write(self) -> None:
        while (message := await self._out.get()) is not None:
            try:
                if isinstance(message, str):
                    await self.ws.send_str(message)
                else:
                    await self.ws.send_bytes(message)
            except (ConnectionError, RuntimeError) as e:  # closing: the reader sees it too
                log.debug("%s: send failed: %s", self.describe(), e)
                return

    async def measure(self, pings: int = PINGS) -> ClockSample:
        """The agent's clock against ours: `pings` exchanges, one at a time, the one with the
        shortest round trip. Changes nothing (`sync` keeps it). Raises TimeoutError when an
        answer does not come, ConnectionError when the connection closes."""
        samples = []
        loop = asyncio.get_running_loop()
        try:
            for _ in range(pings):
                self._pong = loop.create_future()
                t1 = self._ping_t1 = monotonic_ns()
                self.send(control("ping", t1))
                samples.append(await asyncio.wait_for(self._pong, PONG_TIMEOUT_S))
        finally:
            self._pong = None
        return best_sample(samples)

    async def sync(self, pings: int = PINGS) -> ClockSample:
        """Measure the agent's clock (`measure`) and keep the estimate: the offset, its bound
        and round trip that the next run's channels use and stamp its records with."""
        best = await self.measure(pings)
        self.offset_ns, self.uncertainty_ns, self.rtt_ns = (
            best.offset_ns,
            best.uncertainty_ns,
            best.rtt_ns,
        )
        self.synced_ns = monotonic_ns()
        self.origin = Origin(self.index, self.location, self.offset_ns, self.uncertainty_ns)
        self.send(control("clock", self.offset_ns, self.uncertainty_ns, self.rtt_ns))
        return best

    def _on_text(self, text: str, t3: int) -> None:
        m = parse_control(text)
        kind = m[0]
        if kind == "pong":
            pong = self._pong  # a pong with no ping in flight (after a timeout) is dropped
            if pong is not None and not pong.done() and len(m) == 3 and m[1] == self._ping_t1:
                if type(m[2]) is not int:
                    raise ProtocolError(f"a pong whose clock reading is {m[2]!r:.40}")
                pong.set_result(ClockSample(m[1], m[2], t3))
        elif kind == "exit" and len(m) == 3 and type(m[1]) is int and type(m[2]) is int:
            self.exits[m[1]] = m[2]
        elif kind == "error" and len(m) == 3 and type(m[1]) is int:
            self.errors[m[1]] = str(m[2])[:500]
            log.warning("%s slot %d: %s", self.describe(), m[1], m[2])
        else:
            log.debug("%s: ignored %s", self.describe(), text[:80])

    def _on_binary(self, data: bytes) -> None:
        slot = data[0] if data else -1
        channel = self.slots[slot] if 0 <= slot < len(self.slots) else None
        if channel is None:
            return  # a slot no run is using (a late frame of a run that ended): nothing to do
        channel._deliver(data[1:] if len(data) > 1 else None)

    def _lost(self) -> None:
        """The connection closed: every slot's stream ends, and the runner records its
        in-flight requests as lost."""
        self.closed = True
        self._out.put_nowait(None)
        for channel in self.slots:
            if channel is not None:
                channel._deliver(None)
        if self._pong is not None and not self._pong.done():
            self._pong.set_exception(ConnectionError(self.close_reason))


class AgentChannel:
    """One worker slot of an agent, as the runner's `load.channel.Channel`."""

    def __init__(self, conn: AgentConn, slot: int) -> None:
        self.conn = conn
        self.slot = slot
        self._prefix = bytes([slot])
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._ended = asyncio.Event()
        self._closed = False

    @property
    def agent(self) -> int:
        return self.conn.index

    @property
    def location(self) -> str | None:
        return self.conn.location

    @property
    def offset_ns(self) -> int:
        return self.conn.offset_ns

    @property
    def uncertainty_ns(self) -> int:
        return self.conn.uncertainty_ns

    @property
    def rtt_ns(self) -> int:
        return self.conn.rtt_ns

    @property
    def origin(self) -> Origin | None:
        return self.conn.origin

    @property
    def who(self) -> str:
        return self.conn.describe()

    def _deliver(self, payload: bytes | None) -> None:
        if self._ended.is_set():
            return
        self._inbox.put_nowait(payload)
        if payload is None:
            self._ended.set()

    def send_shard(self, pickled: bytes) -> None:
        self.conn.send(self._prefix + sign(self.conn.token, self.conn.nonce, self.slot, pickled))

    def send(self, payload: bytes) -> None:
        if not self._closed:
            self.conn.send(self._prefix + payload)

    async def recv(self) -> bytes | None:
        return await self._inbox.get()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.send(self._prefix)  # the slot byte alone: the end of the stream

    async def wait_closed(self) -> None:
        """Until the agent says the slot's worker is gone (it aborts on the end of its stream,
        and the agent kills one that hangs), or the connection closed; at most 10 s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), 10.0)

    async def describe_death(self) -> str:
        conn = self.conn
        if self.slot in conn.errors:
            return f"{conn.describe()} worker {self.slot} refused: {conn.errors[self.slot]}"
        if conn.closed:
            return f"{conn.describe()} lost: {conn.close_reason}"
        # The exit message comes just before the stream's end, so it is here already.
        status = conn.exits.get(self.slot)
        how = "its stream ended" if status is None else describe_status(status)
        return f"{conn.describe()} worker {self.slot} died ({how})"


class AgentPool:
    """The agents' endpoint and registry, on the running loop. `start()` before use, `close()`
    after (or `async with`). `host`/`port` are where it listens (port 0: any free port; `port`
    is the bound one after `start`)."""

    def __init__(
        self,
        token: str,
        host: str = "0.0.0.0",
        port: int = 8790,
        *,
        max_uncertainty_ns: int = DEFAULT_MAX_UNCERTAINTY_NS,
        pings: int = PINGS,
        keep_agents: bool = False,
    ) -> None:
        self.token = token
        # A service's pool: its agents stay between runs and connect again when they lose it
        # (the welcome tells them), where a `latbench run`'s agents end with the run.
        self.keep_agents = keep_agents
        self.host = host
        self.port = port
        self.max_uncertainty_ns = max_uncertainty_ns
        self.pings = pings
        self.agents: dict[int, AgentConn] = {}  # registered (clock measured), by index
        self._claimed: dict[int, AgentConn] = {}  # indexes taken, clocks maybe not yet measured
        self.refusals: list[str] = []  # why connections were turned away, newest last
        self._nonces = Nonces()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.started = 0.0  # when it began listening, a time.monotonic() instant

    async def __aenter__(self) -> AgentPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """Where agents connect, as `latbench agent --coordinator` takes it."""
        # Listening on every interface: this host's name is what an agent elsewhere dials.
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"ws://{host}:{self.port}{PATH}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise AgentError(
                f"cannot listen for agents on {self.host}:{self.port}: {e.strerror or e}"
            ) from None
        self._runner = runner
        self.started = time.monotonic()
        server = site._server  # the bound port, when asked for port 0
        if server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Close every agent's connection and stop listening."""
        for conn in list(self._claimed.values()):
            conn.close_reason = "the coordinator closed"
            with contextlib.suppress(Exception):
                await conn.ws.close(message=b"coordinator closing")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _refuse(self, why: str) -> None:
        self.refusals.append(why)
        del self.refusals[:-MAX_REFUSALS]
        log.warning("agent refused: %s", why)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The `GET /v1/agents` handler: `start()` serves it on its own listener; a server with
        an aiohttp app of its own (the service) may route PATH to it instead."""
        peer = request.remote or "?"
        nonce = request.headers.get(NONCE_HEADER)
        why = self._nonces.check(request.headers.get("Authorization"), nonce, self.token)
        if why is not None:
            wrong = why == "the agent token is missing or wrong"
            self._refuse(f"a connection from {peer} without the agent token" if wrong else why)
            return web.Response(
                status=401,
                text=f"{why}\n",
                # The agent reads why off this header: a handshake's body is not handed to it.
                headers={"WWW-Authenticate": 'Bearer realm="latbench agents"', REFUSED_HEADER: why},
            )
        assert nonce is not None  # checked
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, compress=False, heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        conn = await self._admit(ws, peer, nonce)
        if conn is None:
            await ws.close()
            return ws
        conn._writer = asyncio.create_task(conn._write())
        proof = coordinator_proof(self.token, nonce)
        conn.send(
            control("welcome", {"index": conn.index, "stay": self.keep_agents, "proof": proof})
        )
        registering = asyncio.create_task(self._register(conn))
        try:
            while True:
                msg = await ws.receive()
                t3 = monotonic_ns()
                if msg.type == WSMsgType.BINARY:
                    conn._on_binary(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        conn._on_text(msg.data, t3)
                    except ProtocolError as e:
                        log.warning("%s: %s", conn.describe(), e)
                elif msg.type == WSMsgType.CLOSE:
                    if msg.extra:  # the agent said why it hung up
                        conn.close_reason = f"connection closed ({msg.extra})"
                    break
                elif msg.type == WSMsgType.ERROR:
                    conn.close_reason = f"connection error: {ws.exception()}"
                    break
                else:  # CLOSING, CLOSED: closed from this side
                    break
        finally:
            if ws.close_code not in (None, 1000) and conn.close_reason == "connection closed":
                conn.close_reason = f"connection closed (code {ws.close_code})"
            registering.cancel()
            conn._lost()
            await self._forget(conn)
        return ws

    async def _admit(self, ws: web.WebSocketResponse, peer: str, nonce: str) -> AgentConn | None:
        """The hello, checked; the agent's index claimed. None (after telling the agent why)
        when it is refused."""
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            self._refuse(f"{peer} sent no hello within {HELLO_TIMEOUT_S:g} s")
            return None
        try:
            if msg.type != WSMsgType.TEXT:
                raise ProtocolError("expected a hello first")
            hello = parse_hello(parse_control(msg.data))
        except ProtocolError as e:
            self._refuse(f"{peer}: {e}")
            with contextlib.suppress(ConnectionError, RuntimeError):  # it may have gone
                await ws.send_str(control("refused", str(e)))
            return None
        index = hello.index
        if index is None:
            index = next(i for i in range(len(self._claimed) + 1) if i not in self._claimed)
        elif index in self._claimed:
            other = self._claimed[index]
            why = (
                f"index {index} is already taken by the agent on host {other.host} "
                f"(pid {other.hello.pid})"
            )
            self._refuse(f"{peer} ({hello.host}): {why}")
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(control("refused", why))
            return None
        conn = AgentConn(hello=hello, index=index, ws=ws, token=self.token, nonce=nonce)
        self._claimed[index] = conn
        return conn

    async def _register(self, conn: AgentConn) -> None:
        """Measure its clock, then count it in."""
        try:
            best = await conn.sync(self.pings)
        except (TimeoutError, ConnectionError) as e:
            why = f"{conn.describe()}: its clock could not be measured ({e or 'no answer'})"
            self._refuse(why)
            await conn.ws.close(message=b"clock not measured")
            return
        conn.flagged = best.uncertainty_ns > self.max_uncertainty_ns
        if conn.flagged:
            log.warning(
                "%s: clock offset uncertain by %.3g ms, over the %.3g ms limit",
                conn.describe(),
                best.uncertainty_ns / 1e6,
                self.max_uncertainty_ns / 1e6,
            )
        conn.registered = True
        async with self._changed:
            self.agents[conn.index] = conn
            self._changed.notify_all()

    async def _forget(self, conn: AgentConn) -> None:
        if self._claimed.get(conn.index) is conn:
            del self._claimed[conn.index]
        async with self._changed:
            if self.agents.get(conn.index) is conn:
                del self.agents[conn.index]
            self._changed.notify_all()
        if conn._writer is not None:
            conn._writer.cancel()

    def _idle(self, location: str | None) -> list[AgentConn]:
        return sorted(
            (
                a
                for a in self.agents.values()
                if not a.busy and not a.closed and (location is None or a.location == location)
            ),
            key=lambda a: a.index,
        )

    async def wait_for(
        self, n: int, deadline: float, location: str | None = None
    ) -> list[AgentConn]:
        """n idle registered agents (of `location`, if given), the lowest indexes first, marked
        busy until `release`d; waits until `deadline`, a `time.monotonic()` instant, then raises
        AgentError naming how many came and which of the indexes 0..n-1 are missing."""
        if n < 1:
            raise ValueError(f"wait for {n} agents: give 1 or more")
        async with self._changed:
            while len(idle := self._idle(location)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AgentError(self._shortfall(n, idle, location))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
            chosen = idle[:n]
            for a in chosen:
                a.busy = True
            return chosen

    def _shortfall(self, n: int, idle: list[AgentConn], location: str | None) -> str:
        where = "" if location is None else f" in location {location!r}"
        have = {a.index for a in idle}
        missing = [i for i in range(n) if i not in have]
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        text = f"{len(idle)} of {n} agents{where} registered in time; missing index {shown}"
        if have:
            text += f" (registered: {', '.join(map(str, sorted(have)))})"
        busy = [a.index for a in self.agents.values() if a.busy]
        if busy:
            text += f"; busy with another run: {', '.join(map(str, sorted(busy)))}"
        if self.refusals:
            text += f"; refused: {'; '.join(self.refusals[-3:])}"
        return (
            text + f". Start them with: latbench agent --coordinator {self.url} "
            "--token-file FILE (the same token)"
        )

    def release(self, agents: Sequence[AgentConn]) -> None:
        """Back to idle, for the next run."""
        for a in agents:
            a.busy = False
            a.slots = []

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(notify())

    def channels(self, agents: Sequence[AgentConn]) -> list[AgentChannel]:
        """A fresh channel per worker slot of each agent, slot-major: every agent's slot 0
        first, then every agent's slot 1, ..., so the first W spread over the agents."""
        for a in agents:
            a.slots = [AgentChannel(a, k) for k in range(a.workers)]
            a.exits.clear()
            a.errors.clear()
        most = max((a.workers for a in agents), default=0)
        return [
            ch
            for k in range(most)
            for a in agents
            if k < a.workers and (ch := a.slots[k]) is not None
        ]

    async def resync(self, agents: Sequence[AgentConn]) -> None:
        """Measure their clocks again (between runs: monotonic clocks drift apart)."""
        for a in agents:
            try:
                best = await a.sync(self.pings)
            except (ConnectionError, TimeoutError) as e:
                # A run cannot start on an agent that is gone: said as such, not as a crash.
                why = str(e) or type(e).__name__
                raise AgentError(
                    f"{a.describe()} went away while its clock was measured: {why}"
                ) from None
            a.flagged = best.uncertainty_ns > self.max_uncertainty_ns

    async def finish(self, agents: Sequence[AgentConn], timeout: float = 10.0) -> None:
        """Tell each agent its work is over (it exits 0) and wait for it to hang up."""
        for a in agents:
            a.send(control("done"))
        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: all(a.closed for a in agents)), timeout
                )
