"""The simulated LLM server: an aiohttp app that answers like vLLM's, on a timetable.

Routes: `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
`GET /metrics` (vLLM's own Prometheus metrics, `ServerMetrics`), `GET /sim/truth[?raw=1]` and
`POST /sim/truth/reset`. Streams are SSE framed exactly as vLLM frames them
(`data: <json>\\n\\n` ..., `data: [DONE]\\n\\n`). With `SimConfig.api` set to
`anthropic` or `responses`, the generation route is `POST /v1/messages` or `POST /v1/responses`
instead, in that API's format (`latbench.sim.formats`); with `SimConfig.replay`, the routes are
those of the transcripts, replayed byte for byte (`latbench.sim.replay`).

The "tokenizer" counts one whitespace-separated word as one token, so prompt and completion
lengths are easy to predict in tests. Faults (`SimConfig.faults`) apply to generation requests
that passed validation, counted per process; when several match a request the first one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from latbench.shared.buckets import TEXT_FORMAT
from latbench.sim.arrival import arrival_middleware, arrival_ns
from latbench.sim.config import FaultSpec, SimConfig
from latbench.sim.engine import Engine, FinishReason, Pacer, Plan, ServerMetrics, Truth, TruthEntry
from latbench.sim.formats import (
    PATHS,
    PERSONALITY_APIS,
    AnthropicStream,
    ApiError,
    Encoder,
    ResponsesStream,
    anthropic_error_body,
    anthropic_models,
    anthropic_prompt_tokens,
    responses_prompt_tokens,
)
from latbench.sim.ratelimit import TokenBucket
from latbench.sim.replay import Replayer, load_all, replay

Api = Literal["completions", "chat", "anthropic", "responses"]

_VOCAB = ("the", "of", "and", "to", "in", "is", "that", "it", "for", "on", "with", "as", "was")
_CONTENT_WORDS = tuple(" " + w for w in _VOCAB)
_REASONING_WORDS = tuple(" " + w for w in ("think", "so", "then", "maybe", "check", "hence"))
_MID_STREAM_FAULTS = frozenset({"malformed", "truncate", "stall_mid", "error_event"})
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


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


STATE = web.AppKey("latbench_sim_state", SimState)


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
    app[STATE] = state
    if cfg.replay:
        state.replayer = Replayer(load_all(cfg.replay))
        for path in state.replayer.paths:
            app.router.add_post(path, _replay)
    else:
        handlers = {
            "completions": _completions,
            "chat": _chat_completions,
            "anthropic": _messages,
            "responses": _responses,
        }
        for api in PERSONALITY_APIS[cfg.api]:
            app.router.add_post(PATHS[api], handlers[api])
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


# --- small routes ---------------------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if (refused := _check_auth(request, state.config)) is not None:
        return refused
    if state.config.api == "anthropic":
        return _json(anthropic_models(state.config.model, state.created))
    model = {
        "id": state.config.model,
        "object": "model",
        "created": state.created,
        "owned_by": "latbench-sim",
        "max_model_len": state.config.max_model_len,
    }
    return _json({"object": "list", "data": [model]})


async def _metrics(request: web.Request) -> web.Response:
    # No auth, as vLLM's; always the classic text format, which keeps the `vllm:` names.
    body = generate_latest(request.app[STATE].registry)
    return web.Response(body=body, headers={"Content-Type": TEXT_FORMAT})


async def _truth(request: web.Request) -> web.Response:
    raw = request.query.get("raw", "") not in ("", "0", "false")
    return _json(request.app[STATE].truth.summary(raw=raw))


async def _truth_reset(request: web.Request) -> web.Response:
    request.app[STATE].truth.reset()
    return _json({"reset": True})


# --- errors ---------------------------------------------------------------------------------


def error_type(status: int) -> str:
    """vLLM's error type names: 400 -> BadRequestError, 503 -> ServiceUnavailableError."""
    try:
        name = HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        name = "ClientError" if status < 500 else "ServerError"
    return name if name.endswith("Error") else name + "Error"


