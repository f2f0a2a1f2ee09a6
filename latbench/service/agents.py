"""The service's agents: who is registered, what a run asking for some is told, and their gauge.

`latbench serve` with an `agents` section runs an `agents.pool.AgentPool` for its life (app.py);
its agents stay connected between runs (the pool welcomes them with `stay`). A submission asks
for `agents: N` (of a `location`); it is refused at once (409) when fewer are registered than it
asks for, since waiting could not help unless someone starts more, and told which are; a run
that is admitted waits, when its turn comes, up to `agents.wait` for that many to be free (the
pool lends an agent to one run at a time), or for one that lost its connection to come back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from latbench.agents.pool import AgentConn, AgentPool
from latbench.exporter import LatbenchMetrics
from latbench.exporter.series import REMOTE
from latbench.service.admit import Refused


def connected(pool: AgentPool) -> list[AgentConn]:
    """The registered agents (clock measured, still connected), by index."""
    return sorted((a for a in pool.agents.values() if not a.closed), key=lambda a: a.index)


def where(location: str | None) -> str:
    return "" if location is None else f" in location {location!r}"


def registry(pool: AgentPool) -> str:
    """What is registered, for error messages: "3 agents: 2 in eu-west (1 busy), 1 in us-east"."""
    agents = connected(pool)
    if not agents:
        return "no agent is registered"
    by: dict[str, list[AgentConn]] = {}
    for a in agents:
        by.setdefault(a.location or "(no location)", []).append(a)
    parts = []
    for loc, group in sorted(by.items()):
        busy = sum(a.busy for a in group)
        parts.append(f"{len(group)} in {loc}" + (f" ({busy} busy)" if busy else ""))
    return f"{len(agents)} agent{'s' if len(agents) > 1 else ''} registered: " + ", ".join(parts)


def how_to_start(pool: AgentPool, location: str | None) -> str:
    loc = "" if location is None else f" --location {location}"
    return (
        f"start one with: latbench agent --coordinator {pool.url} --token-file FILE{loc} "
        "(the service's agent token)"
    )


def check_registered(pool: AgentPool, n: int, location: str | None) -> None:
    """Refused(409) when fewer than `n` agents (of `location`) are registered: a submission that
    could only fail after its wait is told now, and what is there."""
    everyone = connected(pool)
    have = [a for a in everyone if location is None or a.location == location]
    if len(have) >= n:
        return
    if not have:
        what = f"no agent is registered{where(location)}"
        if everyone:  # the wrong location, then: say which are there
            what += f" ({registry(pool)})"
    else:
        indexes = ", ".join(str(a.index) for a in have)
        are = "is" if len(have) == 1 else "are"
        what = (
            f"the run asks for {n} agents{where(location)} and {len(have)} {are} registered "
            f"(index {indexes})"
        )
    raise Refused(409, f"{what}; {how_to_start(pool, location)}")


def shortfall(pool: AgentPool, n: int, location: str | None, wait_s: float) -> str:
    """Why a run's wait for its agents ended without them (its recorded error)."""
    return (
        f"{n} free agent{'s' if n > 1 else ''}{where(location)} did not come within "
        f"{wait_s:g} s (agents.wait): {registry(pool)}; {how_to_start(pool, location)}"
    )


def _time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def agent_json(a: AgentConn) -> dict[str, Any]:
    """An agent as GET /api/v1/agents lists it."""
    return {
        "index": a.index,
        "location": a.location,
        "host": a.host,
        "pid": a.hello.pid,
        "workers": a.workers,
        "busy": a.busy,
        "offset_ns": a.offset_ns,
        "uncertainty_ns": a.uncertainty_ns,
        "rtt_ns": a.rtt_ns,
        "flagged": a.flagged,
        "connected_at": _time(a.connected_at),
    }


class AgentGauge:
    """`latbench_service_agents{location, state}`: registered agents, idle or busy. Its location
    values are looked up in the exporter's own bounded set (`LatbenchMetrics.peek_locations`),
    so a run's series and this gauge name a place alike, without the gauge taking a value."""

    def __init__(self, pool: AgentPool, metrics: LatbenchMetrics) -> None:
        self.pool = pool
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "latbench_service_agents",
            "Agents registered with the service, by location and state (idle, busy).",
            labels=["location", "state"],
        )
        agents = connected(self.pool)
        # Peeked, not taken: an agent that connects and leaves without a run must not hold one
        # of the bounded location values for the process's life.
        label = self.metrics.peek_locations(a.location or REMOTE for a in agents)
        counts: Counter[tuple[str, str]] = Counter()
        for a in agents:
            counts[label[a.location or REMOTE], "busy" if a.busy else "idle"] += 1
        for (loc, state), n in sorted(counts.items()):
            g.add_metric([loc, state], n)
        yield g

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("latbench_service_agents", "", labels=["location", "state"])
