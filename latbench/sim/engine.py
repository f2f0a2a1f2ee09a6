"""The simulator's latency and load model, and its record of what it actually did.

Latency model
-------------
Each request draws a TTFT from `ttft` and one step per later event from `itl` (seconds, seeded
RNG). It is planned as `E` events of at most `k = tokens_per_event` tokens each (reasoning tokens
first, then content, then a tool call), so `E = ceil(R / k) + ceil((N - R - T) / k) + ceil(T / k)`
for `N` output tokens of which `R = min(reasoning_tokens, N)` are reasoning and
`T = min(tool_call_tokens, N - R)` a tool call (`R = T = 0` for completions). A request that
offers tools sets `T` itself (request.py: a call of its first tool, or none once `tool_steps` tool
results answer its last user message); a call it gets whole ends the reply as the model's own
stop (finish reason `stop`: chat's `tool_calls`, Anthropic's `tool_use`).

What a prompt costs
-------------------
A request of `P` prompt tokens (prompt.py), `H` of them found in the prefix cache (prefix.py,
looked up when the request is admitted; `H = 0` with `prefix_cache: false`) and `I` images to
encode adds

    prefill = prefill_per_token * (P - H) + ttft_per_image * I

to its TTFT, and each of its steps grows with its context, the prompt and the `c_i` tokens
generated through event `i`:

    context_i = itl_per_context_token * (P + c_i)

An image is encoded unless the cached prefix already holds it. vLLM v1's scheduler skips the
encoder for an image whose placeholder tokens are all computed
(`_try_schedule_encoder_inputs` in vllm/v1/core/sched/scheduler.py: `start_pos +
num_encoder_tokens <= num_computed_tokens`), and the blocks covering them are keyed by the
image's hash, so a session's later turn, resending its history, pays only for the images after
the cached prefix. Here: an image at offset `o` (the prompt tokens before it) is cached when
`o + image_tokens <= H`. With `image_tokens: 0` an image has no tokens to key a block by, so it
counts as cached when it lies inside the cached prefix (`o < H`: a cached token follows it) and
the multi-modal cache has seen its data before (the same image resent in the same place of the
same history), and as new otherwise. vLLM's encoder cache, which may keep a recent image's
encoder output a while longer, is not modelled: it is sized for a step's images, not a history.

All default to 0, so by default a prompt costs nothing. There is no batch-level interference:
one request's prefill does not slow the others' decoding.

Load model
----------
At most `max_batch` (`B`) requests hold a decoding slot at once; the rest wait for one in FIFO
order (no limit when `max_batch` is None). A request is *admitted* at `t_admit` when it gets a
slot. Let `a` be the number of other requests holding a slot at that moment and `n_i` the number
holding one (itself included) when its event `i` is written. Its events are due at

    t_1     = t_admit + TTFT_draw + ttft_per_stream * a + prefill
    t_(i+1) = t_i + ITL_draw_i + itl_per_stream * (n_i - 1) + context_i

Each `t_i` is an absolute deadline on the event loop's clock: it is computed from the previous
deadline, never from when the previous event was actually written, so scheduling jitter never
accumulates. An event that falls behind its deadline (an overloaded loop) is sent at once.

With `n` requests steadily holding slots, a request therefore holds its slot for about

    S(n) = ttft + ttft_per_stream * (n - 1) + (E - 1) * (itl + itl_per_stream * (n - 1))

(`ttft`, `itl` the means), and the server completes `n / S(n)` requests/s (Little's law). Under
an open-loop rate `lambda`, `n` settles where `n = lambda * S(n)`. The knee of a rate sweep is the
capacity

    lambda_max = B / S(B)                       with max_batch B: above it the queue, and with it
                                                 TTFT, grows without bound;
    lambda_max -> 1 / (ttft_per_stream + (E - 1) * itl_per_stream)
                                                 without max_batch (approached as n grows),

so below the knee TTFT is `ttft + ttft_per_stream * (n - 1)` and ITL is
`itl + itl_per_stream * (n - 1)`, both rising with load.

Truth
-----
`Truth` keeps, per generation request, the arrival instant (`time.monotonic_ns()` at handler
entry) and the instant each token event was written, for `/sim/truth`, with what the model made of
it: its prompt tokens, how many of them were cached, its images and how many of them it
encoded (`images_encoded`, those charged `ttft_per_image`), the tool its reply called, and
`ttft_model_s`, the TTFT the model planned from admission (`t_1 - t_admit`: the draw, the load and
the prefill) and `decode_model_s`, the steps it planned after the first event (`t_E - t_1`: the
draws and the context term; the `itl_per_stream` term, which depends on the streams running at
each event, left out), so a test can check each cost exactly, free of the event loop's timing.
On Linux that clock is shared by all processes, so a client on the same host can compare its own
instants with these.

vLLM's own Prometheus metrics, observed from the same instants, are in vllm_metrics.py.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from latbench.sim.config import SimConfig
from latbench.sim.prefix import ImageCache, PrefixCache, Token, block_hashes
from latbench.sim.prompt import Prompt

EventKind = Literal["reasoning", "content", "tool_call"]
FinishReason = Literal["stop", "length"]
FINISH_REASONS: tuple[FinishReason, ...] = get_args(FinishReason)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request will generate: its events as (kind, tokens), and why it ends."""

    events: tuple[tuple[EventKind, int], ...]
    completion_tokens: int
    finish_reason: FinishReason