def _error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    error = {"message": message, "type": error_type(status), "param": param, "code": status}
    return {"error": error}


def _error(
    status: int, message: str, param: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    return _json(_error_body(status, message, param), status=status, headers=headers)


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj),
        status=status,
        headers=headers,
        content_type="application/json",
        reason="Overloaded" if status == 529 else None,  # not in http.HTTPStatus
    )


def _api_error(
    api: Api,
    status: int,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error in the shape the route's API uses."""
    if api == "anthropic":
        return _json(anthropic_error_body(status, message), status=status, headers=headers)
    return _error(status, message, param, headers)


def _check_auth(request: web.Request, config: SimConfig) -> web.Response | None:
    """None when the request may proceed, else the refusal the real API would send."""
    anthropic = config.api == "anthropic"
    api: Api = "anthropic" if anthropic else "chat"
    if anthropic and "anthropic-version" not in request.headers:
        return _api_error(api, 400, "anthropic-version: header is required")
    if config.api_key is None:
        return None
    if anthropic:
        given = request.headers.get("x-api-key")
    else:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given if scheme.lower() == "bearer" else None
    if given != config.api_key:
        return _api_error(api, 401, "invalid x-api-key" if anthropic else "Invalid API key.")
    return None


# --- request parsing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenRequest:
    api: Api
    model: str
    prompt_tokens: int
    max_tokens: int
    min_tokens: int
    ignore_eos: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool


def parse_request(api: Api, body: object, config: SimConfig) -> GenRequest:
    """Validate a request body as vLLM would; raises ApiError with vLLM's status and message."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model", config.model)
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    if model != config.model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    prompt_tokens = _PROMPT_TOKENS[api](body)

    # Chat prefers the newer name, as vLLM does.
    key = (
        "max_completion_tokens"
        if api == "chat" and "max_completion_tokens" in body
        else "max_output_tokens"
        if api == "responses"
        else "max_tokens"
    )
    max_tokens = _opt_int(body, key)
    if max_tokens is None and api == "anthropic":
        raise ApiError(400, "max_tokens: Field required", "max_tokens")
    room = config.max_model_len - prompt_tokens
    if max_tokens is None:
        if room < 1:
            raise ApiError(400, _too_long(config, prompt_tokens, 1, api))
        max_tokens = min(config.default_max_tokens, room)
    if max_tokens < 1:
        raise ApiError(400, f"{key} must be at least 1, got {max_tokens}.", key)
    if max_tokens > room:
        raise ApiError(400, _too_long(config, prompt_tokens, max_tokens, api))
    min_tokens = _opt_int(body, "min_tokens") or 0
    if not 0 <= min_tokens <= max_tokens:
        raise ApiError(
            400,
            f"min_tokens must be between 0 and max_tokens ({max_tokens}), got {min_tokens}.",
            "min_tokens",
        )

    stream = _opt_bool(body, "stream")
    # Only the OpenAI-compatible APIs have stream_options; the others always report usage.
    options = body.get("stream_options") if api in ("chat", "completions") else None
    if options is not None and not stream:
        message = "Stream options can only be defined when `stream=True`."
        raise ApiError(400, message, "stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    options = options or {}
    include_usage = _opt_bool(options, "include_usage", "stream_options.include_usage")
    continuous = _opt_bool(
        options, "continuous_usage_stats", "stream_options.continuous_usage_stats"
    )
    return GenRequest(
        api=api,
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        ignore_eos=_opt_bool(body, "ignore_eos"),
        stream=stream,
        include_usage=include_usage,
        # As in vLLM, per-chunk usage is only sent when usage is asked for at all.
        continuous_usage=include_usage and continuous,
    )


def _too_long(config: SimConfig, prompt: int, completion: int, api: Api) -> str:
    where = {"chat": "messages", "anthropic": "messages", "responses": "input"}.get(api, "prompt")
    return (
        f"This model's maximum context length is {config.max_model_len} tokens. However, you "
        f"requested {prompt + completion} tokens ({prompt} in the {where}, {completion} in the "
        f"completion). Please reduce the length of the {where} or completion."
    )


def _prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "prompt is required", "prompt")
    # A one-element batch is unwrapped; real batches (n prompts, n choices) are not simulated.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list) and all(type(t) is int for t in prompt):
        return len(prompt)
    raise ApiError(400, "prompt must be a string or a list of token ids", "prompt")


def _chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages is required and must be a non-empty list", "messages")
    total = 0
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, "each message must be an object with a string role", "messages")
        content = m.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
        elif content is not None:
            raise ApiError(400, "message content must be a string or a list of parts", "messages")
    return total


_PROMPT_TOKENS = {
    "completions": _prompt_tokens,
    "chat": _chat_prompt_tokens,
    "anthropic": anthropic_prompt_tokens,
    "responses": responses_prompt_tokens,
}


def _opt_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise ApiError(400, f"{key} must be an integer, got {value!r}", key)
    return value


def _opt_bool(body: Mapping[str, Any], key: str, param: str | None = None) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{param or key} must be a boolean, got {value!r}", param or key)
    return value


# --- response bodies ------------------------------------------------------------------------


class Chunks:
    """Builds one request's SSE events and JSON bodies, shaped like vLLM's (an `Encoder`)."""

    __slots__ = ("_chat", "_head", "_prompt", "_req", "_started")

    def __init__(self, req: GenRequest) -> None:
        self._req = req
        self._started = False
        self._chat = req.api == "chat"
        self._prompt = req.prompt_tokens
        kind = ("chatcmpl", "chat.completion.chunk") if self._chat else ("cmpl", "text_completion")
        self._head = {
            "id": f"{kind[0]}-{uuid.uuid4().hex}",
            "object": kind[1],
            "created": int(time.time()),
            "model": req.model,
        }

    def usage(self, completion: int) -> dict[str, int]:
        p = self._prompt
        return {"prompt_tokens": p, "total_tokens": p + completion, "completion_tokens": completion}

    def role(self) -> bytes:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._event(choice, 0)

    def token(self, kind: str, text: str, finish: str | None, completion: int) -> bytes:
        if self._chat:
            delta = {"reasoning_content": text} if kind == "reasoning" else {"content": text}
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        return self._event(choice, completion)

    def final_usage(self, completion: int) -> bytes:
        return _sse({**self._head, "choices": [], "usage": self.usage(completion)})

    # The Encoder interface (latbench.sim.formats).
    def opening(self) -> bytes:
        return b""  # vLLM sends nothing before the first token

    def token_event(self, kind: str, text: str, finish: str | None, completion: int) -> bytes:
        data = self.token(kind, text, finish, completion)
        if self._chat and not self._started:
            data = self.role() + data  # one write: both leave in the same segment
        self._started = True
        return data

    def closing(self, completion: int, finish: str) -> bytes:
        usage = self.final_usage(completion) if self._req.include_usage else b""
        return usage + _DONE

    def error_event(self) -> bytes:
        error = {"message": "Simulated fault: error mid-stream.", "type": error_type(500)}
        return _sse({"error": {**error, "code": 500}}) + _DONE

    def end(self) -> bytes:
        return _DONE

    def _event(self, choice: dict[str, Any], completion: int) -> bytes:
        obj: dict[str, Any] = {**self._head, "choices": [choice]}
        if self._req.continuous_usage:
            obj["usage"] = self.usage(completion)
        elif not self._chat:
            obj["usage"] = None
        return _sse(obj)

    def full(self, plan: Plan, reasoning: str, content: str) -> dict[str, Any]:
        head = {**self._head, "object": "chat.completion" if self._chat else "text_completion"}
        if self._chat:
            message = {
                "role": "assistant",
                "content": content,
                "reasoning_content": reasoning or None,
                "tool_calls": [],
            }
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": content}
        choice.update(logprobs=None, finish_reason=plan.finish_reason, stop_reason=None)
        return {**head, "choices": [choice], "usage": self.usage(plan.completion_tokens)}


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _texts(plan: Plan) -> list[str]:
    """Each event's text: one vocabulary word, with its leading space, per token."""
    out: list[str] = []
    i = 0
    for kind, n in plan.events:
        words = _REASONING_WORDS if kind == "reasoning" else _CONTENT_WORDS
        out.append("".join(words[(i + j) % len(words)] for j in range(n)))
        i += n
    return out


# --- generation -----------------------------------------------------------------------------


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "anthropic")


