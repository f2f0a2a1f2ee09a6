"""The run manager: queues admitted runs, runs them through `run_benchmark`, tracks their life.

A run is queued, then running, then one of: completed, failed (it could not run: target down,
bad key), cancelled (a caller asked), interrupted (the service stopped during it). Runs against
one target wait in line (`max_concurrent_runs` of a target at once, default 1), so two benchmarks
never overlap on one target; `limits.max_running_runs` caps runs at once over all targets,
because they share one event loop and one core of client time.

Every state change is written to the store before it is announced, so what a client following a
run sees has already survived a crash. A run's records are on disk as they finish; a run that
ends without a summary from the runner (killed, failed mid-way) gets one from its records.

A run placed on agents (`agents: N`, `location`) takes them from the service's pool when its
turn comes, waiting up to `agents.wait` for them to be free, and gives them back at its end;
they are lent to one run at a time. Its records say which agent and location sent each request.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from rich.console import Console

from latbench.agents.pool import AgentError, AgentPool
from latbench.exporter import LatbenchMetrics
from latbench.load.runner import Runner
from latbench.records.rundir import RunDir
from latbench.run.benchmark import Agents, new_run_id, public_spec, run_benchmark
from latbench.service import agents as service_agents
from latbench.service.admit import Admitted, Refused, admit, scenario_label
from latbench.service.config import ServiceConfig
from latbench.service.progress import RunProgress
from latbench.service.store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    TERMINAL,
    RunRow,
    Store,
)
from latbench.shared.errors import LatbenchError
from latbench.spec import RunSpec, load_spec
from latbench.summary.summary import summarize_file

log = logging.getLogger("latbench.service")

# The runner cuts what is in flight at duration + load.overtime (records say `overtime`); this
# much later the service stops the whole run, should anything else in it hang.
BACKSTOP_S = 30.0
# Cancelled requests end at once; this only bounds a wait that should take milliseconds.
ABORT_WAIT_S = 10.0


@dataclass(eq=False)
class Active:
    """A run that is queued or running, in memory next to its stored row."""

    row: RunRow
    spec: RunSpec
    scenario: str  # its Prometheus scenario label
    agents: int | None = None  # run on this many of the pool's agents (None: local workers)
    location: str | None = None  # ... of this location
    progress: RunProgress = field(default_factory=RunProgress)
    bench: asyncio.Task[Any] | None = None
    runner: Runner | None = None
    cancel_requested: bool = False
    shutting_down: bool = False
    overtime: bool = False

    def stop_now(self) -> None:
        """Cancel what is in flight: through the runner once it runs (its records then say
        `cancelled`), else the preflight's task."""
        if self.runner is not None:
            self.runner.abort()
        elif self.bench is not None:
            self.bench.cancel()


