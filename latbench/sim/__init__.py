"""A simulated LLM server with configurable latency, load, rate limit and faults.

It streams like vLLM (or, with `api`, like Anthropic's Messages or OpenAI's Responses API, or
replays recorded streams byte for byte), paces tokens on a seeded latency model (see
`latbench.sim.engine` for the load formula), charges prompts for what a real server does (a
vLLM-style prefix cache, context length, images: `latbench.sim.prefix`, `latbench.sim.prompt`),
answers requests that offer tools with tool calls as an agent's model does, injects faults on
request, and reports what it actually did at `/sim/truth`, so latbench can be tested against a
server whose behaviour is known.
It also serves vLLM's own Prometheus metrics at `/metrics`, from the same instants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from latbench.shared.lazy import lazy_face

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
    "latbench.sim.config": ("FaultSpec", "SimConfig"),
    "latbench.sim.process": ("SimError", "SimProcess"),
    "latbench.sim.engine": ("capacity_rps", "events_for", "service_time_s"),
    "latbench.sim.server": ("create_app",),
}
__getattr__, __dir__ = lazy_face(__name__, globals(), _HOME)


if TYPE_CHECKING:
    from latbench.sim.config import FaultSpec, SimConfig
    from latbench.sim.engine import capacity_rps, events_for, service_time_s
    from latbench.sim.process import SimError, SimProcess
    from latbench.sim.server import create_app