async def _responses(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "responses")


async def _replay(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    assert state.replayer is not None
    transcript = state.replayer.pick(request)
    if isinstance(transcript, str):
        return _error(404, transcript)
    # A transcript's pieces are bytes, not token events: a replay only counts as running.
    state.metrics.replaying += 1
    try:
        return await replay(request, transcript, state.stopping)
    finally:
        state.metrics.replaying -= 1


def make_encoder(req: GenRequest) -> Encoder:
    if req.api == "anthropic":
        return AnthropicStream(req)
    if req.api == "responses":
        return ResponsesStream(req)
    return Chunks(req)


# Statuses that tell the client to come back later; Retry-After says when.
_RETRY_STATUSES = frozenset({429, 503, 529})


async def _generate(request: web.Request, api: Api) -> web.StreamResponse:
    handler_ns = time.monotonic_ns()
    state = request.app[STATE]
    if (refused := _check_auth(request, state.config)) is not None:
        return refused
    if request.content_type != "application/json":
        # vLLM (0.32) refuses any other content type, with exactly this 400.
        return _api_error(
            api,
            400,
            "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
        )
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError as e:  # orjson.JSONDecodeError and bad UTF-8 are both ValueErrors
        return _api_error(api, 400, f"Invalid JSON body: {e}")
    try:
        req = parse_request(api, body, state.config)
    except ApiError as e:
        return _api_error(api, e.status, e.message, e.param)
    if state.limiter is not None and (wait := state.limiter.take(time.monotonic())) > 0:
        # Retry-After is whole seconds; OpenAI also sends the exact wait in retry-after-ms.
        headers = {"Retry-After": str(math.ceil(wait))}
        if api != "anthropic":
            headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        message = f"Simulated rate limit: {state.config.rate_limit:g} requests per second."
        return _api_error(api, 429, message, headers=headers)

    state.requests += 1
    fault = next((f for f in state.config.faults if f.applies_to(state.requests)), None)
    entry = state.truth.start(
        arrival_ns(request, handler_ns), handler_ns, fault.kind if fault else None
    )
    if fault is not None and fault.kind == "http_status":
        retry = None
        if fault.status in _RETRY_STATUSES and fault.retry_after is not None:
            retry = {"Retry-After": str(fault.retry_after)}
        message = f"Simulated fault: HTTP {fault.status}."
        return _api_error(api, fault.status, message, headers=retry)

    plan = state.engine.plan(
        max_tokens=req.max_tokens,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        reasoning=api != "completions",
    )
    if req.stream:
        return await _stream(request, state, req, plan, fault, entry)
    return await _respond(request, state, req, plan, fault, entry)


async def _stream(
    request: web.Request,
    state: SimState,
    req: GenRequest,
    plan: Plan,
    fault: FaultSpec | None,
    entry: TruthEntry,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    # Headers go out at once, as vLLM's do; the role chunk only comes with the first token.
    await resp.prepare(request)
    encoder = make_encoder(req)
    opening = encoder.opening()  # Anthropic's message_start, Responses' response.created
    if opening:
        await resp.write(opening)
    if fault is not None and fault.kind == "stall_first":
        await _stall(state, fault.stall_s)
        return _cut(request, resp)
    n = len(plan.events)
    strike = min(fault.after, n) if fault is not None and fault.kind in _MID_STREAM_FAULTS else -1
    texts = _texts(plan)
    completion = 0
    pacer: Pacer | None = None
    done: FinishReason | None = None  # set once the stream has ended as it should
    try:
        async with state.engine.admit(plan) as pacer:
            for i, (kind, count) in enumerate(plan.events):
                if i == strike:
                    break
                await pacer.next_event()
                completion += count
                finish = plan.finish_reason if i == n - 1 else None
                event = encoder.token_event(kind, texts[i], finish, completion)
                # Stamped as it is handed to the socket, so that no client can see it earlier; a
                # write that waits for a full socket to drain waits on the client, and counts so.
                entry.event(count)
                await resp.write(event)
            if strike >= 0:
                assert fault is not None
                return await _strike(request, state, resp, fault, encoder)
        await resp.write(encoder.closing(completion, plan.finish_reason))
        await resp.write_eof()
        done = plan.finish_reason
    except ConnectionError:
        pass  # the client went away; its slot is already released
    finally:
        # A cut stream (fault, client gone) is observed like vLLM's aborts: latencies, no success.
        if pacer is not None:
            state.metrics.finished(entry, pacer.admit_ns, req.prompt_tokens, done)
    return resp


async def _strike(
    request: web.Request,
    state: SimState,
    resp: web.StreamResponse,
    fault: FaultSpec,
    encoder: Encoder,
) -> web.StreamResponse:
    """Break the stream the way `fault` says, after its `after` token events."""
    if fault.kind == "malformed":
        await resp.write(b"data: {not json\n\n" + encoder.end())
    elif fault.kind == "error_event":
        await resp.write(encoder.error_event())
    else:
        if fault.kind == "stall_mid":
            await _stall(state, fault.stall_s)
        return _cut(request, resp)
    await resp.write_eof()
    return resp


async def _respond(
    request: web.Request,
    state: SimState,
    req: GenRequest,
    plan: Plan,
    fault: FaultSpec | None,
    entry: TruthEntry,
) -> web.StreamResponse:
    """A non-streamed answer, sent once the whole generation time has passed."""
    if fault is not None and fault.kind == "stall_first":
        await _stall(state, fault.stall_s)
        return _cut(request)
    async with state.engine.admit(plan) as pacer:
        for _, count in plan.events:
            await pacer.next_event()
            entry.event(count)  # for a non-stream request, truth is when each event was generated
    try:
        return await _answer(request, state, req, plan, fault)
    finally:
        # Every fault left in `_answer` spoils the answer: only a fault-free one succeeded.
        done = plan.finish_reason if fault is None else None
        state.metrics.finished(entry, pacer.admit_ns, req.prompt_tokens, done)


async def _answer(
    request: web.Request,
    state: SimState,
    req: GenRequest,
    plan: Plan,
    fault: FaultSpec | None,
) -> web.StreamResponse:
    """The non-streamed answer to a generated `plan`, or the fault that spoils it."""
    if fault is not None and fault.kind == "stall_mid":
        await _stall(state, fault.stall_s)
        return _cut(request)
    if fault is not None and fault.kind == "error_event":
        return _api_error(req.api, 500, "Simulated fault: internal error.")
    texts = _texts(plan)
    reasoning = "".join(t for t, (k, _) in zip(texts, plan.events, strict=True) if k == "reasoning")
    content = "".join(t for t, (k, _) in zip(texts, plan.events, strict=True) if k == "content")
    body = orjson.dumps(make_encoder(req).full(plan, reasoning, content))
    if fault is not None and fault.kind == "malformed":
        return web.Response(body=b"{not json", content_type="application/json")
    if fault is not None and fault.kind == "truncate":
        # Promise the whole body, send half of it, hang up: the client sees a short read.
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        return _cut(request, resp)
    return web.Response(body=body, content_type="application/json")


async def _stall(state: SimState, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.stopping.wait(), seconds)


def _cut(request: web.Request, resp: web.StreamResponse | None = None) -> web.StreamResponse:
    """Hang up without finishing the response, so the client sees an abrupt end of stream."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp if resp is not None else web.StreamResponse()
