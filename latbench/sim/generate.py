"""Generation: a validated request planned by the engine, then streamed (or answered whole) on
the engine's timetable, in the route's API format, with the faults `SimConfig.faults` asks for.

Faults apply to generation requests that passed validation, counted per process; when several
match a request the first one wins. Each event is stamped in the truth as it is handed to the
socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import orjson
from aiohttp import web

from latbench.sim.anthropic_format import AnthropicStream
from latbench.sim.arrival import arrival_ns
from latbench.sim.config import FaultSpec
from latbench.sim.engine import FinishReason, Pacer, Plan, TruthEntry
from latbench.sim.formats import TOOL_NAME, ApiError, Encoder
from latbench.sim.replies import api_error, check_auth
from latbench.sim.request import Api, GenRequest, parse_request
from latbench.sim.responses_format import ResponsesStream
from latbench.sim.state import STATE, SimState
from latbench.sim.vllm_format import Chunks

_VOCAB = ("the", "of", "and", "to", "in", "is", "that", "it", "for", "on", "with", "as", "was")
_CONTENT_WORDS = tuple(" " + w for w in _VOCAB)
_REASONING_WORDS = tuple(" " + w for w in ("think", "so", "then", "maybe", "check", "hence"))
_MID_STREAM_FAULTS = frozenset({"malformed", "truncate", "stall_mid", "error_event"})
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _texts(plan: Plan) -> list[str]:
    """Each event's text: one vocabulary word, with its leading space, per token. A tool call's
    first event is its name (the encoder writes it: its text is empty), and the rest are pieces
    of its arguments, which put together are the JSON object {"query": "<words>"}."""
    out: list[str] = []
    i = 0
    for kind, n in plan.events:
        words = _REASONING_WORDS if kind == "reasoning" else _CONTENT_WORDS
        out.append("".join(words[(i + j) % len(words)] for j in range(n)))
        i += n
    calls = [e for e, (kind, _) in enumerate(plan.events) if kind == "tool_call"]
    if calls:
        out[calls[0]] = ""
        if len(calls) > 1:
            out[calls[1]] = '{"query":"' + out[calls[1]]
            out[calls[-1]] += '"}'
    return out


def answer_tokens(plan: Plan, texts: list[str], tool_name: str) -> list[str]:
    """The tokens of the answer as a client resends it in the next turn: its text, then the
    call's name and arguments (prompt.py reads a resent answer in that order), so the prefix
    cache can hold the blocks the answer filled."""
    parts: list[str] = []
    called = False
    for (kind, _), text in zip(plan.events, texts, strict=True):
        if kind == "tool_call" and not called:
            parts.append(f" {tool_name} ")
            called = True
        parts.append(text)
    return "".join(parts).split()


def tool_arguments(plan: Plan, texts: list[str]) -> str | None:
    """The tool call's arguments as a whole (None without a call; {} when it had no pieces)."""
    args = [t for t, (k, _) in zip(texts, plan.events, strict=True) if k == "tool_call"]
    return None if not args else "".join(args) or "{}"


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completions")


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "anthropic")


async def _responses(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "responses")


# The generation route of each API kind.
ROUTES: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
    "completions": _completions,
    "chat": _chat_completions,
    "anthropic": _messages,
    "responses": _responses,
}


class _Generation(NamedTuple):
    """One validated generation request and what the simulator decided for it."""

    request: web.Request
    state: SimState
    req: GenRequest
    plan: Plan
    fault: FaultSpec | None
    entry: TruthEntry


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
    if (refused := check_auth(request, state.config)) is not None:
        return refused
    if request.content_type != "application/json":
        # vLLM (0.32) refuses any other content type, with exactly this 400.
        return api_error(
            api,
            400,
            "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
        )
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError as e:  # orjson.JSONDecodeError and bad UTF-8 are both ValueErrors
        return api_error(api, 400, f"Invalid JSON body: {e}")
    try:
        req = parse_request(api, body, state.config)
    except ApiError as e:
        return api_error(api, e.status, e.message, e.param)
    if state.limiter is not None and (wait := state.limiter.take(time.monotonic())) > 0:
        # Retry-After is whole seconds; OpenAI also sends the exact wait in retry-after-ms.
        headers = {"Retry-After": str(math.ceil(wait))}
        if api != "anthropic":
            headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        message = f"Simulated rate limit: {state.config.rate_limit:g} requests per second."
        return api_error(api, 429, message, headers=headers)

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
        return api_error(api, fault.status, message, headers=retry)

    plan = state.engine.plan(
        max_tokens=req.max_tokens,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        reasoning=api != "completions",
        tool_call=req.tool_call,
    )
    if any(kind == "tool_call" for kind, _ in plan.events):
        entry.tool_call = req.tool_name or TOOL_NAME
    g = _Generation(request, state, req, plan, fault, entry)
    return await (_stream(g) if req.stream else _respond(g))


async def _stream(g: _Generation) -> web.StreamResponse:
    request, state, req, plan, fault, entry = g
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
        async with state.engine.admit(plan, req.prompt, entry) as pacer:
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
        if state.engine.cache is not None:
            pacer.answered(answer_tokens(plan, texts, req.tool_name or TOOL_NAME))
        await resp.write(encoder.closing(completion, plan.finish_reason))
        await resp.write_eof()
        done = plan.finish_reason
    except ConnectionError:
        pass  # the client went away; its slot is already released
    finally:
        # A cut stream (fault, client gone) is observed like vLLM's aborts: latencies, no success.
        if pacer is not None:
            state.metrics.finished(entry, pacer.admit_ns, req.prompt_tokens, done)
            if state.spans is not None and done is not None:
                state.spans.finished(request.headers, req.api, entry, pacer.admit_ns)
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


async def _respond(g: _Generation) -> web.StreamResponse:
    """A non-streamed answer, sent once the whole generation time has passed."""
    request, state, req, plan, fault, entry = g
    if fault is not None and fault.kind == "stall_first":
        await _stall(state, fault.stall_s)
        return _cut(request)
    async with state.engine.admit(plan, req.prompt, entry) as pacer:
        for _, count in plan.events:
            await pacer.next_event()
            entry.event(count)  # for a non-stream request, truth is when each event was generated
    if fault is None and state.engine.cache is not None:
        pacer.answered(answer_tokens(plan, _texts(plan), req.tool_name or TOOL_NAME))
    try:
        return await _answer(g)
    finally:
        # Every fault left in `_answer` spoils the answer: only a fault-free one succeeded.
        done = plan.finish_reason if fault is None else None
        state.metrics.finished(entry, pacer.admit_ns, req.prompt_tokens, done)
        if state.spans is not None and done is not None:
            state.spans.finished(request.headers, req.api, entry, pacer.admit_ns)


async def _answer(g: _Generation) -> web.StreamResponse:
    """The non-streamed answer to a generated `plan`, or the fault that spoils it."""
    request, state, req, plan, fault, _ = g
    if fault is not None and fault.kind == "stall_mid":
        await _stall(state, fault.stall_s)
        return _cut(request)
    if fault is not None and fault.kind == "error_event":
        return api_error(req.api, 500, "Simulated fault: internal error.")
    texts = _texts(plan)
    reasoning = "".join(t for t, (k, _) in zip(texts, plan.events, strict=True) if k == "reasoning")
    content = "".join(t for t, (k, _) in zip(texts, plan.events, strict=True) if k == "content")
    body = orjson.dumps(
        make_encoder(req).full(plan, reasoning, content, tool_arguments(plan, texts))
    )
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
