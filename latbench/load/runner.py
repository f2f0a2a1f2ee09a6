"""The load scheduler: splits a run's schedule over worker processes and gathers their records.

Closed loop: N users, each sending its next request the moment its last one finished; that moment
is the request's `t_intended`. Open loop: a pacer gives every request an intended instant on an
absolute schedule from the run's start; a request is sent at that instant (or at once, if the
loop is behind, so the schedule catches up instead of drifting), as its own task, so a slow stream
never delays the next send. With a concurrency cap, requests wait for a slot and that wait shows
up as queue delay (`t_sent - t_intended`), never hidden.

The sending happens in worker processes (`load.worker`), each with its own event loop, so that
timestamping is never held up by this process's work: the runner is given the run's sinks
(records file, progress, Prometheus) once, when it is made, receives each record as it finishes,
and hands it to each of them in the order given; whoever assembled the run closes them
(`run.benchmark`). All workers start on one instant that the runner picks once every worker is
ready, and all read CLOCK_MONOTONIC.

The first `stop()` ends scheduling and lets in-flight streams finish; `abort()` cancels them,
and their records say `cancelled` with whatever they had measured. With a duration, requests still
in flight `load.overtime` seconds after it ended are cut the same way, recorded as `overtime` (a
failure of the server to finish, which the failed share counts), so an endless stream cannot hold
a run past its duration for longer than that.

An open-loop run is watched for over-saturation (`load.oversaturation`, `summary.saturation`):
once a second the runner judges the last window from the records and the requests in flight, and
when in-flight and TTFT have both grown steadily for long enough it stops sending and cuts what
is in flight (an over-saturated server's queue would take as long to drain as it took to build;
those records say `cancelled`), and the run ends `oversaturated` with the evidence in its footer.

The workers are reached through channels (`load.channel`): by default child processes of this
one (`PipeChannel`), or the worker slots of agents on other machines (`Runner(channels=...)`,
from `agents.pool`), which split the schedule exactly as local workers do (shard k of W, W the
channels used). A remote channel's clock is not this one: the runner adds its offset to the
instants it sends (`go`, `overtime`) and takes it off every instant it receives (`s` frames,
heartbeats, records, which are also stamped with the agent), so everything above the runner
sees one timeline, and starts the run far enough ahead for the `go` to reach every agent.

The run outlives its parts: each worker tells the runner of every request it sends, so when a
worker process dies (or an agent's connection closes) its in-flight requests are recorded as
`lost`, the other workers go on (or, with `on_loss="stop"`, the run stops as a first Ctrl-C
does), and the run ends `incomplete` with every record kept and the share of the planned load
the lost workers never offered (`load.shortfall`, counted once from the schedule). An agent's
workers' loop lag, CPU and unsent count are kept apart too, so the summary can judge each agent
on its own (`summary.validity.judge_agents`). A record frame the runner cannot
decode becomes a `client_error` record of its request, not a crash, when the request is one the
worker said it sent; one naming any other request is dropped (it could only duplicate or invent
one) and counted in the outcome's warnings.
"""

from __future__ import annotations

import asyncio
import math
import pickle
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from time import monotonic_ns
from typing import Any, Literal, get_args

import aiohttp
import orjson

from latbench.client.looplag import publish_lag
from latbench.client.stream import Endpoint
from latbench.load.channel import IMPORT_ROOT as _IMPORT_ROOT  # noqa: F401 (tests read it)
from latbench.load.channel import Channel, PipeChannel
from latbench.load.cpus import usable_cpus
from latbench.load.shortfall import shortfall
from latbench.load.wire import payload, record_seq, shift_instants, unpack_record
from latbench.load.worker import Shard, make_pacer
from latbench.records.record import Phase, Record, RunFooter
from latbench.shared.errors import ErrorKind, LatbenchError
from latbench.sinks import Sink
from latbench.spec import LoadSpec
from latbench.summary.samples import derived_window
from latbench.summary.saturation import Oversaturation, Watch
from latbench.summary.validity import AgentStats, ClientStats, Shortfall
from latbench.workload import Workload
from latbench.workload.session import SessionWorkload

__all__ = ["RunOutcome", "Runner", "make_connector"]

