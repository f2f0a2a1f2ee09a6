"""A simulated LLM server with configurable latency, load, rate limit and faults.

It streams like vLLM (or, with `api`, like Anthropic's Messages or OpenAI's Responses API, or
replays recorded streams byte for byte), paces tokens on a seeded latency model (see
`latbench.sim.engine` for the load formula), injects faults on request, and reports what it
actually did at `/sim/truth`, so latbench can be tested against a server whose behaviour is known.
It also serves vLLM's own Prometheus metrics at `/metrics`, from the same instants.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "FaultSpec",
    "SimConfig",
    "SimError",
    "SimProcess",
    "capacity_rps",
    "create_app",
    "events_for",
    "service_time_s",
]

# Imported on first use, as latbench's own face is: the spec embeds the simulator's config, so
# every process that reads a spec (each worker among them) imports this package, and needs
# neither the server nor aiohttp's web framework.
_HOME = {
    "FaultSpec": "latbench.sim.config",
    "SimConfig": "latbench.sim.config",
    "SimError": "latbench.sim.process",
    "SimProcess": "latbench.sim.process",
    "capacity_rps": "latbench.sim.engine",
    "events_for": "latbench.sim.engine",
    "service_time_s": "latbench.sim.engine",
    "create_app": "latbench.sim.server",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'latbench.sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from latbench.sim.config import FaultSpec, SimConfig
    from latbench.sim.engine import capacity_rps, events_for, service_time_s
    from latbench.sim.process import SimError, SimProcess
    from latbench.sim.server import create_app
