"""The agent's side: connect to a coordinator, prove the token, answer its clock pings, and run
the shards it sends on local worker processes, relaying their frames.

An agent is the runner's worker at a distance. It never sends the token: each connection gets
a fresh nonce and a proof made with the token (`protocol.auth_headers`), and the coordinator's
welcome must prove the token for that nonce in turn, or the agent hangs up (a server it was
pointed at by mistake, or one posing as the coordinator, is told nothing it can use). For each
of its `workers` slots it waits for a signed shard, checks the signature (`protocol.verify`,
with this connection's nonce and the slot: nothing unpickles a shard the token did not sign for
them), starts `python -m latbench.load.worker` (the same code a local run starts), writes it
the shard, and from then on copies frames both ways: the coordinator's `go`, `stop`, `abort`,
`overtime` to the worker's stdin, the worker's `ready`, `s`, `h`, records and `end` to the
WebSocket, each prefixed by its slot. The target, the workload, the load: all of it is in the
shard, which only the coordinator can have signed; the agent takes no target from anywhere else.

The coordinator may come up before or after its agents (a Kubernetes Job starts them in any
order), so the agent retries its connection with backoff until `connect_timeout`. A token the
coordinator refuses (401) is not retried. `["done"]` ends the agent with exit 0; a connection
that closes otherwise ends it with exit 1, after aborting any worker still running (with nobody
to take its records, its requests would be load nobody measures). A service's pool welcomes its
agents with `stay`: such an agent outlives its runs and its connection, connecting again (with
the same backoff, for up to `connect_timeout` each outage) when the service restarts or the
network drops it, so a long-lived probe agent needs no supervisor to come back.

Clock skew for tests (`protocol.SKEW_ENV`): the agent adds it to every clock reading it reports
(pongs, the instants in its workers' frames) and takes it off the instants it is sent (`go`,
`overtime`), as an agent whose clock is that far from the coordinator's would; the coordinator
must measure it and take it off again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any

import aiohttp
import orjson

from latbench.agents.protocol import (
    HEARTBEAT_S,
    MAX_MESSAGE,
    REFUSED_HEADER,
    SKEW_ENV,
    ProtocolError,
    auth_headers,
    control,
    coordinator_proven,
    hello,
    make_nonce,
    parse_control,
    verify,
)
from latbench.load.channel import describe_status, reap, start_worker_process
from latbench.load.wire import frame, read_frame, shift_instants
from latbench.shared.errors import LatbenchError

WELCOME_TIMEOUT_S = 30.0
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0


class AgentExit(LatbenchError):
    """The agent cannot go on; the message says why (the token refused, the coordinator gone)."""


@dataclass(frozen=True)
class AgentOptions:
    coordinator: str  # a WebSocket URL (protocol.coordinator_url)
    token: str
    index: int | None = None
    location: str | None = None
    workers: int = 1
    connect_timeout: float = 120.0


def clock_skew_ns() -> int:
    """The test-only skew (`protocol.SKEW_ENV`), 0 when unset."""
    text = os.environ.get(SKEW_ENV, "").strip()
    try:
        return int(text) if text else 0
    except ValueError:
        raise AgentExit(f"{SKEW_ENV}={text!r}: give an integer number of nanoseconds") from None


class _Slot:
    """One worker slot: idle until a shard comes, then one worker process, relayed."""

    def __init__(self, agent: Agent, index: int) -> None:
        self.agent = agent
        self.index = index
        self.prefix = bytes([index])
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.proc: asyncio.subprocess.Process | None = None
        self.relay: asyncio.Task[None] | None = None
        self.task = asyncio.create_task(self._run())

    @property
    def running(self) -> bool:
        return self.relay is not None and not self.relay.done()

    async def _run(self) -> None:
        """Messages for this slot, in order: a shard starts a worker; what follows goes to its
        stdin; the slot byte alone closes it and, once the worker is gone, the slot is idle."""
        while True:
            data = await self.inbox.get()
            if self.proc is None:
                if data:
                    await self._start(data)
                continue
            if not data:
                await self.stop()
                continue
            if self.agent.skew:
                m = orjson.loads(data)
                shift_instants(m, -self.agent.skew)  # the coordinator's idea of our clock
                data = orjson.dumps(m)
            stdin = self.proc.stdin
            if stdin is not None and not stdin.is_closing():
                stdin.write(frame(data))

    async def _start(self, signed: bytes) -> None:
        try:
            shard = verify(self.agent.options.token, self.agent.nonce, self.index, signed)
        except ProtocolError as e:
            self.agent.say(f"slot {self.index}: {e}")
            self.agent.send(control("error", self.index, str(e)))
            self.agent.send(self.prefix)
            return
        try:
            self.proc = await start_worker_process()
        except OSError as e:  # out of processes or memory: the runner hears why, not silence
            why = f"cannot start a worker process: {e}"
            self.agent.say(f"slot {self.index}: {why}")
            self.agent.send(control("error", self.index, why))
            self.agent.send(self.prefix)
            return
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame(shard))
        self.relay = asyncio.create_task(self._relay(self.proc))

    async def _relay(self, proc: asyncio.subprocess.Process) -> None:
        """The worker's frames to the coordinator until its stdout ends; then how it exited."""
        assert proc.stdout is not None
        skew = self.agent.skew
        with contextlib.suppress(ConnectionError):
            while (data := await read_frame(proc.stdout)) is not None:
                if skew:
                    m = orjson.loads(data)
                    shift_instants(m, skew)
                    data = orjson.dumps(m)
                self.agent.send(self.prefix + data)
        status = await reap(proc)
        self.agent.send(control("exit", self.index, status))
        self.agent.send(self.prefix)
        if status != 0:
            self.agent.say(
                f"slot {self.index}: worker pid {proc.pid} ended ({describe_status(status)})"
            )

    async def stop(self) -> None:
        """Close the worker's stdin (an abort, if it still runs) and wait until it is gone."""
        proc, relay = self.proc, self.relay
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        if relay is not None:
            await relay
        self.proc = self.relay = None


