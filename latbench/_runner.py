"""The load scheduler: owns the clock, sends requests on schedule, fans records out to sinks.

Closed loop: N users, each sending its next request the moment its last one finished; that moment
is the request's `t_intended`. Open loop: a pacer gives every request an intended instant on an
absolute schedule from the run's start; a request is sent at that instant (or at once, if the
loop is behind, so the schedule catches up instead of drifting), as its own task, so a slow stream
never delays the next send. With a concurrency cap, requests wait for a slot and that wait shows
up as queue delay (`t_sent - t_intended`), never hidden.

The first `stop()` ends scheduling and lets in-flight streams finish; `abort()` cancels them,
and their records say `cancelled` with whatever they had measured.
"""

from __future__ import annotations

import asyncio
import itertools
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import monotonic_ns

import aiohttp

from latbench._client import Endpoint, stream_request
from latbench._record import Record, RunFooter
from latbench._schedule import ConstantPacer, Pacer, PoissonPacer, phase_of
from latbench._sinks import Sink
from latbench._spec import LoadSpec
from latbench._summary import ClientStats
from latbench._validity import CpuMeter, LoopLagMonitor
from latbench._workload import Workload

START_LEAD_NS = 20_000_000  # schedule the first send a little ahead, so it is not born late


def make_pacer(load: LoadSpec, seed: int) -> Pacer | None:
    if load.mode == "constant":
        assert load.rate is not None
        return ConstantPacer(load.rate)
    if load.mode == "poisson":
        assert load.rate is not None
        return PoissonPacer(load.rate, burstiness=load.burstiness, seed=seed)
    return None


def make_connector(load: LoadSpec, verify_tls: bool) -> aiohttp.TCPConnector:
    # aiohttp's default pool (100) would silently cap concurrency; size it from the load instead.
    limit = load.concurrency or 0
    return aiohttp.TCPConnector(
        limit=limit, limit_per_host=0, ssl=None if verify_tls else False, ttl_dns_cache=300
    )


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class RunOutcome:
    records: list[Record]
    footer: RunFooter
    client: ClientStats
    ended: str


@dataclass
class Runner:
    run_id: str
    endpoint: Endpoint
    workload: Workload
    load: LoadSpec
    sinks: Sequence[Sink]
    seed: int = 0
    inflight: int = 0
    records: list[Record] = field(default_factory=list)
    _stopping: bool = False
    _aborted: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _start: int = 0
    _stopped_at: int | None = None
    _unsent: int = 0

    def stop(self) -> None:
        """Stop scheduling; in-flight requests finish."""
        if not self._stopping:
            self._stopping = True
            self._stopped_at = monotonic_ns()

    def abort(self) -> None:
        """Stop scheduling and cancel in-flight requests."""
        self.stop()
        self._aborted = True
        for t in list(self._tasks):
            t.cancel()

    async def run(self, session: aiohttp.ClientSession) -> RunOutcome:
        loop = asyncio.get_running_loop()
        lag = LoopLagMonitor(loop)
        cpu = CpuMeter()
        # Pay first-use costs (lazy imports, RNG set-up, JSON encoder) before the clock starts.
        self.endpoint.api.body(self.workload.item(0), self.endpoint.options)
        lag.start()
        self._start = monotonic_ns() + START_LEAD_NS
        try:
            pacer = make_pacer(self.load, self.seed)
            if pacer is None:
                await self._closed_loop(session)
            else:
                await self._open_loop(session, pacer)
        finally:
            lag.stop()
        cpu_s, wall_s = cpu.read()
        ws, we = self._window()
        client = ClientStats(
            loop_lag_ns=lag.lags_between(ws, we),
            cpu_s=cpu_s,
            wall_s=wall_s,
            open_loop=self.load.open_loop,
            unsent=self._unsent,
        )
        ended = "aborted" if self._aborted else ("stopped" if self._stopped_at else "completed")
        footer = RunFooter(window_start=ws, window_end=we, ended=ended, validity=client.to_dict())
        return RunOutcome(records=self.records, footer=footer, client=client, ended=ended)

    def _window(self) -> tuple[int, int]:
        """[start, end) of the measurement. Time-based bounds where the spec gives them; otherwise
        from the measured requests themselves: first intended send to last finish."""
        measured = [r for r in self.records if r.phase == "measure"]
        first = min((r.t_intended for r in measured), default=self._start)
        last = max((r.t_end or r.t_sent for r in measured), default=first)
        ld = self.load
        start = (
            self._start + int(ld.warmup * 1e9) if ld.warmup and not ld.warmup_requests else first
        )
        end = last
        if ld.duration is not None and ld.cooldown and not ld.cooldown_requests:
            end = self._start + int((ld.duration - ld.cooldown) * 1e9)
        if self._stopped_at is not None and self._stopped_at < end and self._aborted:
            end = self._stopped_at
        return start, max(end, start)

    def _phase(self, n: int, offset_ns: int) -> str:
        ld = self.load
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
        ld = self.load
        if ld.requests is not None and n >= ld.requests:
            return True
        return ld.duration is not None and offset_ns >= ld.duration * 1e9

    async def _one(self, session: aiohttp.ClientSession, n: int, t_intended: int) -> None:
        item = self.workload.item(n)
        phase = self._phase(n, t_intended - self._start)
        self.inflight += 1
        try:
            rec = await stream_request(
                session,
                self.endpoint,
                item,
                run_id=self.run_id,
                seq=n,
                phase=phase,  # type: ignore[arg-type]
                t_intended=t_intended,
            )
        finally:
            self.inflight -= 1
        self.records.append(rec)
        for sink in self.sinks:
            sink.add(rec)

    async def _closed_loop(self, session: aiohttp.ClientSession) -> None:
        counter = itertools.count()
        delay = (self._start - monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)

        async def user() -> None:
            while not self._stopping:
                n = next(counter)
                t_intended = monotonic_ns()
                if self._out_of_budget(n, t_intended - self._start):
                    return
                await self._one(session, n, t_intended)

        assert self.load.concurrency is not None
        users = [asyncio.create_task(user()) for _ in range(self.load.concurrency)]
        self._tasks.update(users)
        await asyncio.gather(*users, return_exceptions=True)

    async def _open_loop(self, session: aiohttp.ClientSession, pacer: Pacer) -> None:
        cap = asyncio.Semaphore(self.load.concurrency) if self.load.concurrency else None

        async def capped(n: int, t_intended: int) -> None:
            if cap is None:
                await self._one(session, n, t_intended)
                return
            async with cap:
                if self._stopping:
                    self._unsent += 1  # stopped while queued for a slot: never sent
                    return
                await self._one(session, n, t_intended)

        n = 0
        while not self._stopping:
            offset = pacer.offset_ns(n)
            if self._out_of_budget(n, offset):
                break
            t_intended = self._start + offset
            delay = t_intended - monotonic_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
                if self._stopping:
                    break
            task = asyncio.create_task(capped(n, t_intended))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
