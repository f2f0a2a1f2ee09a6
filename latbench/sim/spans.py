"""The simulator as a tracing server: vLLM's `llm_request` span per finished request, over OTLP.

vLLM started with `--otlp-traces-endpoint` exports one span per request when it finishes
(vllm/v1/engine/output_processor.py, `do_tracing`): named `llm_request`, kind SERVER, a child of
the caller's W3C `traceparent`, starting at the request's arrival and ending when it finished,
with its latencies and token counts as `gen_ai.*` attributes. latbench joins each span to its
record (summary/spans.py); so that the join, its counting and its clock handling can be tested
without a GPU, the simulator exports the same span from its own truth (engine.py), where every
value is known exactly:

    gen_ai.latency.time_to_first_token   first event - arrival
    gen_ai.latency.e2e                   last event - arrival
    gen_ai.latency.time_in_queue         admission - arrival
    gen_ai.latency.time_in_model_prefill first event - admission
    gen_ai.latency.time_in_model_decode  last event - first event
    gen_ai.latency.time_in_model_inference last event - admission

(arrival: the read that brought the request, sim/arrival.py; vLLM's starts at its API server's
arrival stamp, after HTTP parsing, so the simulator's server side is slightly larger than vLLM's
would be.) The span's wall-clock times are the monotonic instants shifted by one anchor read at
start-up, plus `span_clock_offset_s`, which plays another host's clock skew.

As vLLM's OpenTelemetry SDK does: a request without a valid `traceparent` gets a span in a new
trace of its own (a root span), and one whose `traceparent` says "not sampled" gets none; a
request cut by a fault or by its client gets none (vLLM traces only requests that finish).

Export is batched like the SDK's BatchSpanProcessor: finished spans wait `span_delay_s` (or
until a batch is full) and a background task POSTs them as OTLP/HTTP JSON, so no stream waits on
the collector. OTLP JSON is the protobuf JSON mapping with two exceptions the spec makes: trace
and span ids are hex strings, and enums are integers; 64-bit integers (times, token counts) are
strings. Written by hand because the simulator imports only `shared/` (no protobuf binding). A
failing or slow endpoint is counted, never fatal: the spans of that batch are lost, as the SDK
loses them. `span_drop` and `span_duplicate` lose or repeat spans on purpose (seeded draws), so
the join's counting can be checked. Counts are in `/sim/truth` under `spans`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from latbench.sim.config import SimConfig
from latbench.sim.engine import TruthEntry

SPAN_NAME = "llm_request"
SPAN_KIND_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind
SCOPE = "vllm.tracing.otel"  # the tracer vLLM's manual spans come from
SERVICE = "latbench-sim"
MAX_BATCH = 512  # the BatchSpanProcessor's max_export_batch_size
MAX_QUEUE = 2048  # its max_queue_size: spans beyond it are dropped
EXPORT_TIMEOUT_S = 10.0  # the OTLP exporter's default timeout


def request_id(api: str, x_request_id: str | None) -> str:
    """The `gen_ai.request.id` vLLM 0.32 puts on a request's span (its engine request's external
    id), from the caller's X-Request-Id (`serve/engine/serving.py` `_base_request_id`: a random
    id when there is none): chat (and Messages, which vLLM serves as chat) "chatcmpl-<id>";
    completions "cmpl-<id>-<n>", one engine request per prompt n of the request
    (`completion/serving.py` `request_id_item`); responses "resp_<random>_<n>": its id comes
    from the body's `request_id`, never the header, and each sub-request is numbered
    (`responses/serving.py`)."""
    base = x_request_id or os.urandom(16).hex()
    if api == "completions":
        return f"cmpl-{base}-0"
    if api == "responses":
        return f"resp_{os.urandom(8).hex()}_0"
    return f"chatcmpl-{base}"


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class Parent:
    """A `traceparent` as the W3C Trace Context propagator reads it."""

    trace_id: str
    span_id: str
    sampled: bool


def parse_traceparent(value: str | None) -> Parent | None:
    """The parent a `traceparent` header names, or None when it is absent or invalid (version
    ff, ids of zeros, upper case, a version 00 header with more fields: the propagator ignores
    them and the server starts a new trace)."""
    if value is None:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1))


@dataclass(frozen=True, slots=True)
class _Finished:
    """What one finished request leaves for its span: kept raw, encoded when exported."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    request_id: str
    arrival_ns: int
    admit_ns: int
    first_ns: int
    last_ns: int
    end_ns: int
    prompt_tokens: int
    completion_tokens: int