class Pacer:
    """Sleeps until each of one request's event deadlines (see the module docstring)."""

    __slots__ = (
        "_deadline",
        "_engine",
        "_hashes",
        "_loop",
        "_prompt",
        "_sent",
        "_steps",
        "admit_ns",
    )

    def __init__(
        self,
        engine: Engine,
        ttft: float,
        steps: list[float],
        admit_ns: int,
        prompt: Prompt | None = None,
        hashes: list[int] | None = None,
    ) -> None:
        self.admit_ns = admit_ns  # t_admit: when the request got its slot (monotonic_ns)
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + ttft
        self._steps = steps
        self._sent = 0
        self._prompt = prompt
        self._hashes = hashes  # the prompt's block keys, cached once its prefill is done

    async def next_event(self) -> None:
        """Return when the next event is due."""
        if self._sent:
            load = self._engine.config.itl_per_stream * (self._engine.active - 1)
            self._deadline += self._steps[self._sent - 1] + load
        self._sent += 1
        delay = self._deadline - self._loop.time()
        # A late event still yields, so one stream that fell behind cannot starve the others.
        await asyncio.sleep(delay if delay > 0 else 0)
        if self._sent == 1 and self._hashes and self._engine.cache is not None:
            self._engine.cache.insert(self._hashes)  # prefill done: its blocks are computed

    def answered(self, tokens: list[Token]) -> None:
        """The request ended with this answer: cache the blocks it filled (prefix.py)."""
        cache = self._engine.cache
        if cache is not None and self._prompt is not None and self._hashes is not None:
            cache.extend(self._prompt.tokens, self._hashes, tokens)