# A worker's loop should stay near half busy, where its lag is still small: measured at 70-110 us
# of worker CPU per event when each read brings one event (docs/performance.md), 64 streams of
# 100 events/s keep it at 0.45-0.7 of a core. Reads that batch events cost far less per event.
STREAMS_PER_WORKER = 64
_PHASES = frozenset(get_args(Phase))
START_LEAD_NS = 20_000_000  # schedule the first send a little ahead, so it is not born late
# Over the network the `go` frame takes a one-way trip and an agent's relay to arrive: three
# round trips and a margin for a loaded host, so no agent's first request is born late.
REMOTE_LEAD_NS = 200_000_000
WATCH_S = 1.0  # how often an open-loop run is judged for over-saturation
OnLoss = Literal["continue", "stop"]


def make_connector(load: LoadSpec, verify_tls: bool) -> aiohttp.TCPConnector:
    """The runner's own session (preflight; it measures nothing, so its reads need no stamps);
    workers size their pools from their shards."""
    limit = load.concurrency or 0
    return aiohttp.TCPConnector(
        limit=limit, limit_per_host=0, ssl=None if verify_tls else False, ttl_dns_cache=300
    )


def worker_count(load: LoadSpec, asked: int | None, cores: int | None = None) -> int:
    """Workers for a load: as asked, else one per STREAMS_PER_WORKER streams (the concurrency,
    or the open-loop cap; one when there is neither), leaving one of the CPUs this process may
    use (`load.cpus`: affinity and cgroup quota, not the machine's count) for the runner.
    Never more than there are users or slots to split: a worker with none would only cost
    start-up time."""
    if asked is None:
        cores = usable_cpus() if cores is None else cores
        streams = load.concurrency or 1
        asked = min(math.ceil(streams / STREAMS_PER_WORKER), max(1, cores - 1))
    w = asked
    if load.concurrency is not None:
        w = min(w, load.concurrency)
    return max(1, w)


class WorkerError(LatbenchError):
    """A worker process failed; records it had sent are kept."""


@dataclass
class RunOutcome:
    records: list[Record]
    footer: RunFooter
    client: ClientStats
    ended: str  # completed | stopped | aborted | oversaturated | incomplete (a worker died)
    incomplete: str | None = None  # why, when it is
    oversaturation: Oversaturation | None = None  # the verdict that stopped it, when one did
    warnings: list[str] = field(default_factory=list)  # nothing lost, but worth saying


@dataclass
class _Worker:
    index: int
    channel: Channel
    inflight: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    unsent: int = 0
    ended: bool = False
    # Requests sent and not yet recorded: seq -> (t_intended, t_sent, phase), from `s` frames.
    pending: dict[int, tuple[int, int, Phase]] = field(default_factory=dict)
    death: str | None = None  # how it ended, when it died before its `end` frame
    lost: str | None = None  # the channel's own words for its death (`describe_death`)
    lost_ns: int | None = None  # when its stream ended without `end`, this host's clock
    sent: int = 0  # requests it said it sent (`s` frames)
    next_seq: int | None = None  # after its last `s` frame: the next request number of its shard
    heard_ns: int | None = None  # when a frame last came from it, this host's clock
    # Its heartbeats' loop lag (tick instants on this host's clock, lags): an agent's own
    lag_ticks: array[int] = field(default_factory=lambda: array("q"))
    lags: array[int] = field(default_factory=lambda: array("q"))

    def send(self, *parts: Any) -> None:
        self.channel.send(payload(*parts))

    def send_at(self, kind: str, instant: int) -> None:
        """A frame naming an instant of this host's clock, in the worker's."""
        self.send(kind, instant + self.channel.offset_ns)


