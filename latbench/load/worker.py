"""A worker: one shard of a run's schedule, on its own event loop, in its own process.

A run with W workers splits its schedule by request number: worker k sends the requests
n = k, k + W, k + 2W, ... Open loop, request n still leaves at `start + pacer.offset_ns(n)`, so
the W shards together send exactly the single-process schedule; closed loop, worker k runs every
W-th user and numbers its requests the same way. Every worker reads CLOCK_MONOTONIC, which all
processes on a machine share, so instants from different workers compare directly. A session
workload (workload/session.py) splits by session instead: worker k runs the sessions s = k,
k + W, ..., each as one task on one connection where it can (load/affinity.py), and numbers its
requests k, k + W, ... as it sends them (`ShardRun._session`).

A shard (`Shard`) holds everything its worker needs and nothing of the parent's, and the worker
talks to the parent only through frames on a byte stream (`load.wire`): the same shard could run in
another process or, over a socket, on another machine (its instants would then need the offset
between the two machines' monotonic clocks, which the `go` frame is the place to carry).

The worker keeps nothing once a record is sent: records go to the parent as they finish, the
parent owns the sinks, the exporter and the run's records.

Protocol, parent -> worker: the pickled `Shard`, then `["go", start_ns]`, then at most `["stop"]`
and `["abort"]` or `["overtime", duration_end_ns]` (an abort whose cut records are `overtime`,
not `cancelled`); the end of the stream means abort (the parent died). Worker -> parent:
`["ready"]`, then for every request `["s", seq, t_intended, t_sent, phase]` once it is sent (at
the end of the loop turn that sent it, always before its record) and its record
(`load.wire.pack_record`) when it ends, heartbeats `["h", inflight, lag_ticks, lag_samples]`,
and last `["end", cpu_s, wall_s, unsent]`. The `s` frames let the parent record a request as
`lost` if this process dies with it in flight.

Whatever goes wrong inside one request's path (the workload's item, building the body, a record
that cannot be encoded) becomes that request's record, `client_error` with a detail: a closed-
loop user never vanishes, and the parent always hears how each sent request ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from time import monotonic_ns

import aiohttp
import orjson

from latbench.client.looplag import LoopLagMonitor
from latbench.client.reads import StampingConnector
from latbench.client.stream import Endpoint, stream_request
from latbench.load import pacers
from latbench.load.affinity import SESSION, Affinity, SessionConnector
from latbench.load.eager import install as install_eager_writes
from latbench.load.pacers import ConstantPacer, Pacer, PoissonPacer, phase_of, shaped_pacer
from latbench.load.wire import message, pack_record, read_frame, unsendable
from latbench.records.record import Phase, Record
from latbench.shared import rxstamp
from latbench.shared.errors import ErrorKind
from latbench.spec import LoadSpec
from latbench.workload import WorkItem, Workload
from latbench.workload.session import Conversation, SessionWorkload

HEARTBEAT_S = 0.1  # how stale the parent's in-flight count and live lag histogram may be


def make_pacer(load: LoadSpec, seed: int, workload: object = None) -> Pacer | None:
    if load.mode == "trace":  # the trace's own instants, from its rows (workload/trace.py)
        return pacers.trace_pacer(workload)
    if load.mode == "constant":
        assert load.rate is not None
        return ConstantPacer(load.rate)
    if load.mode == "poisson":
        assert load.rate is not None
        return PoissonPacer(load.rate, burstiness=load.burstiness, seed=seed)
    if load.mode in ("ramp", "steps"):
        return shaped_pacer(load, seed)
    return None


def raise_fd_limit() -> None:
    """One socket per in-flight stream: thousands of streams need more than the usual 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def split(total: int, parts: int, index: int) -> int:
    """Share `index` of `total` split as evenly as possible into `parts`."""
    return total // parts + (1 if index < total % parts else 0)