class Engine:
    """Plans requests and hands out decoding slots; one per simulated server."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.active = 0  # requests holding a slot
        self._rng = np.random.default_rng(config.seed)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.cache = (
            PrefixCache(config.block_tokens, config.prefix_cache_blocks)
            if config.prefix_cache
            else None
        )
        self.images = ImageCache()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def plan(
        self,
        *,
        max_tokens: int,
        min_tokens: int = 0,
        ignore_eos: bool = False,
        reasoning: bool,
        tool_call: int | None = None,
    ) -> Plan:
        """`tool_call`: the tokens of the call ending the reply (None: `tool_call_tokens` for the
        chat-like APIs, none for completions)."""
        n, finish = max_tokens, "length"
        p = self.config.eos_probability
        if p > 0 and not ignore_eos:
            # Each token from `first` on is the last with probability p: a geometric draw.
            first = max(min_tokens, 1)
            last = first - 1 + int(self._rng.geometric(p))
            if last <= max_tokens:
                n, finish = last, "stop"
        r = min(self.config.reasoning_tokens, n) if reasoning else 0
        if tool_call is None:
            t = min(self.config.tool_call_tokens, n - r) if reasoning else 0
        else:
            t = min(tool_call, n - r)
            if t and t == tool_call:
                finish = "stop"  # the model ended its turn with the call
        k = self.config.tokens_per_event
        events = [
            *_chunks("reasoning", r, k),
            *_chunks("content", n - r - t, k),
            *_chunks("tool_call", t, k),
        ]
        return Plan(events=tuple(events), completion_tokens=n, finish_reason=finish)

    @asynccontextmanager
    async def admit(
        self, plan: Plan, prompt: Prompt | None = None, entry: TruthEntry | None = None
    ) -> AsyncIterator[Pacer]:
        """Hold a decoding slot (waiting FIFO for one) while generating `plan` for `prompt`,
        noting in `entry` what the model made of it."""
        await self._acquire()
        admit_ns = time.monotonic_ns()
        try:
            cfg = self.config
            others = self.active - 1
            ttft = cfg.ttft.sample_one(self._rng) + cfg.ttft_per_stream * others
            # All steps drawn at once: one numpy call per request, not one per event.
            steps = cfg.itl.sample(self._rng, max(len(plan.events) - 1, 0)).tolist()
            hashes: list[int] | None = None
            cached = 0
            if prompt is not None:
                p = len(prompt.tokens)
                if self.cache is not None:
                    hashes = block_hashes(prompt.tokens, self.cache.block_tokens)
                    cached = self.cache.lookup(hashes, p)
                seen = self.images.lookup(prompt.image_keys)
                encoded = images_to_encode(prompt, cached, seen)
                ttft += cfg.prefill_per_token * (p - cached) + cfg.ttft_per_image * encoded
                if cfg.itl_per_context_token and steps:
                    steps = _with_context(steps, plan, p, cfg.itl_per_context_token)
                if entry is not None:
                    entry.prompt(p, cached, prompt.images, encoded)
            if entry is not None:
                entry.admit_ns = admit_ns
                entry.ttft_model_s = ttft
                entry.decode_model_s = sum(steps)
            yield Pacer(self, ttft, steps, admit_ns, prompt, hashes)
        finally:
            self._release()

    async def _acquire(self) -> None:
        limit = self.config.max_batch
        if (limit is None or self.active < limit) and not self._waiters:
            self.active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed over just as this waiter was cancelled
            else:
                self._waiters.remove(fut)
            raise

    def _release(self) -> None:
        # The slot passes straight to the oldest waiter, so a newcomer can never jump the queue.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1


def images_to_encode(prompt: Prompt, cached: int, seen: list[bool]) -> int:
    """The prompt's images not held by its `cached` prefix tokens (the module docstring);
    `seen[i]`: the multi-modal cache had image `i` before this request."""
    n = prompt.image_tokens
    held = (
        (at + n <= cached if n else at < cached and hit)
        for at, hit in zip(prompt.image_offsets, seen, strict=True)
    )
    return sum(not h for h in held)


def _with_context(steps: list[float], plan: Plan, prompt: int, per_token: float) -> list[float]:
    """Each step after event `i` lengthened by `per_token * (prompt + c_i)`, `c_i` the tokens
    generated through event `i`."""
    generated = np.cumsum([n for _, n in plan.events[:-1]])
    return (np.asarray(steps) + per_token * (prompt + generated)).tolist()


def _chunks(kind: EventKind, tokens: int, k: int) -> list[tuple[EventKind, int]]:
    full, rest = divmod(tokens, k)
    return [(kind, k)] * full + ([(kind, rest)] if rest else [])


class TruthEntry:
    """One request as the server saw it. Recording an event appends one int."""

    __slots__ = (
        "admit_ns",
        "arrival_ns",
        "cached_tokens",
        "decode_model_s",
        "events_ns",
        "fault",
        "handler_ns",
        "images",
        "images_encoded",
        "prompt_tokens",
        "tokens",
        "tool_call",
        "trace_id",
        "ttft_model_s",
    )

    def __init__(self, arrival_ns: int, handler_ns: int, fault: str | None) -> None:
        self.arrival_ns = arrival_ns  # the read that brought its first bytes (sim/arrival.py)
        self.handler_ns = handler_ns  # when its handler began, after aiohttp's parsing
        self.events_ns = array("q")
        self.fault = fault
        self.tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.images = 0
        self.images_encoded = 0  # of them, those not already in the cached prefix
        self.tool_call: str | None = None  # the tool its reply called
        self.ttft_model_s: float | None = None  # t_1 - t_admit as planned (None: never admitted)
        self.decode_model_s: float | None = None  # t_E - t_1 as planned, the load term left out
        self.admit_ns: int | None = None  # t_admit (None: never admitted)
        self.trace_id: str | None = None  # of the span it was exported as (sim/spans.py)

    def prompt(self, tokens: int, cached: int, images: int, encoded: int) -> None:
        self.prompt_tokens, self.cached_tokens = tokens, cached
        self.images, self.images_encoded = images, encoded

    def event(self, tokens: int) -> None:
        self.events_ns.append(time.monotonic_ns())
        self.tokens += tokens


class Truth:
    """The last `capacity` generation requests, summarised for `/sim/truth`."""

    def __init__(self, capacity: int) -> None:
        self._entries: deque[TruthEntry] = deque(maxlen=capacity)

    def start(self, arrival_ns: int, handler_ns: int, fault: str | None = None) -> TruthEntry:
        entry = TruthEntry(arrival_ns, handler_ns, fault)
        self._entries.append(entry)
        return entry

    def reset(self) -> None:
        self._entries.clear()

    def summary(self, *, raw: bool = False) -> dict[str, Any]:
        entries = list(self._entries)
        with_events = [e for e in entries if e.events_ns]
        ttft = np.array([e.events_ns[0] - e.arrival_ns for e in with_events], dtype=np.int64)
        gaps = [np.diff(np.frombuffer(e.events_ns, dtype=np.int64)) for e in with_events]
        itl = np.concatenate(gaps) if gaps else np.empty(0, dtype=np.int64)
        out: dict[str, Any] = {
            "count": len(entries),
            "tokens": sum(e.tokens for e in entries),
            "prompt_tokens": sum(e.prompt_tokens for e in entries),
            "cached_tokens": sum(e.cached_tokens for e in entries),
            "images": sum(e.images for e in entries),
            "images_encoded": sum(e.images_encoded for e in entries),
            "tool_calls": sum(e.tool_call is not None for e in entries),
            "ttft": _stats(ttft),
            "itl": _stats(itl),
        }
        if raw:
            out["requests"] = [
                {
                    "arrival_ns": e.arrival_ns,
                    "handler_ns": e.handler_ns,
                    "events_ns": e.events_ns.tolist(),
                    "tokens": e.tokens,
                    "fault": e.fault,
                    "prompt_tokens": e.prompt_tokens,
                    "cached_tokens": e.cached_tokens,
                    "images": e.images,
                    "images_encoded": e.images_encoded,
                    "tool_call": e.tool_call,
                    "ttft_model_s": e.ttft_model_s,
                    "decode_model_s": e.decode_model_s,
                    "admit_ns": e.admit_ns,
                    "trace_id": e.trace_id,
                }
                for e in entries
            ]
        return out


def _stats(ns: np.ndarray) -> dict[str, float | int | None]:
    if ns.size == 0:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    s = ns / 1e9
    p50, p90, p99 = np.percentile(s, [50, 90, 99]).tolist()
    return {
        "n": int(s.size),
        "mean": float(s.mean()),
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": float(s.max()),
    }


def events_for(tokens: int, reasoning: int, k: int, tool_call: int = 0) -> int:
    """`E` in the module docstring: events carrying `tokens` tokens, `reasoning` of them first
    and `tool_call` of them last."""
    r = min(reasoning, tokens)
    t = min(tool_call, tokens - r)
    return math.ceil(r / k) + math.ceil((tokens - r - t) / k) + math.ceil(t / k)


def service_time_s(config: SimConfig, n: int, events: int) -> float:
    """`S(n)` in the module docstring, from the means of `ttft` and `itl`."""
    others = n - 1
    ttft = config.ttft.mean + config.ttft_per_stream * others
    return ttft + (events - 1) * (config.itl.mean + config.itl_per_stream * others)


def capacity_rps(config: SimConfig, events: int) -> float:
    """`lambda_max` in the module docstring: the request rate at the knee (inf if there is none)."""
    if config.max_batch is not None:
        return config.max_batch / service_time_s(config, config.max_batch, events)
    per_stream = config.ttft_per_stream + (events - 1) * config.itl_per_stream
    return 1 / per_stream if per_stream > 0 else math.inf