class Runner:
    def __init__(
        self,
        run_id: str,
        endpoint: Endpoint,
        workload: Workload,
        load: LoadSpec,
        sinks: Sequence[Sink],
        seed: int = 0,
        *,
        workers: int | None = None,
        verify_tls: bool = True,
        channels: Sequence[Channel] | None = None,
        on_loss: OnLoss = "continue",
    ) -> None:
        """`channels`: the workers to run on (an agent pool's slots), None to start local worker
        processes (`workers` of them, or `worker_count`'s default). Of the channels given, the
        first `worker_count(load, len(channels))` are used (a closed loop of 2 users needs 2
        workers), so order them to spread over hosts. `on_loss`: when a worker dies mid-run,
        the others go on ("continue") or the run stops ("stop")."""
        self.run_id = run_id
        self.endpoint = endpoint
        self.workload = workload
        self.load = load
        self._sinks = tuple(sinks)  # fixed for the run: every record reaches the same sinks
        self.seed = seed
        self._channels = None if channels is None else list(channels)
        if self._channels is not None:
            if not self._channels:
                raise ValueError("a runner over channels needs at least one")
            workers = len(self._channels)
        self.workers = worker_count(load, workers)
        self.verify_tls = verify_tls
        self.on_loss = on_loss
        self.records: list[Record] = []
        self._workers: list[_Worker] = []
        self._stopping = False
        self._aborted = False
        self._start = 0
        self._stopped_at: int | None = None
        self._loss_stopped = False  # the first stop was the on_loss policy's
        self._lag_ticks = array("q")
        self._lags = array("q")
        self._dropped: list[tuple[int, int]] = []  # (worker, seq) of unreadable unknown records
        self._pacer = make_pacer(load, seed, workload)  # the workers' schedule, for the gauge
        self.watch: Watch | None = None
        self.oversaturation: Oversaturation | None = None
        # True once `run` has returned: a stop or abort after it asks the caller to skip
        # what it still waits for (the server's spans, run/spans.py), told to `_interrupt_cbs`.
        self.finished = False
        self._interrupt_cbs: list[Callable[[], None]] = []

    @property
    def inflight(self) -> int:
        """Requests in flight, as of each worker's last heartbeat (at most 0.1 s old)."""
        return sum(w.inflight for w in self._workers)

    def offered_rate(self) -> float | None:
        """Requests per second the open-loop schedule intends now (`Pacer.rate_at`: a ramp's or a
        stair's rate at this instant), for the live gauge; None in closed loop, before the start,
        once stopped and past the duration."""
        if self._pacer is None or not self._start or self._stopping:
            return None
        offset = monotonic_ns() - self._start
        if offset < 0 or (self.load.duration is not None and offset >= self.load.duration * 1e9):
            return None
        return self._pacer.rate_at(offset)

    def add_interrupt_listener(self, callback: Callable[[], None]) -> None:
        """`callback` is called at every `stop` and `abort` from now on (a Ctrl-C, the service's
        cancel), also after the run has returned, when nothing is left to stop here."""
        self._interrupt_cbs.append(callback)

    def stop(self) -> None:
        """Stop scheduling; in-flight requests finish."""
        for callback in list(self._interrupt_cbs):
            callback()
        if not self._stopping:
            self._stopping = True
            self._stopped_at = monotonic_ns()
            for w in self._workers:
                w.send("stop")

    def abort(self) -> None:
        """Stop scheduling and cancel in-flight requests."""
        self.stop()
        if not self._aborted:
            self._aborted = True
            for w in self._workers:
                w.send("abort")

    async def run(self, session: aiohttp.ClientSession) -> RunOutcome:
        """Run the load. `session` is the caller's (preflight) session; workers open their own."""
        overtime: asyncio.TimerHandle | None = None
        watcher: asyncio.Task[None] | None = None
        try:
            await self._start_workers()
            if not self._stopping:
                self._start = monotonic_ns() + self._start_lead()
                for w in self._workers:
                    w.send_at("go", self._start)
                overtime = self._arm_overtime()
                watcher = self._start_watch()
            await asyncio.gather(*(self._drain(w) for w in self._workers))
        finally:
            if overtime is not None:
                overtime.cancel()
            if watcher is not None:
                watcher.cancel()
            for w in self._workers:
                # The end of its stream is an abort to a worker still running: one that failed
                # to start, or a run cancelled from outside.
                w.channel.close()
            # At once: each wait may run to its own timeout (an agent's close handshake), and
            # one at a time those would add up slot by slot.
            await asyncio.gather(*(w.channel.wait_closed() for w in self._workers))
            self.finished = True
        return self._outcome()

    def _start_lead(self) -> int:
        """How far ahead of now the run starts: a little locally, and over the network enough
        for the `go` frame to reach the farthest agent (3 of its round trips and a margin)."""
        remote = [w.channel.rtt_ns for w in self._workers if w.channel.agent is not None]
        if not remote:
            return START_LEAD_NS
        return max(START_LEAD_NS, 3 * max(remote) + REMOTE_LEAD_NS)

    def _arm_overtime(self) -> asyncio.TimerHandle | None:
        """With a duration: at its end plus `load.overtime`, cancel whatever is still in flight."""
        ld = self.load
        if ld.duration is None:
            return None
        duration_end = self._start + int(ld.duration * 1e9)
        at = duration_end + int(ld.overtime * 1e9)

        def expire() -> None:
            for w in self._workers:
                w.send_at("overtime", duration_end)

        return asyncio.get_running_loop().call_later((at - monotonic_ns()) / 1e9, expire)

    def _start_watch(self) -> asyncio.Task[None] | None:
        """Open loop, unless the spec turns it off: judge the run once a second, and stop it when
        it is over-saturated."""
        spec = self.load.oversaturation
        if not spec.applies(self.load.open_loop):
            return None
        watch = self.watch = Watch(spec, self._start)
        for rec in self.records:
            watch.add(rec)

        async def judge() -> None:
            while not self._stopping:
                await asyncio.sleep(WATCH_S)
                if self._stopping:
                    return
                now = monotonic_ns()
                flying = [p[1] for w in self._workers for p in w.pending.values()]
                verdict = watch.check(now, flying)
                if verdict is not None:
                    self.oversaturation = verdict
                    self.abort()
                    return

        return asyncio.create_task(judge())

    async def _start_workers(self) -> None:
        if self._channels is None:
            channels: list[Channel] = list(
                await asyncio.gather(*(PipeChannel.spawn(k) for k in range(self.workers)))
            )
        else:
            channels = self._channels[: self.workers]
        self._workers = [_Worker(k, c) for k, c in enumerate(channels)]
        for k, w in enumerate(self._workers):
            shard = Shard(
                run_id=self.run_id,
                index=k,
                count=self.workers,
                endpoint=self.endpoint,
                workload=self.workload,
                load=self.load,
                seed=self.seed,
                verify_tls=self.verify_tls,
            )
            w.channel.send_shard(pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL))
        for w in self._workers:
            try:
                ready = await w.channel.recv()
            except ConnectionError:
                ready = None
            if ready is None or orjson.loads(ready)[0] != "ready":
                raise WorkerError(f"a worker did not start: {await w.channel.describe_death()}")
        if self._stopping:  # stopped while the workers started: they have nothing to do
            for w in self._workers:
                w.send("abort" if self._aborted else "stop")

    def _add(self, rec: Record) -> None:
        self.records.append(rec)
        if self.watch is not None:
            self.watch.add(rec)
        for sink in self._sinks:
            sink.add(rec)

    def _unreadable(self, w: _Worker, seq: int, why: str) -> None:
        """A request whose record could not be read: recorded as latbench's own failure, with the
        instants its `s` frame gave. Only a request the worker said it sent and that has no
        record yet: a garbled frame's seq may name one already recorded, or none at all, and
        stamping such a seq would duplicate or invent a request."""
        sent = w.pending.pop(seq, None)
        if sent is None:
            self._dropped.append((w.index, seq))
            return
        self._add(self._announced(w, seq, sent, ErrorKind.CLIENT_ERROR, why))

    def _announced(
        self, w: _Worker, seq: int, sent: tuple[int, int, Phase], error: ErrorKind, why: str
    ) -> Record:
        """The record of a request known only from its `s` frame (instants already on this
        host's clock), stamped with the agent that sent it, if one did."""
        t_intended, t_sent, phase = sent
        rec = Record.unanswered(
            self.run_id, seq, phase, self.endpoint.api.name, t_intended, t_sent, error, why
        )
        origin = w.channel.origin
        if origin is None:
            return rec
        return replace(
            rec,
            agent=origin.agent,
            location=origin.location,
            clock_offset_ns=origin.offset_ns,
            clock_uncertainty_ns=origin.uncertainty_ns,
        )

    def _control(self, w: _Worker, m: list[Any], loop: asyncio.AbstractEventLoop) -> None:
        kind = m[0]
        offset = w.channel.offset_ns
        if offset:
            shift_instants(m, -offset)
        if kind == "s":
            phase = m[4] if m[4] in _PHASES else "measure"
            seq = int(m[1])
            w.pending[seq] = (int(m[2]), int(m[3]), phase)
            w.sent += 1
            # Shard k sends k, k + W, ... in order: the next one is the first not announced.
            w.next_seq = max(w.next_seq or 0, seq + self.workers)
        elif kind == "h":
            w.inflight = m[1]
            self._lag_ticks.extend(m[2])
            self._lags.extend(m[3])
            if w.channel.agent is not None:  # judged per agent too (summary.validity)
                w.lag_ticks.extend(m[2])
                w.lags.extend(m[3])
            for lag in m[3]:
                publish_lag(loop, lag)
        elif kind == "end":
            w.cpu_s, w.wall_s, w.unsent = m[1], m[2], m[3]
            w.inflight = 0
            w.ended = True

    async def _drain(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        channel = w.channel
        while True:
            try:
                data = await channel.recv()
            except ConnectionError:  # torn mid-frame: the worker died while writing
                break
            if data is None:
                break
            w.heard_ns = monotonic_ns()
            try:
                m = orjson.loads(data)
                kind = m[0]
            except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
                continue  # not a frame at all; its request, if any, is settled at the end
            if kind == "r":
                try:
                    rec = unpack_record(self.run_id, m, channel.origin)
                except Exception as e:
                    seq = record_seq(m)
                    if seq is not None:
                        why = f"the runner could not read this request's record: {e}"
                        self._unreadable(w, seq, why)
                    continue
                w.pending.pop(rec.seq, None)
                self._add(rec)
            else:
                try:
                    self._control(w, m, loop)
                except (IndexError, KeyError, TypeError, ValueError):
                    continue  # a garbled control frame costs its information, not the run
        channel.close()
        if w.ended:
            for seq in list(w.pending):
                self._unreadable(w, seq, "the worker ended without a readable record of it")
            return
        # It died mid-run: what it had in flight is lost; the other workers go on, unless the
        # policy says a lost worker stops the run.
        now = monotonic_ns()
        death = await channel.describe_death()
        w.inflight = 0
        w.death = w.lost = death
        w.lost_ns = now
        for seq, (t_intended, t_sent, phase) in sorted(w.pending.items()):
            sent = (t_intended, min(t_sent, now), phase)
            why = f"{death} with this request in flight"
            self._add(self._announced(w, seq, sent, ErrorKind.LOST, why))
        w.death += f" with {len(w.pending)} requests in flight, recorded as lost"
        w.pending.clear()
        if self.on_loss == "stop" and not self._stopping:
            # The others stop sending and their in-flight requests finish: what they no longer
            # offer counts in the run's shortfall with the lost worker's.
            self._loss_stopped = True
            self.stop()

    def _outcome(self) -> RunOutcome:
        ws, we = self._window()
        lags = [lag for t, lag in zip(self._lag_ticks, self._lags, strict=True) if ws <= t < we]
        # Each worker's loop runs on one core: the busiest one is the one that runs out first.
        busiest = max(self._workers, key=lambda w: w.cpu_s / w.wall_s if w.wall_s else 0.0)
        shortfall = self._shortfall()
        client = ClientStats(
            loop_lag_ns=lags,
            cpu_s=busiest.cpu_s,
            wall_s=busiest.wall_s,
            open_loop=self.load.open_loop,
            unsent=sum(w.unsent for w in self._workers),
            agents=self._agent_stats(ws, we),
            shortfall=shortfall,
        )
        ended = "aborted" if self._aborted else ("stopped" if self._stopped_at else "completed")
        deaths = [w.death for w in self._workers if w.death is not None]
        incomplete = "; ".join(deaths) if deaths else None
        if incomplete is not None and shortfall is not None:
            incomplete += f"; {shortfall.describe()}"
        verdict = self.oversaturation
        if verdict is not None:
            ended = "oversaturated"
        if incomplete is not None:
            ended = "incomplete"
        footer = RunFooter(
            window_start=ws,
            window_end=we,
            ended=ended,
            validity=client.to_dict(),
            oversaturation=None if verdict is None else verdict.to_dict(),
            stopped_ns=self._stopped_at,
        )
        warnings = []
        if self._dropped:
            named = ", ".join(f"seq {seq} (worker {k})" for k, seq in self._dropped[:5])
            more = f" and {len(self._dropped) - 5} more" if len(self._dropped) > 5 else ""
            warnings.append(
                f"{len(self._dropped)} unreadable record frames named requests their worker had "
                f"not announced or that were already recorded: {named}{more}; dropped"
            )
        return RunOutcome(
            records=self.records,
            footer=footer,
            client=client,
            ended=ended,
            incomplete=incomplete,
            warnings=warnings,
            oversaturation=verdict,
        )

    def _agent_stats(self, ws: int, we: int) -> tuple[AgentStats, ...]:
        """Each agent's own figures, from its workers (slots): their loop lag inside the
        window, the busiest one's CPU, their unsent requests, and how it was lost, if it was.
        Its host and clock are the pool's to add (`run.benchmark`). None for a local run."""
        slots: dict[int, list[_Worker]] = {}
        for w in self._workers:
            if w.channel.agent is not None:
                slots.setdefault(w.channel.agent, []).append(w)
        out = []
        for index, ws_ in sorted(slots.items()):
            busiest = max(ws_, key=lambda w: w.cpu_s / w.wall_s if w.wall_s else 0.0)
            lost = [w for w in ws_ if w.lost is not None]
            out.append(
                AgentStats(
                    index=index,
                    location=ws_[0].channel.location,
                    workers=len(ws_),
                    loop_lag_ns=[
                        lag
                        for w in ws_
                        for t, lag in zip(w.lag_ticks, w.lags, strict=True)
                        if ws <= t < we
                    ],
                    cpu_s=busiest.cpu_s,
                    wall_s=busiest.wall_s,
                    unsent=sum(w.unsent for w in ws_),
                    uncertainty_ns=ws_[0].channel.uncertainty_ns,
                    lost=lost[0].lost if lost else None,
                    lost_ns=min(w.lost_ns for w in lost if w.lost_ns is not None) if lost else None,
                )
            )
        return tuple(out)

    def _shortfall(self) -> Shortfall | None:
        """The planned load the lost workers never offered (`load.shortfall`), when any was
        lost after the run started."""
        lost = [w for w in self._workers if w.lost_ns is not None]
        if not lost or not self._start:
            return None
        who: list[str] = []
        for w in lost:
            name = w.channel.who
            if name not in who:
                who.append(name)
        stopped = self._stopped_at if self._loss_stopped else None
        return shortfall(
            self.load,
            make_pacer(self.load, self.seed, self.workload),  # a fresh one: searched at random
            self.workers,
            sessions=isinstance(self.workload, SessionWorkload),
            # Cut where each was last heard from, not when its loss was noticed: a frozen host
            # is noticed only when its connection times out, and what it planned in between
            # was never offered (nor recorded).
            losses={w.index: self._last_heard(w) - self._start for w in lost},
            stopped=None if stopped is None else stopped - self._start,
            sent=[w.sent for w in self._workers],
            ran_ns=max(0, monotonic_ns() - self._start),
            lost=who,
            unannounced={w.index: w.next_seq or w.index for w in lost},
        )

    def _last_heard(self, w: _Worker) -> int:
        """When a lost worker was last heard from (its loss, if never), this host's clock."""
        assert w.lost_ns is not None
        return min(w.lost_ns, w.heard_ns or w.lost_ns)

    def _window(self) -> tuple[int, int]:
        """[start, end) of the measurement: the records' own (`summary.samples.derived_window`,
        which a summary of a file without this footer derives too, so both read the same), cut
        where a stop ended the sending: after it the load drains, and a rate over the drain
        would not be the load's. Without a measured request, an empty window at the start."""
        start, end = derived_window(self.records, self.load) or (self._start, self._start)
        if self._stopped_at is not None:
            end = min(end, self._stopped_at)
        return start, max(end, start)