class SpanExporter:
    """Spans of finished requests, batched and POSTed to `otlp_traces_endpoint`."""

    def __init__(self, config: SimConfig) -> None:
        self.endpoint = config.otlp_traces_endpoint
        self.delay_s = config.span_delay_s
        self._drop = config.span_drop
        self._duplicate = config.span_duplicate
        # Its own generator, so that tracing on or off never changes the engine's draws.
        self._rng = random.Random(config.seed)
        # Read back to back: the span's wall time is its monotonic instant plus this.
        self.anchor_ns = time.time_ns() - time.monotonic_ns()
        self.offset_ns = round(config.span_clock_offset_s * 1e9)
        self._pending: list[_Finished] = []
        self._queued = asyncio.Event()  # a span waits
        self._full = asyncio.Event()  # a batch is full, or the server is stopping
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.finished_spans = 0  # spans made (one per traced request that finished)
        self.dropped = 0  # by `span_drop`
        self.duplicated = 0  # sent a second time by `span_duplicate`
        self.overflowed = 0  # dropped because the queue was full
        self.exported = 0  # spans (copies included) the endpoint accepted
        self.failed = 0  # spans in batches the endpoint refused or never answered
        self.failed_batches = 0
        self.last_error: str | None = None

    def wall_ns(self, monotonic_ns: int) -> int:
        return monotonic_ns + self.anchor_ns + self.offset_ns

    def finished(
        self,
        headers: Mapping[str, str],
        api: str,
        entry: TruthEntry,
        admit_ns: int,
    ) -> None:
        """A request finished: queue its span. Cheap, on the request's own path: no encoding."""
        events = entry.events_ns
        if not events:
            return
        header = headers.get("traceparent")
        parent = parse_traceparent(header)
        if parent is not None and not parent.sampled:
            return  # the SDK's parent-based sampler records nothing for an unsampled parent
        trace_id = parent.trace_id if parent is not None else os.urandom(16).hex()
        span_id = os.urandom(8).hex()
        entry.trace_id = trace_id  # /sim/truth names each request's span by its trace id
        self.finished_spans += 1
        if self._drop and self._rng.random() < self._drop:
            self.dropped += 1
            return
        span = _Finished(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent.span_id if parent is not None else None,
            request_id=request_id(api, headers.get("X-Request-Id")),
            arrival_ns=entry.arrival_ns,
            admit_ns=admit_ns,
            first_ns=events[0],
            last_ns=events[-1],
            end_ns=time.monotonic_ns(),
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.tokens,
        )
        copies = 2 if self._duplicate and self._rng.random() < self._duplicate else 1
        for _ in range(copies):
            if len(self._pending) >= MAX_QUEUE:
                self.overflowed += 1
                continue
            self._pending.append(span)
        self.duplicated += copies - 1
        self._queued.set()
        if len(self._pending) >= MAX_BATCH:
            self._full.set()

    def counts(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "finished": self.finished_spans,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
            "overflowed": self.overflowed,
            "exported": self.exported,
            "failed": self.failed,
            "failed_batches": self.failed_batches,
            "pending": len(self._pending),
            "last_error": self.last_error,
            "wall_anchor_ns": self.anchor_ns,
            "clock_offset_ns": self.offset_ns,
        }

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=EXPORT_TIMEOUT_S)
        self._http = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.create_task(self._run(), name="latbench-sim-spans")

    async def stop(self) -> None:
        """Export what is left, as the SDK's shutdown flushes, and close."""
        self._stopping = True
        self._queued.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        while not self._stopping:
            await self._queued.wait()  # idle without a timer while nothing waits
            if self.delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.delay_s)
            # Cleared before exporting: a span queued meanwhile sets them again.
            self._queued.clear()
            self._full.clear()
            while self._pending:
                await self._export_batch()
        while self._pending:
            await self._export_batch()

    async def _export_batch(self) -> None:
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        assert self._http is not None and self.endpoint is not None
        body = orjson.dumps(self.request_body(batch))
        try:
            async with self._http.post(
                self.endpoint, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=resp.reason or ""
                    )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self.failed += len(batch)
            self.failed_batches += 1
            self.last_error = f"{type(e).__name__}: {e}"
            return
        self.exported += len(batch)

    def request_body(self, batch: list[_Finished]) -> dict[str, Any]:
        """An OTLP ExportTraceServiceRequest in OTLP JSON."""
        resource = [
            _attr_str("service.name", SERVICE),
            _attr_str("vllm.instrumenting_module_name", "vllm.llm_engine"),
            _attr_str("vllm.process_id", str(os.getpid())),
        ]
        return {
            "resourceSpans": [
                {
                    "resource": {"attributes": resource},
                    "scopeSpans": [
                        {"scope": {"name": SCOPE}, "spans": [self._span(s) for s in batch]}
                    ],
                }
            ]
        }

    def _span(self, s: _Finished) -> dict[str, Any]:
        attributes = [
            _attr_double("gen_ai.latency.time_to_first_token", s.first_ns - s.arrival_ns),
            _attr_double("gen_ai.latency.e2e", s.last_ns - s.arrival_ns),
            _attr_double("gen_ai.latency.time_in_queue", s.admit_ns - s.arrival_ns),
            _attr_int("gen_ai.usage.prompt_tokens", s.prompt_tokens),
            _attr_int("gen_ai.usage.completion_tokens", s.completion_tokens),
            _attr_double("gen_ai.latency.time_in_model_prefill", s.first_ns - s.admit_ns),
            _attr_double("gen_ai.latency.time_in_model_decode", s.last_ns - s.first_ns),
            _attr_double("gen_ai.latency.time_in_model_inference", s.last_ns - s.admit_ns),
            _attr_str("gen_ai.request.id", s.request_id),
        ]
        span: dict[str, Any] = {
            "traceId": s.trace_id,
            "spanId": s.span_id,
            "name": SPAN_NAME,
            "kind": SPAN_KIND_SERVER,
            "startTimeUnixNano": str(self.wall_ns(s.arrival_ns)),
            "endTimeUnixNano": str(self.wall_ns(s.end_ns)),
            "attributes": attributes,
            "status": {},
        }
        if s.parent_span_id is not None:
            span["parentSpanId"] = s.parent_span_id
        return span


def _attr_str(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def _attr_int(key: str, value: int) -> dict[str, Any]:
    return {"key": key, "value": {"intValue": str(value)}}


def _attr_double(key: str, ns: int) -> dict[str, Any]:
    # vLLM's are differences of float seconds; these are the exact nanoseconds, divided once.
    return {"key": key, "value": {"doubleValue": ns / 1e9}}