class Agent:
    """One connection to a coordinator, and the slots it runs. `run()` returns when the
    coordinator says `done`; raises AgentExit otherwise."""

    def __init__(self, options: AgentOptions, say: Callable[[str], None]) -> None:
        self.options = options
        self.say = say
        self.skew = clock_skew_ns()
        self.index: int | None = None
        self.nonce = ""  # this connection's, which the coordinator's proofs and shards are bound to
        self.stay = False  # the coordinator keeps its agents (a service): connect again on loss
        # Why the agent is stopping on its own (a signal), told to the coordinator as it hangs up.
        self.stop_reason: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._out: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._slots: list[_Slot] = []

    def now(self) -> int:
        return monotonic_ns() + self.skew

    def send(self, message: str | bytes) -> None:
        self._out.put_nowait(message)

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while (message := await self._out.get()) is not None:
            try:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
            except (ConnectionError, RuntimeError):
                return  # closing: the reader finds out why

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            deadline = time.monotonic() + self.options.connect_timeout
            wait = BACKOFF_MIN_S
            while True:
                ws = await self._connect(session, deadline)
                self.index = None  # until this connection's welcome
                try:
                    await self._connection(ws)
                    return
                except AgentExit as e:
                    if not self.stay or self.stop_reason is not None:
                        raise
                    lost = str(e)
                if self.index is not None:  # it was welcomed: a new outage, with time of its own
                    deadline = time.monotonic() + self.options.connect_timeout
                    wait = BACKOFF_MIN_S
                elif time.monotonic() >= deadline:  # refused again and again since the last one
                    raise AgentExit(f"{lost}; gave up after --connect-timeout")
                self.say(f"{lost}; connecting again (its coordinator keeps its agents)")
                # Jittered, so that a service's agents do not all knock in the same instant.
                await asyncio.sleep(wait * random.uniform(0.5, 1.0))
                wait = min(wait * 2, BACKOFF_MAX_S)

    async def _connection(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """One connection's life: serve it, then stop its workers, whatever ended it."""
        self._out = asyncio.Queue()
        writer = asyncio.create_task(self._write(ws))
        try:
            await self._serve(ws)
        except ProtocolError as e:  # a message that is not JSON, or not a named array
            raise AgentExit(f"the coordinator sent {e}") from None
        finally:
            running = [s for s in self._slots if s.running]
            # What the workers sent so far leaves first; then the connection closes, before
            # the workers are aborted, so that the coordinator records what they had in
            # flight as lost with the reason, not as requests its run cancelled.
            self._out.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, 5)
            reason = self.stop_reason or "the agent is done"
            with contextlib.suppress(Exception):
                await ws.close(
                    code=1001 if self.stop_reason else 1000, message=reason.encode()[:120]
                )
            await asyncio.gather(*(s.stop() for s in self._slots), return_exceptions=True)
            for s in self._slots:
                s.task.cancel()
            if running:
                self.say(f"aborted the {len(running)} worker(s) still running")

    async def _connect(
        self, session: aiohttp.ClientSession, deadline: float
    ) -> aiohttp.ClientWebSocketResponse:
        """The WebSocket, retried with backoff (and jitter, so a Job's agents do not knock in
        step) until `deadline` (a `time.monotonic()` instant); a refused token is final."""
        o = self.options
        wait = BACKOFF_MIN_S
        last = ""
        tries = 0
        while True:
            nonce = make_nonce()  # one per try: the coordinator refuses one it has seen
            try:
                ws = await session.ws_connect(
                    o.coordinator,
                    headers=auth_headers(o.token, nonce),
                    max_msg_size=MAX_MESSAGE,
                    heartbeat=HEARTBEAT_S,
                    compress=0,
                )
                self.nonce = nonce
                return ws
            except aiohttp.WSServerHandshakeError as e:
                if e.status == 401:
                    why = (e.headers or {}).get(REFUSED_HEADER, "")
                    if why and why != "the agent token is missing or wrong":
                        raise AgentExit(
                            f"the coordinator refused this agent ({o.coordinator}: 401): {why}"
                        ) from None
                    raise AgentExit(
                        f"the coordinator refused the token ({o.coordinator}: 401); give the "
                        "token its --agent-token-file holds"
                    ) from None
                if e.status == 404:
                    raise AgentExit(
                        f"{o.coordinator} is not a latbench coordinator's agent endpoint (404)"
                    ) from None
                last = f"HTTP {e.status}"
            except (aiohttp.ClientError, OSError) as e:
                last = str(e) or type(e).__name__
            left = deadline - time.monotonic()
            if not tries:
                self.say(f"waiting for the coordinator at {o.coordinator} ({last})")
            tries += 1
            if left <= 0:
                raise AgentExit(
                    f"no coordinator at {o.coordinator} within {o.connect_timeout:g} s "
                    f"(--connect-timeout); the last try: {last}"
                )
            await asyncio.sleep(min(left, wait * random.uniform(0.5, 1.0)))
            wait = min(wait * 2, BACKOFF_MAX_S)

    def _control(self, text: str) -> bool:
        """Act on a control message after the welcome; True when it ends the connection (done).
        One that is not what this version of the coordinator sends is an AgentExit naming it:
        the coordinator runs the same version, so it is a fault or not a coordinator at all,
        and guessing at it could only run the wrong thing."""
        m = parse_control(text)  # a ProtocolError: _connection makes it the AgentExit
        if m[0] == "ping" and _numbers(m, 1):
            self.send(control("pong", m[1], self.now()))
        elif m[0] == "clock" and _numbers(m, 3):
            self.say(
                f"clock offset {m[1] / 1e6:+.3f} ms, uncertain by {m[2] / 1e6:.3f} ms "
                f"(round trip {m[3] / 1e6:.3f} ms)"
            )
        elif m == ["done"]:
            self.say("the coordinator is done")
            return True
        else:
            raise AgentExit(
                f"the coordinator sent a control message this agent does not know: {text[:80]!r}"
            )
        return False

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        o = self.options
        await ws.send_str(control("hello", hello(o.index, o.location, o.workers).to_dict()))
        try:
            first = await ws.receive(timeout=WELCOME_TIMEOUT_S)
        except TimeoutError:
            raise AgentExit(
                f"the coordinator did not answer the hello within {WELCOME_TIMEOUT_S:g} s"
            ) from None
        if first.type != aiohttp.WSMsgType.TEXT:
            raise AgentExit(
                "the coordinator closed the connection before welcoming this agent "
                f"({first.type.name})"
            )
        m = parse_control(first.data)
        if m[0] == "refused":
            raise AgentExit(f"the coordinator refused this agent: {m[1] if len(m) > 1 else '?'}")
        if m[0] != "welcome" or len(m) != 2 or not isinstance(m[1], dict):
            raise AgentExit(f"the coordinator answered the hello with {first.data[:80]!r}")
        if not coordinator_proven(m[1].get("proof"), o.token, self.nonce):
            raise AgentExit(
                f"{o.coordinator} did not prove it holds the token: it is not the coordinator "
                "(a wrong --coordinator, or someone posing as it); nothing it sent was run"
            )
        self.index = m[1].get("index")
        self.stay = self.stay or m[1].get("stay") is True
        where = "" if o.location is None else f", location {o.location}"
        stays = "; it stays between runs" if self.stay else ""
        self.say(
            f"connected to {o.coordinator} as agent {self.index}{where}, {o.workers} worker "
            f"slot(s){stays}"
        )
        self._ws = ws
        self._slots = [_Slot(self, k) for k in range(o.workers)]
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                data = msg.data
                if data and data[0] < len(self._slots):
                    self._slots[data[0]].inbox.put_nowait(data[1:])
            elif msg.type == aiohttp.WSMsgType.TEXT and self._control(msg.data):
                return
            elif msg.type == aiohttp.WSMsgType.ERROR:
                break
        busy = any(s.running for s in self._slots)
        why = f"code {ws.close_code}" if ws.exception() is None else str(ws.exception())
        if busy:
            raise AgentExit(f"the coordinator went away mid-run ({why}); its workers are aborted")
        raise AgentExit(f"the coordinator closed the connection ({why})")


def _numbers(m: list[Any], n: int) -> bool:
    """`m` is a name and then `n` numbers (a JSON true decodes to a bool, which is an int)."""
    return len(m) == n + 1 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in m[1:]
    )


async def run_agent(options: AgentOptions, say: Callable[[str], None]) -> None:
    """Serve one coordinator until it says done (returns) or goes away (AgentExit); to stop it
    from outside, make an `Agent`, set its `stop_reason` and cancel its `run()`."""
    await Agent(options, say).run()
