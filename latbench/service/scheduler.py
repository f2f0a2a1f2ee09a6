"""Scheduled probes: light runs against catalogue targets, every interval or on a cron line.

`next_fire` is a pure function of (schedule, instant, random draw), tested on its own; the
`Scheduler` task only sleeps until the earliest one and submits. A schedule whose previous run
is still queued or running skips its turn (counted), so a slow or down target never piles up
probes. Cron lines are read in UTC by croniter, the maintained cron parser for Python.

A schedule that names `locations` submits one probe per location at each firing, each on that
location's agents (`agents`, default 1), and each skips on its own while its previous probe is
still going. A location with no agent gets its probe all the same: it fails after the wait
(agents.wait) with a recorded error that says so, and the other locations are probed as usual.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from latbench.service.admit import Refused, admit
from latbench.service.config import ScheduleConfig, ServiceConfig
from latbench.service.runs import RunManager

log = logging.getLogger("latbench.service")


def next_fire(s: ScheduleConfig, after: float, u: float) -> float:
    """The Unix time at which `s` fires next after `after`, with `u` in [0, 1) drawing its
    jitter. An interval schedule counts from `after` (the previous firing, or the start)."""
    jitter = u * s.jitter
    if s.cron is not None:
        base = croniter(s.cron, datetime.fromtimestamp(after, UTC)).get_next(float)
        return float(base) + jitter
    assert s.every is not None
    return after + s.every + jitter


def first_fire(s: ScheduleConfig, start: float, u: float) -> float:
    """Interval schedules fire soon after the start (within their jitter), so a restarted
    service shows fresh figures at once; cron schedules wait for their next slot."""
    if s.cron is not None:
        return next_fire(s, start, u)
    return start + u * s.jitter


def schedule_request(
    s: ScheduleConfig, agents: int | None = None, location: str | None = None
) -> dict[str, Any]:
    """The submission of one probe of `s` (on `agents` of `location`, for one with locations)."""
    request = {"name": s.name, **s.spec, "target": s.target}
    if agents is not None:
        request["agents"] = agents
    if location is not None:
        request["location"] = location
    return request


def check_schedules(config: ServiceConfig, urls: dict[str, str]) -> None:
    """At start: every schedule's spec is admitted (caps included), from each of its locations,
    or the service stops with the schedule and field named."""
    for s in config.schedules:
        for agents, location in s.placements():
            try:
                admit(schedule_request(s, agents, location), config, urls)
            except Refused as e:
                raise Refused(e.status, f"schedule {s.name!r}: {e.message}") from None


@dataclass(eq=False)  # a Collector in a registry: hashed by identity
class Scheduler:
    config: ServiceConfig
    manager: RunManager
    rng: random.Random

    def __post_init__(self) -> None:
        self.next_at: dict[str, float] = {}
        self.last_run: dict[str, str] = {}
        self.fired: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    async def run(self) -> None:
        now = time.time()
        by_name = {s.name: s for s in self.config.schedules}
        for s in self.config.schedules:
            self.next_at[s.name] = first_fire(s, now, self.rng.random())
        while by_name:
            name = min(self.next_at, key=self.next_at.__getitem__)
            await asyncio.sleep(max(0.0, self.next_at[name] - time.time()))
            s = by_name[name]
            await self._fire(s)
            self.next_at[name] = next_fire(
                s, max(time.time(), self.next_at[name]), self.rng.random()
            )

    async def _fire(self, s: ScheduleConfig) -> None:
        for agents, location in s.placements():
            await self._fire_one(s, agents, location)

    async def _fire_one(self, s: ScheduleConfig, agents: int | None, location: str | None) -> None:
        name = s.name if location is None else f"{s.name} ({location})"
        busy = any(
            a.row.schedule == s.name and a.location == location for a in self.manager.actives()
        )
        if busy:
            self.skipped[s.name] += 1
            log.info("schedule %s: previous run still going; skipped", name)
            return
        try:
            request = schedule_request(s, agents, location)
            row = await self.manager.submit(
                admit(request, self.config, self.manager.urls), schedule=s.name
            )
        except Refused as e:  # queue full, shutting down
            self.skipped[s.name] += 1
            log.warning("schedule %s: not submitted: %s", name, e.message)
            return
        except Exception:  # the store failed; the next firing tries again
            self.skipped[s.name] += 1
            log.exception("schedule %s: not submitted", name)
            return
        self.fired[s.name] += 1
        self.last_run[s.name] = row.id

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            "latbench_service_schedule_firings",
            "Scheduled probe firings since the service started: submitted, or skipped because "
            "the schedule's previous run was still going (or the queue was full).",
            labels=["schedule", "outcome"],
        )
        for s in self.config.schedules:
            c.add_metric([s.name, "submitted"], self.fired[s.name])
            c.add_metric([s.name, "skipped"], self.skipped[s.name])
        yield c

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "latbench_service_schedule_firings", "", labels=["schedule", "outcome"]
        )
