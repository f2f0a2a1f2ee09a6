"""A simulated LLM server with configurable latency, load, rate limit and faults.

It streams like vLLM (or, with `api`, like Anthropic's Messages or OpenAI's Responses API, or
replays recorded streams byte for byte), paces tokens on a seeded latency model (see
`latbench.sim.engine` for the load formula), injects faults on request, and reports what it
actually did at `/sim/truth`, so latbench can be tested against a server whose behaviour is known.
It also serves vLLM's own Prometheus metrics at `/metrics`, from the same instants.
"""

from latbench.sim.config import FaultSpec, SimConfig
from latbench.sim.engine import capacity_rps, events_for, service_time_s
from latbench.sim.process import SimError, SimProcess
from latbench.sim.server import create_app

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