@dataclass(frozen=True)
class Shard:
    run_id: str
    index: int  # k: this shard sends requests n = k (mod count)
    count: int  # W
    endpoint: Endpoint
    workload: Workload | SessionWorkload
    load: LoadSpec
    seed: int = 0
    verify_tls: bool = True

    @property
    def users(self) -> int:
        """Closed loop: how many of the run's users this shard runs."""
        assert self.load.concurrency is not None
        return split(self.load.concurrency, self.count, self.index)

    @property
    def cap(self) -> int | None:
        """Open loop: this shard's part of the in-flight cap (None: no cap)."""
        c = self.load.concurrency
        return None if c is None else split(c, self.count, self.index)

    def connector(self) -> aiohttp.TCPConnector:
        # aiohttp's default pool (100) would silently cap concurrency; size it from the load.
        limit = (self.users if not self.load.open_loop else self.cap) or 0
        # A session's turns keep to one connection where they can (load/affinity.py).
        kind = SessionConnector if isinstance(self.workload, SessionWorkload) else StampingConnector
        return kind(
            limit=limit, limit_per_host=0, ssl=None if self.verify_tls else False, ttl_dns_cache=300
        )


class ShardRun:
    """Sends one shard's requests on schedule and hands each finished record to `emit`;
    `on_send(seq, t_intended, t_sent, phase)` hears of each request as it goes out."""

    def __init__(
        self,
        shard: Shard,
        emit: Callable[[Record], None],
        on_send: Callable[[int, int, int, Phase], None] | None = None,
    ) -> None:
        self.shard = shard
        self.emit = emit
        self.on_send = on_send
        self.inflight = 0
        self.unsent = 0
        self.start = 0
        self._stopping = False
        self._aborted = False
        self._duration_end: int | None = None  # set when the overtime ran out
        self._tasks: set[asyncio.Task[None]] = set()
        # Sessions: this worker's next request number (k, k + W, ...), taken as each is sent,
        # and what wakes sessions waiting out a think time when the run stops.
        self._seq = shard.index
        self._wake: asyncio.Event | None = None
        # Sessions: the worker's share of `load.requests` not yet reserved or sent (None: no
        # such budget), whether a session found it too short, and how many have started.
        ld = shard.load
        self._left = None if ld.requests is None else split(ld.requests, shard.count, shard.index)
        self._full = False
        self._sessions = 0

    def stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def abort(self) -> None:
        self.stop()
        self._aborted = True
        for t in list(self._tasks):
            t.cancel()

    def overtime(self, duration_end_ns: int) -> None:
        """The run's duration ended `load.overtime` ago: cancel what is still in flight, recorded
        as `overtime` (the server did not finish in time), not `cancelled`. After an abort there
        is nothing left to cut: its records stay `cancelled`."""
        if not self._aborted:
            self._duration_end = duration_end_ns
        self.abort()

    async def run(self, session: aiohttp.ClientSession, start: int) -> None:
        self.start = start
        self._wake = asyncio.Event()
        if self._stopping:
            self._wake.set()
        pacer = make_pacer(self.shard.load, self.shard.seed, self.shard.workload)
        sessions = isinstance(self.shard.workload, SessionWorkload)
        if pacer is None:
            await (self._closed_sessions if sessions else self._closed_loop)(session)
        elif sessions:
            await self._open_sessions(session, pacer)
        else:
            await self._open_loop(session, pacer)

    def _phase(self, n: int, offset_ns: int) -> str:
        ld = self.shard.load
        return phase_of(
            n,
            offset_ns,
            warmup_s=ld.warmup,
            cooldown_s=ld.cooldown,
            warmup_requests=ld.warmup_requests,
            cooldown_requests=ld.cooldown_requests,
            duration_s=ld.duration,
            total_requests=ld.requests,
        )

    def _out_of_budget(self, n: int, offset_ns: int) -> bool:
        ld = self.shard.load
        if ld.requests is not None and n >= ld.requests:
            return True
        return ld.duration is not None and offset_ns >= ld.duration * 1e9

    def _item(self, n: int) -> WorkItem | Exception:
        """Request n's item, built ahead of its instant (see `_one`); what it raised, if it
        raised, to become the request's record."""
        try:
            return self.shard.workload.item(n)  # type: ignore[union-attr]
        except Exception as e:
            return e

    async def _one(
        self,
        session: aiohttp.ClientSession,
        n: int,
        t_intended: int,
        item: WorkItem | Exception,
        keep: list[bytes] | None = None,
        place: tuple[int, int] | None = None,
    ) -> Record:
        """Request n, sent and read: its record, not yet emitted. `item` was built before
        t_intended (the client's own work ahead of the schedule is no send lag: an item with two
        1024x1024 images takes 32 ms to encode); an exception raised building it becomes the
        record. `keep` receives the reply's event payloads; `place` is the (session, turn) a
        record of a request that never got an answer still belongs to."""
        sh = self.shard
        phase: Phase = self._phase(n, t_intended - self.start)  # type: ignore[assignment]
        self.inflight += 1
        t_sent = monotonic_ns()
        try:
            if self.on_send is not None:
                self.on_send(n, t_intended, t_sent, phase)
            if isinstance(item, Exception):
                raise item
            rec = await stream_request(
                session, sh.endpoint, item, run_id=sh.run_id, seq=n, phase=phase,
                t_intended=t_intended, keep=keep,
            )  # fmt: skip
        except Exception as e:  # a bug or bad input on latbench's side: still a record
            rec = Record.unanswered(
                sh.run_id, n, phase, sh.endpoint.api.name, t_intended, t_sent,
                ErrorKind.CLIENT_ERROR, f"before or around the request: {type(e).__name__}: {e}",
                t_end=monotonic_ns(),
            )  # fmt: skip
        finally:
            self.inflight -= 1
        if place is not None and rec.session is None:
            rec = replace(rec, session=place[0], turn=place[1])
        if self._duration_end is not None and rec.error == ErrorKind.CANCELLED:
            ago = ((rec.t_end or monotonic_ns()) - self._duration_end) / 1e9
            detail = f"the run's duration ended {ago:.3g} s ago (overtime)"
            rec = replace(rec, error=ErrorKind.OVERTIME, error_detail=detail)
        return rec

    async def _closed_loop(self, session: aiohttp.ClientSession) -> None:
        k, w = self.shard.index, self.shard.count
        numbers = (i * w + k for i in itertools.count())
        delay = (self.start - monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)

        async def user() -> None:
            while not self._stopping:
                n = next(numbers)
                ld = self.shard.load
                if ld.requests is not None and n >= ld.requests:
                    return
                # Built before the user is taken to be free: the user had the message ready.
                item = self._item(n)
                # The loop's timers fire to the millisecond, sometimes just before the start;
                # nothing is intended before it (an offset below 0 would count as warm-up).
                t_intended = max(monotonic_ns(), self.start)
                if self._out_of_budget(n, t_intended - self.start):
                    return
                self.emit(await self._one(session, n, t_intended, item))

        users = [asyncio.create_task(user()) for _ in range(self.shard.users)]
        self._tasks.update(users)
        await asyncio.gather(*users, return_exceptions=True)

    async def _open_loop(self, session: aiohttp.ClientSession, pacer: Pacer) -> None:
        cap_n = self.shard.cap
        cap = asyncio.Semaphore(cap_n) if cap_n else None

        async def capped(n: int, t_intended: int, item: WorkItem | Exception) -> None:
            if cap is None:
                self.emit(await self._one(session, n, t_intended, item))
                return
            async with cap:
                if self._stopping:
                    self.unsent += 1  # stopped while queued for a slot: never sent
                    return
                self.emit(await self._one(session, n, t_intended, item))

        n = self.shard.index
        while not self._stopping:
            offset = pacer.offset_ns(n)
            if self._out_of_budget(n, offset):
                break
            # Built while waiting for its instant, not after it: built at its instant, one
            # 512x512 image's encoding (~3 ms) lay between t_intended and the request's write
            # (5 req/s: stream_request began 4.5-4.7 ms after t_intended at p50, max 12-14;
            # built ahead, 0.8-1.0, max 2: the loop's timer).
            item = self._item(n)
            t_intended = self.start + offset
            delay = t_intended - monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
                if self._stopping:
                    break
            task = asyncio.create_task(capped(n, t_intended, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += self.shard.count
            await asyncio.sleep(0)  # the request goes out before the next item is built
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # Multi-turn sessions. A session runs on one worker, as one task: worker k runs the
    # sessions s = k, k + W, ... and numbers its requests k, k + W, ... as it sends them, so
    # request numbers stay unique across workers. Every request keeps an absolute t_intended:
    # a session's first at its pacer offset (open loop) or when its user is free (closed loop),
    # each later one at the previous reply's end plus the think (or tool) time, so a late send
    # is send lag like any other. `load.requests` counts requests (every turn and tool step),
    # and a session is run whole or not at all: one that starts reserves its planned user turns
    # from the worker's share of the budget, none starts that what is left cannot cover, and
    # tool steps (unplanned: a reply decides) draw on what is left unreserved, so only they can
    # cut a session short. The duration or a stop cuts a session where it reaches it, unsent.

    def _prepare(self, s: int) -> _Start:
        """Session s's plan, conversation and first request, built before its first instant
        (a plan's images are encoded with it, all its turns'); a failure is that request's
        record."""
        try:
            conv = Conversation(self.shard.workload.session(s), s)  # type: ignore[union-attr]
            return _Start(s, conv, conv.item(), len(conv.plan.turns))
        except Exception as e:
            return _Start(s, None, e, 1)

    def _reserve(self, start: _Start) -> bool:
        """Take the session's user turns from the worker's budget; False when what is left
        cannot cover them, and from then on for every session. The worker's first session runs
        even so, cut where its budget ends: a budget shorter than one session sends something."""
        if self._left is None:
            return True
        if self._full or (start.turns > self._left and self._sessions):
            self._full = True
            return False
        start.held = min(start.turns, self._left)
        self._left -= start.held
        self._sessions += 1
        return True

    async def _session(self, http: aiohttp.ClientSession, start: _Start, t_first: int) -> bool:
        """A reserved session, its first request intended at `t_first`; False when a stop, the
        duration or the budget cut it, so that a closed-loop user starts no other."""
        affinity = Affinity()
        token = SESSION.set(affinity)  # its requests prefer the connection it last used
        try:
            return await self._turns(http, start, t_first)
        finally:
            SESSION.reset(token)
            if isinstance(http.connector, SessionConnector):
                http.connector.release_session(affinity)
            if self._left is not None:
                self._left += start.held  # user turns reserved and never sent

    def _take(self, start: _Start) -> bool:
        """One request of the budget for the session's next request: a user turn's from its
        reservation, a tool step's from what is left; False when there is none."""
        if self._left is None:
            return True
        if start.conv is not None and start.conv.answering:
            if self._left == 0:
                return False
            self._left -= 1
            return True
        if start.held == 0:  # only the worker's first session, cut by its budget
            return False
        start.held -= 1
        return True

    async def _turns(self, http: aiohttp.ClientSession, start: _Start, t_first: int) -> bool:
        sh = self.shard
        s, conv, item = start.s, start.conv, start.first
        turn, t_intended = 0, t_first
        while True:
            if not await self._wait_until(t_intended) or not self._take(start):
                return False
            n = self._seq
            self._seq += sh.count
            keep: list[bytes] = []
            rec = await self._one(http, n, t_intended, item, keep, place=(s, turn))
            wait: float | None = None
            if rec.ok and conv is not None:
                try:
                    wait = conv.replied(sh.endpoint.api.reply(keep), rec.usage_completion_tokens)
                except Exception as e:  # the request stands; nothing more can be resent
                    why = f"its reply cannot be read back ({type(e).__name__}: {e})"
                    rec = replace(rec, error_detail=_ended(why, s, conv.turns_left))
            elif not rec.ok and (conv is None or conv.turns_left):
                # A failed turn ends its session: the conversation it would resend is broken.
                why = str(rec.error_detail or rec.error)
                rec = replace(
                    rec, error_detail=_ended(why, s, 0 if conv is None else conv.turns_left)
                )
            self.emit(rec)
            if wait is None or conv is None:
                return True
            t_intended = (rec.t_end or monotonic_ns()) + round(wait * 1e9)
            # Built during the think (or tool) time: only the reply had to be known.
            turn = conv.turn
            try:
                item = conv.item()
            except Exception as e:
                item = e

    async def _wait_until(self, t: int) -> bool:
        """Sleep until t (monotonic ns) unless the run stops first; False when it stopped, or
        when t is past the run's duration (nothing is intended after it)."""
        ld = self.shard.load
        if ld.duration is not None and t - self.start >= ld.duration * 1e9:
            return False
        delay = t - monotonic_ns()
        if delay > 0 and not self._stopping:
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay / 1e9):
                    await self._wake.wait()
        return not self._stopping

    async def _closed_sessions(self, http: aiohttp.ClientSession) -> None:
        """Closed loop: the shard's users each run sessions back to back (sessions are users)."""
        k, w = self.shard.index, self.shard.count
        numbers = (i * w + k for i in itertools.count())

        async def user() -> None:
            while not self._stopping:
                start = self._prepare(next(numbers))  # before the user is free, as for requests
                if not self._reserve(start):
                    return
                # As with single requests: nothing is intended before the start.
                if not await self._session(http, start, max(monotonic_ns(), self.start)):
                    return

        users = [asyncio.create_task(user()) for _ in range(self.shard.users)]
        self._tasks.update(users)
        await asyncio.gather(*users, return_exceptions=True)

    async def _open_sessions(self, http: aiohttp.ClientSession, pacer: Pacer) -> None:
        """Open loop: session s arrives at the pacer's offset s; the in-flight cap counts
        sessions, each holding its slot from its first request to its last reply."""
        sh = self.shard
        cap_n = sh.cap
        cap = asyncio.Semaphore(cap_n) if cap_n else None

        async def capped(start: _Start, t_intended: int) -> None:
            if cap is None:
                await self._session(http, start, t_intended)
                return
            async with cap:
                if self._stopping:
                    self.unsent += 1  # stopped while queued for a slot: never sent
                    return
                await self._session(http, start, t_intended)

        s = sh.index
        while not self._stopping:
            offset = pacer.offset_ns(s)
            ld = sh.load
            if ld.duration is not None and offset >= ld.duration * 1e9:
                break
            start = self._prepare(s)  # while waiting for its instant, as for single requests
            if not await self._wait_until(self.start + offset) or not self._reserve(start):
                break
            task = asyncio.create_task(capped(start, self.start + offset))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            s += sh.count
            await asyncio.sleep(0)  # its first request goes out before the next is built
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass(slots=True)
class _Start:
    """A session ready to start: its conversation and first request (or what building them
    raised), its planned user turns, and how many of them the budget still holds for it."""

    s: int
    conv: Conversation | None
    first: WorkItem | Exception
    turns: int
    held: int = 0


def _ended(why: str, s: int, unsent: int) -> str:
    plural = "" if unsent == 1 else "s"
    left = f" ({unsent} more user turn{plural} not sent)" if unsent else ""
    return f"{why}; session {s} ends here{left}"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Run the shard the parent sends on `reader`, reporting on `writer`."""
    first = await read_frame(reader)
    if first is None:
        return
    shard: Shard = pickle.loads(first)
    ep = shard.endpoint
    # Pay first-use costs (lazy imports, RNG set-up, JSON encoder) before the clock starts. An
    # item that cannot be built fails again in its request, which records it.
    with contextlib.suppress(Exception):
        w = shard.workload
        if isinstance(w, SessionWorkload):
            ep.api.body(Conversation(w.session(shard.index), shard.index).item(), ep.options)
        else:
            ep.api.body(w.item(shard.index), ep.options)

    loop = asyncio.get_running_loop()
    # `s` frames wait for the end of the loop turn that sent their requests: written at once,
    # each put an orjson encode and a pipe write (~2 us) between t_intended and the request's
    # bytes. A record always flushes them first, so the parent hears of a send before its end.
    # What remains of the dead-worker guarantee: a worker killed within one loop turn of a send
    # leaves that request unannounced, so no `lost` record of it.
    announced: list[tuple[int, int, int, Phase]] = []

    def announce() -> None:
        for sent in announced:
            writer.write(message("s", *sent))
        announced.clear()

    def emit(rec: Record) -> None:
        announce()
        try:
            payload = message(*pack_record(rec))
        except Exception as e:  # a value orjson cannot write (an int over 64 bits, say)
            payload = message(*pack_record(unsendable(rec, e)))
        writer.write(payload)

    def on_send(seq: int, t_intended: int, t_sent: int, phase: Phase) -> None:
        if not announced:
            loop.call_soon(announce)
        announced.append((seq, t_intended, t_sent, phase))

    run = ShardRun(shard, emit, on_send)
    writer.write(message("ready"))
    go = await read_frame(reader)
    if go is None:
        return
    cmd = orjson.loads(go)
    if cmd[0] != "go":  # stopped or aborted before it began: a clean end with nothing sent
        writer.write(message("end", 0.0, 0.0, 0))
        await writer.drain()
        return
    start: int = cmd[1]

    async def control() -> None:
        while (f := await read_frame(reader)) is not None:
            cmd = orjson.loads(f)
            if cmd[0] == "stop":
                run.stop()
            elif cmd[0] == "overtime":
                run.overtime(cmd[1])
            else:
                run.abort()
        run.abort()  # the parent went away: nobody is left to take the records

    lag = LoopLagMonitor(loop)
    sent_lags = 0

    def heartbeat() -> None:
        nonlocal sent_lags
        n = len(lag.samples)
        ticks, samples = lag.ticks[sent_lags:n].tolist(), lag.samples[sent_lags:n].tolist()
        sent_lags = n
        writer.write(message("h", run.inflight, ticks, samples))

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            heartbeat()

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=ep.timeouts.connect)
    cpu0, wall0 = time.process_time(), monotonic_ns()
    lag.start()
    controller = asyncio.create_task(control())
    beater = asyncio.create_task(beat())
    try:
        async with aiohttp.ClientSession(connector=shard.connector(), timeout=timeout) as session:
            await run.run(session, start)
    finally:
        lag.stop()
        beater.cancel()
        controller.cancel()
    announce()
    heartbeat()
    cpu_s, wall_s = time.process_time() - cpu0, (monotonic_ns() - wall0) / 1e9
    writer.write(message("end", cpu_s, wall_s, run.unsent))
    await writer.drain()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    install_eager_writes(loop)
    # The channel keeps the original stdout; anything else that prints goes to stderr, so a
    # stray print can never corrupt a frame.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(), channel
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        await serve(reader, writer)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone; there is nobody to report to
    finally:
        transport.close()


def main() -> None:
    # Ctrl-C reaches the whole process group; only the parent decides what it means (stop, then
    # abort), and tells the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    with asyncio.Runner(loop_factory=rxstamp.new_event_loop) as r:
        r.run(_main())


if __name__ == "__main__":
    sys.exit(main())
