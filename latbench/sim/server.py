"""The simulated LLM server: an aiohttp app that answers like vLLM's, on a timetable.

Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
`GET /metrics` (vLLM's own Prometheus metrics, `ServerMetrics` in vllm_metrics.py),
`GET /sim/truth[?raw=1]` and `POST /sim/truth/reset`. Streams are SSE framed exactly as vLLM
frames them (`data: <json>\\n\\n` ..., `data: [DONE]\\n\\n`). With `SimConfig.api` set to
`anthropic` or `responses`, the generation route is `POST /v1/messages` or `POST /v1/responses`
instead, in that API's format (`latbench.sim.anthropic_format`, `latbench.sim.responses_format`);
with `SimConfig.replay`, the routes are those of the transcripts, replayed byte for byte
(`latbench.sim.replay`). With `otlp_traces_endpoint` set, each finished request is also exported
as vLLM's OpenTelemetry span of it (`latbench.sim.spans`).

The vLLM personality also serves `POST /tokenize` as vLLM does (`{"count", "max_model_len",
"tokens"}`, by the simulator's count: a word is a token), so latbench calibrates its prompts
against the simulator as against vLLM (client/tokenize.py).

This module wires the app and serves the small routes; a request's validation is in request.py,
its generation in generate.py, the wire formats in vllm_format.py, anthropic_format.py and
responses_format.py (what they share in formats.py), the replies and errors in replies.py.
"""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from latbench.shared.buckets import TEXT_FORMAT
from latbench.sim.anthropic_format import anthropic_models
from latbench.sim.arrival import arrival_middleware
from latbench.sim.config import SimConfig
from latbench.sim.engine import Engine, Truth
from latbench.sim.formats import PATHS, PERSONALITY_APIS, ApiError
from latbench.sim.generate import ROUTES
from latbench.sim.ratelimit import TokenBucket
from latbench.sim.replay import Replayer, load_all, replay
from latbench.sim.replies import check_auth, error_response, json_response
from latbench.sim.request import tokenize_count
from latbench.sim.spans import SpanExporter
from latbench.sim.state import STATE, SimState
from latbench.sim.vllm_metrics import ServerMetrics


def create_app(config: SimConfig | None = None) -> web.Application:
    """The simulator as an aiohttp app (its host and port settings are the runner's business)."""
    cfg = config if config is not None else SimConfig()
    # Long-context benchmarks send prompts far above aiohttp's 1 MiB default body limit.
    app = web.Application(client_max_size=64 * 1024**2, middlewares=[arrival_middleware])
    engine = Engine(cfg)
    metrics = ServerMetrics(cfg.model, engine)
    registry = CollectorRegistry()
    registry.register(metrics)
    state = SimState(
        config=cfg,
        engine=engine,
        truth=Truth(cfg.truth_capacity),
        metrics=metrics,
        registry=registry,
    )
    if cfg.rate_limit is not None:
        state.limiter = TokenBucket(cfg.rate_limit)
    if cfg.otlp_traces_endpoint is not None:
        state.spans = SpanExporter(cfg)
        app.on_startup.append(_start_spans)
        app.on_cleanup.append(_stop_spans)
    app[STATE] = state
    if cfg.replay:
        state.replayer = Replayer(load_all(cfg.replay))
        for path in state.replayer.paths:
            app.router.add_post(path, _replay)
    else:
        for api in PERSONALITY_APIS[cfg.api]:
            app.router.add_post(PATHS[api], ROUTES[api])
        if cfg.api == "openai":  # vLLM's; the hosted APIs the others play serve none
            app.router.add_post("/tokenize", _tokenize)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/sim/truth", _truth)
    app.router.add_post("/sim/truth/reset", _truth_reset)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_shutdown(app: web.Application) -> None:
    # Ends stalls now rather than letting them hold shutdown for the whole shutdown timeout.
    app[STATE].stopping.set()


async def _start_spans(app: web.Application) -> None:
    spans = app[STATE].spans
    assert spans is not None
    await spans.start()


async def _stop_spans(app: web.Application) -> None:
    # After the streams have ended: the spans of the last requests are flushed, not lost.
    spans = app[STATE].spans
    assert spans is not None
    await spans.stop()


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (refused := check_auth(request, state.config)) is not None:
        return refused
    if state.config.api == "anthropic":
        return json_response(anthropic_models(state.config.model, state.created))
    model = {
        "id": state.config.model,
        "object": "model",
        "created": state.created,
        "owned_by": "latbench-sim",
        "max_model_len": state.config.max_model_len,
    }
    return json_response({"object": "list", "data": [model]})


async def _tokenize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (refused := check_auth(request, state.config)) is not None:
        return refused
    try:
        n = tokenize_count(await request.json(loads=orjson.loads), state.config)
    except ValueError as e:  # orjson.JSONDecodeError and bad UTF-8 are both ValueErrors
        return error_response(400, f"Invalid JSON body: {e}")
    except ApiError as e:
        return error_response(e.status, e.message, e.param)
    # Token ids are not simulated: zeros, as many as the count.
    body = {"count": n, "max_model_len": state.config.max_model_len, "tokens": [0] * n}
    return json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    # No auth, as vLLM's; always the classic text format, which keeps the `vllm:` names.
    body = generate_latest(request.app[STATE].registry)
    return web.Response(body=body, headers={"Content-Type": TEXT_FORMAT})


async def _truth(request: web.Request) -> web.Response:
    raw = request.query.get("raw", "") not in ("", "0", "false")
    state = request.app[STATE]
    out = state.truth.summary(raw=raw)
    if state.spans is not None:
        out["spans"] = state.spans.counts()
    return json_response(out)


async def _truth_reset(request: web.Request) -> web.Response:
    request.app[STATE].truth.reset()
    return json_response({"reset": True})


async def _replay(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    assert state.replayer is not None
    transcript = state.replayer.pick(request)
    if isinstance(transcript, str):
        return error_response(404, transcript)
    # A transcript's pieces are bytes, not token events: a replay only counts as running.
    state.metrics.replaying += 1
    try:
        return await replay(request, transcript, state.stopping)
    finally:
        state.metrics.replaying -= 1
