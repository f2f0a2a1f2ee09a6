"""What one simulator app shares between its requests, kept under `STATE` in the app."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from latbench.sim.config import SimConfig
from latbench.sim.engine import Engine, Truth
from latbench.sim.ratelimit import TokenBucket
from latbench.sim.replay import Replayer
from latbench.sim.spans import SpanExporter
from latbench.sim.vllm_metrics import ServerMetrics


@dataclass
class SimState:
    """Everything one app instance shares between requests."""

    config: SimConfig
    engine: Engine
    truth: Truth
    metrics: ServerMetrics
    registry: CollectorRegistry  # private to this app: holds only `metrics`
    created: int = field(default_factory=lambda: int(time.time()))
    requests: int = 0  # generation requests that passed validation, for fault counting
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    replayer: Replayer | None = None
    limiter: TokenBucket | None = None
    spans: SpanExporter | None = None  # with `otlp_traces_endpoint`: the span per request


STATE = web.AppKey("latbench_sim_state", SimState)