def summary_from_records(run: RunDir, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of whatever a run's records file holds (a run killed mid-way has no footer:
    its window is then derived from the records, as `latbench summary` does)."""
    if not run.records.exists():
        return None
    f = run.read_records()
    return summarize_file(f, load_spec(spec, source=str(run.records))).to_dict()


class RunManager:
    def __init__(
        self,
        config: ServiceConfig,
        store: Store,
        metrics: LatbenchMetrics,
        urls: dict[str, str],
        pool: AgentPool | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.urls = urls
        self.pool = pool  # the agents' pool, when the config has an agents section
        self.queued: list[Active] = []
        self.running: dict[str, Active] = {}
        self.finished: Counter[str] = Counter()
        self.draining = False
        self._admitting = 0  # submissions past the queue check, being stored
        self._tasks: set[asyncio.Task[None]] = set()
        self._abort_now = asyncio.Event()
        # run_benchmark prints a run's warnings and server-metrics notes on its console; the
        # service has many runs and no terminal of its own, so that console writes nowhere.
        self._console = Console(file=io.StringIO())

    def run_dir(self, run_id: str) -> RunDir:
        return RunDir(self.config.runs_dir / run_id)

    def records_path(self, run_id: str) -> Path:
        return self.run_dir(run_id).records

    def active(self, run_id: str) -> Active | None:
        if run_id in self.running:
            return self.running[run_id]
        return next((a for a in self.queued if a.row.id == run_id), None)

    def actives(self) -> Iterator[Active]:
        yield from self.queued
        yield from self.running.values()

    async def get(self, run_id: str) -> RunRow | None:
        a = self.active(run_id)
        return a.row if a is not None else await self.store.get(run_id)

    # -- start and restart -------------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: runs that were in flight are interrupted (their records kept and
        summarized); queued ones are admitted again against the current config and queued."""
        for row in await self.store.in_state(RUNNING):
            row.state, row.ended_at = INTERRUPTED, time.time()
            row.error = "the service stopped while this run was in flight; its records are kept"
            try:
                row.summary = await asyncio.to_thread(
                    summary_from_records, self.run_dir(row.id), row.spec
                )
            except LatbenchError as e:
                row.error += f" (they cannot be summarized: {e})"
            await self.store.update(row)
            self.finished[INTERRUPTED] += 1
            log.warning("run %s was interrupted by a restart; marked interrupted", row.id)
        for row in await self.store.in_state(QUEUED):
            try:
                admitted = admit(row.request, self.config, self.urls)
            except Refused as e:
                row.state, row.ended_at = FAILED, time.time()
                row.error = f"not queued again after a restart: {e.message}"
                await self.store.update(row)
                continue
            row.spec = public_spec(admitted.spec)
            self.queued.append(self._active(row, admitted))
        await self.prune()
        self._dispatch()

    def _active(self, row: RunRow, admitted: Admitted) -> Active:
        scenario = scenario_label(admitted.spec, self.config, row.schedule)
        return Active(row, admitted.spec, scenario, admitted.agents, admitted.location)

    # -- submit, dispatch, run -----------------------------------------------------------------

    async def submit(self, admitted: Admitted, schedule: str | None = None) -> RunRow:
        if self.draining:
            raise Refused(503, "the service is shutting down; submit again once it is back")
        # The check and the enqueue are one step for the event loop: a run counts against the
        # cap from here, before the store's await, so a burst of submissions cannot all pass
        # the check while the first ones are still being stored (300 were, with a cap of 20).
        if len(self.queued) + self._admitting >= self.config.limits.max_queued_runs:
            raise Refused(
                429,
                f"{len(self.queued) + self._admitting} runs are queued, the most this service "
                "holds (limits.max_queued_runs); try again when some have run",
            )
        self._admitting += 1
        try:
            row = await self._store_new(admitted, schedule)
        finally:
            self._admitting -= 1
        self.queued.append(self._active(row, admitted))
        log.info(
            "run %s queued: target %s, %s", row.id, row.target,
            f"schedule {schedule}" if schedule else "submitted",
        )  # fmt: skip
        self._dispatch()
        return row

    async def _store_new(self, admitted: Admitted, schedule: str | None) -> RunRow:
        row = RunRow(
            id=new_run_id(),
            target=admitted.target,
            name=admitted.spec.name,
            schedule=schedule,
            state=QUEUED,
            created_at=time.time(),
            request=admitted.request,
            spec=public_spec(admitted.spec),
        )
        await self.store.insert(row)
        return row

    def _dispatch(self) -> None:
        if self.draining:
            return
        per_target = Counter(a.row.target for a in self.running.values())
        for a in list(self.queued):
            if len(self.running) >= self.config.limits.max_running_runs:
                return
            if per_target[a.row.target] >= self.config.targets[a.row.target].max_concurrent_runs:
                continue
            self.queued.remove(a)
            self.running[a.row.id] = a
            per_target[a.row.target] += 1
            a.row.state = RUNNING
            task = asyncio.create_task(self._execute(a), name=f"latbench-run-{a.row.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, a: Active) -> None:
        row = a.row
        row.started_at = time.time()
        try:
            await self.store.update(row)
            a.progress.notify()
            log.info("run %s started", row.id)
            if not (a.cancel_requested or a.shutting_down):
                await self._bench(a)
            else:
                row.state = INTERRUPTED if a.shutting_down else CANCELLED
        except Exception as e:  # the store failed: the run's state is still announced
            log.exception("run %s: internal error", row.id)
            row.state, row.error = FAILED, f"internal error: {type(e).__name__}: {e}"
        finally:
            row.ended_at = time.time()
            await self._finish(a)

    async def _bench(self, a: Active) -> None:
        row = a.row

        def on_runner(runner: Runner) -> None:
            a.runner = runner
            if a.cancel_requested or a.shutting_down:
                runner.abort()

        agents = None
        if a.agents is not None:
            if self.pool is None or self.config.agents is None:  # a restart without the section
                row.state, row.error = FAILED, "the run is on agents; the service has none now"
                return
            agents = Agents(
                self.pool,
                a.agents,
                time.monotonic() + self.config.agents.wait,
                a.location,
                finish=False,  # they go back to the pool, for the next run
            )
        bench = asyncio.create_task(
            run_benchmark(
                a.spec,
                a.spec.target.base_url or self.urls[row.target],
                self._console,
                on_runner=on_runner,
                metrics=self.metrics,
                run_id=row.id,
                progress=a.progress,
                target_label=row.target,
                scenario_label=a.scenario,
                agents=agents,
            )
        )
        a.bench = bench
        assert a.spec.load.duration is not None  # admission fills it in
        overtime = asyncio.get_running_loop().call_later(
            a.spec.load.duration + a.spec.load.overtime + BACKSTOP_S, self._overtime, a
        )
        try:
            await asyncio.wait([bench])
        finally:
            overtime.cancel()
        if bench.cancelled():
            row.state = INTERRUPTED if a.shutting_down else CANCELLED
            return
        exc = bench.exception()
        if exc is not None:
            row.state = FAILED
            if isinstance(exc, AgentError) and agents is not None and self.config.agents:
                assert self.pool is not None and a.agents is not None
                row.error = service_agents.shortfall(
                    self.pool, a.agents, a.location, self.config.agents.wait
                )
            elif isinstance(exc, LatbenchError):
                row.error = str(exc)
            else:
                log.error("run %s: internal error", row.id, exc_info=exc)
                row.error = f"internal error: {type(exc).__name__}: {exc}"
            return
        result = bench.result()
        row.summary = result.summary.to_dict()
        if result.reconciliation is not None:  # as `latbench run --json` prints it
            row.summary["reconciliation"] = result.reconciliation.to_dict()
        row.ended = result.ended
        row.state = INTERRUPTED if a.shutting_down else CANCELLED if a.cancel_requested else (
            COMPLETED
        )  # fmt: skip
        if a.overtime:
            row.error = (
                f"the run was stopped {a.spec.load.overtime + BACKSTOP_S:g} s after its load "
                "duration"
            )
        if result.incomplete is not None and row.state == COMPLETED:
            # A worker died: what it had in flight is recorded as lost, the rest is measured.
            row.state = FAILED
            row.error = f"incomplete: {result.incomplete}; its records and results are kept"

    def _overtime(self, a: Active) -> None:
        log.warning(
            "run %s: still running %g s after its duration; cancelling",
            a.row.id,
            a.spec.load.overtime + BACKSTOP_S,
        )
        a.overtime = True
        a.stop_now()

    async def _finish(self, a: Active) -> None:
        row = a.row
        if row.state == INTERRUPTED and row.error is None:
            row.error = "the service shut down during this run; its records are kept"
        if row.summary is None:
            try:
                row.summary = await asyncio.to_thread(
                    summary_from_records, self.run_dir(row.id), row.spec
                )
            except LatbenchError as e:
                log.warning("run %s: records cannot be summarized: %s", row.id, e)
        try:
            await self.store.update(row)
        except Exception:
            log.exception("run %s: could not store its end (%s)", row.id, row.state)
        self.running.pop(row.id, None)
        self.finished[row.state] += 1
        a.progress.notify()
        log.info("run %s %s%s", row.id, row.state, f": {row.error}" if row.error else "")
        self._dispatch()
        if not self.draining:
            await self.prune()

    # -- cancel, prune, drain ------------------------------------------------------------------

    async def cancel(self, run_id: str) -> RunRow:
        a = self.active(run_id)
        if a is not None and a in self.queued:
            self.queued.remove(a)
            a.row.state, a.row.ended_at = CANCELLED, time.time()
            await self.store.update(a.row)
            self.finished[CANCELLED] += 1
            a.progress.notify()
            log.info("run %s cancelled while queued", run_id)
            return a.row
        if a is not None:
            a.cancel_requested = True
            a.stop_now()
            log.info("run %s: cancel requested", run_id)
            return a.row
        row = await self.store.get(run_id)
        if row is None:
            raise Refused(404, f"no run {run_id!r}")
        raise Refused(409, f"run {run_id} already ended ({row.state}); nothing to cancel")

    async def prune(self) -> list[str]:
        r = self.config.retention
        ids = await self.store.prune(r.max_age, r.max_runs)
        for run_id in ids:
            await asyncio.to_thread(shutil.rmtree, self.run_dir(run_id).path, ignore_errors=True)
        if ids:
            log.info("retention: deleted %d runs", len(ids))
        return ids

    def abort_now(self) -> None:
        """A second signal: stop waiting for running runs."""
        self._abort_now.set()

    async def drain(self, grace_s: float) -> None:
        """Shutdown: start nothing more; give running runs `grace_s` to finish, then cancel
        what is in flight. Queued runs stay queued in the store and run after a restart."""
        self.draining = True
        for a in self.queued:
            a.progress.notify()  # clients following a queued run learn the service is going
        if self.running:
            log.info(
                "shutting down: %d runs running; they have %g s to finish",
                len(self.running), grace_s,
            )  # fmt: skip
        await self._wait_runs(grace_s)
        for a in list(self.running.values()):
            a.shutting_down = True
            a.stop_now()
            log.warning("run %s cancelled by the shutdown; its records are kept", a.row.id)
        await self._wait_runs(ABORT_WAIT_S, abortable=False)

    async def _wait_runs(self, timeout: float, abortable: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stop = asyncio.ensure_future(self._abort_now.wait())
        try:
            while self._tasks and not (abortable and stop.done()):
                left = deadline - loop.time()
                if left <= 0:
                    return
                waiting: set[asyncio.Future[Any]] = {*self._tasks, stop}
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    # -- service metrics -------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "latbench_service_runs", "Runs queued or running in the service.", labels=["state"]
        )
        g.add_metric([QUEUED], len(self.queued))
        g.add_metric([RUNNING], len(self.running))
        yield g
        c = CounterMetricFamily(
            "latbench_service_runs_finished",
            "Runs that ended since the service started, by final state.",
            labels=["state"],
        )
        for state in sorted(TERMINAL):
            c.add_metric([state], self.finished[state])
        yield c

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("latbench_service_runs", "", labels=["state"])
        yield CounterMetricFamily("latbench_service_runs_finished", "", labels=["state"])
