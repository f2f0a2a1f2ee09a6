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

The run outlives its parts: each worker tells the runner of every request it sends, so when a
worker process dies its in-flight requests are recorded as `lost`, the other workers go on, and
the run ends `incomplete` with every record kept. A record frame the runner cannot decode becomes
a `client_error` record of its request, not a crash, when the request is one the worker said it
sent; one naming any other request is dropped (it could only duplicate or invent one) and counted
in the outcome's warnings.
"""

from __future__ import annotations

import asyncio
import math
import os
import pickle
import signal
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic_ns
from typing import Any, get_args

import aiohttp
import orjson

from latbench.client.looplag import publish_lag
from latbench.client.stream import Endpoint
from latbench.load.cpus import usable_cpus
from latbench.load.wire import frame, message, read_frame, record_seq, unpack_record
from latbench.load.worker import Shard, make_pacer
from latbench.records.record import Phase, Record, RunFooter
from latbench.shared.errors import ErrorKind, LatbenchError
from latbench.sinks import Sink
from latbench.spec import LoadSpec
from latbench.summary.samples import derived_window
from latbench.summary.saturation import Oversaturation, Watch
from latbench.summary.validity import ClientStats
from latbench.workload import Workload

__all__ = ["RunOutcome", "Runner", "make_connector"]

# A worker's loop should stay near half busy, where its lag is still small: measured at 70-110 us
# of worker CPU per event when each read brings one event (docs/performance.md), 64 streams of
# 100 events/s keep it at 0.45-0.7 of a core. Reads that batch events cost far less per event.
STREAMS_PER_WORKER = 64
_PHASES = frozenset(get_args(Phase))
START_LEAD_NS = 20_000_000  # schedule the first send a little ahead, so it is not born late
WATCH_S = 1.0  # how often an open-loop run is judged for over-saturation
# The directory that holds the `latbench` package, so workers import this same copy.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])


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
    proc: asyncio.subprocess.Process
    inflight: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    unsent: int = 0
    ended: bool = False
    # Requests sent and not yet recorded: seq -> (t_intended, t_sent, phase), from `s` frames.
    pending: dict[int, tuple[int, int, Phase]] = field(default_factory=dict)
    death: str | None = None  # how it ended, when it died before its `end` frame

    def send(self, payload: bytes) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(payload)


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
    ) -> None:
        self.run_id = run_id
        self.endpoint = endpoint
        self.workload = workload
        self.load = load
        self._sinks = tuple(sinks)  # fixed for the run: every record reaches the same sinks
        self.seed = seed
        self.workers = worker_count(load, workers)
        self.verify_tls = verify_tls
        self.records: list[Record] = []
        self._workers: list[_Worker] = []
        self._stopping = False
        self._aborted = False
        self._start = 0
        self._stopped_at: int | None = None
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
                w.send(message("stop"))

    def abort(self) -> None:
        """Stop scheduling and cancel in-flight requests."""
        self.stop()
        if not self._aborted:
            self._aborted = True
            for w in self._workers:
                w.send(message("abort"))

    async def run(self, session: aiohttp.ClientSession) -> RunOutcome:
        """Run the load. `session` is the caller's (preflight) session; workers open their own."""
        overtime: asyncio.TimerHandle | None = None
        watcher: asyncio.Task[None] | None = None
        try:
            await self._start_workers()
            if not self._stopping:
                self._start = monotonic_ns() + START_LEAD_NS
                for w in self._workers:
                    w.send(message("go", self._start))
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
                if w.proc.stdin is not None and not w.proc.stdin.is_closing():
                    w.proc.stdin.close()
            for w in self._workers:
                await _reap(w.proc)
            self.finished = True
        return self._outcome()

    def _arm_overtime(self) -> asyncio.TimerHandle | None:
        """With a duration: at its end plus `load.overtime`, cancel whatever is still in flight."""
        ld = self.load
        if ld.duration is None:
            return None
        duration_end = self._start + int(ld.duration * 1e9)
        at = duration_end + int(ld.overtime * 1e9)

        def expire() -> None:
            for w in self._workers:
                w.send(message("overtime", duration_end))

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
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, env.get("PYTHONPATH")) if p)
        procs = await asyncio.gather(
            *(
                asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "latbench.load.worker",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=env,
                )
                for _ in range(self.workers)
            )
        )
        self._workers = [_Worker(k, p) for k, p in enumerate(procs)]
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
            w.send(frame(pickle.dumps(shard, protocol=pickle.HIGHEST_PROTOCOL)))
        for w in self._workers:
            assert w.proc.stdout is not None
            ready = await read_frame(w.proc.stdout)
            if ready is None or orjson.loads(ready)[0] != "ready":
                raise WorkerError(
                    f"a worker process did not start (exit status {await _reap(w.proc)})"
                )
        if self._stopping:  # stopped while the workers started: they have nothing to do
            for w in self._workers:
                w.send(message("abort" if self._aborted else "stop"))

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
        self._add(self._announced(seq, sent, ErrorKind.CLIENT_ERROR, why))

    def _announced(
        self, seq: int, sent: tuple[int, int, Phase], error: ErrorKind, why: str
    ) -> Record:
        """The record of a request known only from its `s` frame."""
        t_intended, t_sent, phase = sent
        return Record.unanswered(
            self.run_id, seq, phase, self.endpoint.api.name, t_intended, t_sent, error, why
        )

    def _control(self, w: _Worker, m: list[Any], loop: asyncio.AbstractEventLoop) -> None:
        kind = m[0]
        if kind == "s":
            phase = m[4] if m[4] in _PHASES else "measure"
            w.pending[int(m[1])] = (int(m[2]), int(m[3]), phase)
        elif kind == "h":
            w.inflight = m[1]
            self._lag_ticks.extend(m[2])
            self._lags.extend(m[3])
            for lag in m[3]:
                publish_lag(loop, lag)
        elif kind == "end":
            w.cpu_s, w.wall_s, w.unsent = m[1], m[2], m[3]
            w.inflight = 0
            w.ended = True

    async def _drain(self, w: _Worker) -> None:
        stdout = w.proc.stdout
        assert stdout is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                payload = await read_frame(stdout)
            except ConnectionError:  # torn mid-frame: the worker died while writing
                break
            if payload is None:
                break
            try:
                m = orjson.loads(payload)
                kind = m[0]
            except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
                continue  # not a frame at all; its request, if any, is settled at the end
            if kind == "r":
                try:
                    rec = unpack_record(self.run_id, m)
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
        if w.proc.stdin is not None:
            w.proc.stdin.close()
        if w.ended:
            for seq in list(w.pending):
                self._unreadable(w, seq, "the worker ended without a readable record of it")
            return
        # It died mid-run: what it had in flight is lost; the other workers go on.
        status = await _reap(w.proc)
        w.inflight = 0
        w.death = f"worker {w.index} (pid {w.proc.pid}) died ({_describe_status(status)})"
        now = monotonic_ns()
        for seq, (t_intended, t_sent, phase) in sorted(w.pending.items()):
            sent = (t_intended, min(t_sent, now), phase)
            why = f"{w.death} with this request in flight"
            self._add(self._announced(seq, sent, ErrorKind.LOST, why))
        w.death += f" with {len(w.pending)} requests in flight, recorded as lost"
        w.pending.clear()

    def _outcome(self) -> RunOutcome:
        ws, we = self._window()
        lags = [lag for t, lag in zip(self._lag_ticks, self._lags, strict=True) if ws <= t < we]
        # Each worker's loop runs on one core: the busiest one is the one that runs out first.
        busiest = max(self._workers, key=lambda w: w.cpu_s / w.wall_s if w.wall_s else 0.0)
        client = ClientStats(
            loop_lag_ns=lags,
            cpu_s=busiest.cpu_s,
            wall_s=busiest.wall_s,
            open_loop=self.load.open_loop,
            unsent=sum(w.unsent for w in self._workers),
        )
        ended = "aborted" if self._aborted else ("stopped" if self._stopped_at else "completed")
        deaths = [w.death for w in self._workers if w.death is not None]
        incomplete = "; ".join(deaths) if deaths else None
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

    def _window(self) -> tuple[int, int]:
        """[start, end) of the measurement: the records' own (`summary.samples.derived_window`,
        which a summary of a file without this footer derives too, so both read the same), cut
        where a stop ended the sending: after it the load drains, and a rate over the drain
        would not be the load's. Without a measured request, an empty window at the start."""
        start, end = derived_window(self.records, self.load) or (self._start, self._start)
        if self._stopped_at is not None:
            end = min(end, self._stopped_at)
        return start, max(end, start)


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"exit status {status}, {signal.Signals(-status).name}"
        except ValueError:
            pass
    return f"exit status {status}"


async def _reap(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> int:
    """Wait for a worker to exit; one that hangs after its stream ended is killed."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        return await proc.wait()
