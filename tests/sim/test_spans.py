"""The simulator as a tracing server (sim/spans.py), checked against a real OTLP/HTTP receiver.

The receiver is a small aiohttp app on 127.0.0.1 that keeps every body POSTed to /v1/traces.
Each body is decoded by opentelemetry-proto's own JSON mapping (`json_format.Parse` into
`ExportTraceServiceRequest`), after turning the hex ids into the base64 the protobuf mapping
expects (the one exception OTLP JSON makes, with integer enums, which Parse accepts), so a body
that is not valid OTLP JSON fails here. Every value is then compared with the simulator's own
truth (`/sim/truth?raw=1`): the same integers, divided once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.protobuf import json_format
from kit.sim import Serve, truth
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from latbench.sim import SimConfig, SimProcess
from latbench.sim.spans import parse_traceparent, request_id

_IDS = ("traceId", "spanId", "parentSpanId")
NS = 1e9


class Receiver:
    """An OTLP/HTTP traces endpoint: keeps each request's body, answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.status = 200
        self.hold: asyncio.Event | None = None  # set: answer only once it is set
        self.server: TestServer | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        if self.hold is not None:
            await self.hold.wait()
        self.content_types.append(request.content_type)
        self.bodies.append(orjson.loads(await request.read()))
        return web.json_response({}, status=self.status)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1/traces"))

    def spans(self) -> list[Span]:
        out: list[Span] = []
        for body in self.bodies:
            msg = ExportTraceServiceRequest()
            json_format.Parse(orjson.dumps(_ids_as_base64(body)), msg)
            for rs in msg.resource_spans:
                for ss in rs.scope_spans:
                    out.extend(ss.spans)
        return out

    async def wait_for(self, n: int, deadline_s: float = 10.0) -> list[Span]:
        """Poll until `n` spans arrived (or the deadline: then what arrived)."""
        end = time.monotonic() + deadline_s
        while len(spans := self.spans()) < n and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return spans


def _ids_as_base64(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in _IDS else _ids_as_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_ids_as_base64(v) for v in node]
    return node


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", r._traces)
    r.server = TestServer(app, host="127.0.0.1")
    await r.server.start_server()
    yield r
    await r.server.close()


def _traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


async def _chat(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], *, stream: bool = True
) -> None:
    body = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "one two three four"}],
        "max_tokens": 5,
        "stream": stream,
    }
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200
        await r.read()


async def _completion(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    body = {"model": "sim-model", "prompt": "a b c", "max_tokens": 3, "stream": True}
    async with http.post(url + "/v1/completions", json=body, headers=headers) as r:
        assert r.status == 200
        await r.read()


def _attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


async def _sim_truth(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + "/sim/truth?raw=1") as r:
        return dict(await r.json())


async def test_spans_are_valid_otlp_json_with_the_truths_values(
    serve: Serve, receiver: Receiver
) -> None:
    offset = -3600.25  # a server clock an hour behind: only the span's wall times move
    url = await serve(
        otlp_traces_endpoint=receiver.url, span_delay_s=0.05, span_clock_offset_s=offset
    )
    sent: dict[str, tuple[str, str]] = {}  # trace id -> (parent span id, X-Request-Id)
    async with aiohttp.ClientSession() as http:
        for i in range(6):
            trace_id, span_id, header = _traceparent()
            sent[trace_id] = (span_id, f"run-{i}")
            headers = {"traceparent": header, "X-Request-Id": f"run-{i}"}
            if i == 5:
                await _completion(http, url, headers)
            else:
                await _chat(http, url, headers, stream=i != 4)
        await _chat(http, url, {})  # no traceparent: a root span in a new trace
        await _chat(http, url, {"traceparent": _traceparent(sampled=False)[2]})  # none
    spans = await receiver.wait_for(7)
    assert len(spans) == 7
    assert set(receiver.content_types) == {"application/json"}
    state = await _sim_truth(url)
    counts = state["spans"]
    assert counts["finished"] == 7 and counts["exported"] == 7 and counts["failed"] == 0
    anchor = counts["wall_anchor_ns"] + round(offset * NS)
    assert counts["clock_offset_ns"] == round(offset * NS)
    by_trace = {r["trace_id"]: r for r in state["requests"] if r["trace_id"] is not None}
    assert len(by_trace) == 7  # the unsampled request has no span, so no trace id
    roots = 0
    for span in spans:
        t = by_trace[span.trace_id.hex()]
        a = _attrs(span)
        arrival, admit, ev = t["arrival_ns"], t["admit_ns"], t["events_ns"]
        assert span.name == "llm_request"
        assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
        assert span.start_time_unix_nano == arrival + anchor
        assert ev[-1] + anchor <= span.end_time_unix_nano <= time.time_ns() + round(offset * NS)
        assert a["gen_ai.latency.time_to_first_token"] == (ev[0] - arrival) / NS
        assert a["gen_ai.latency.e2e"] == (ev[-1] - arrival) / NS
        assert a["gen_ai.latency.time_in_queue"] == (admit - arrival) / NS
        assert a["gen_ai.latency.time_in_model_prefill"] == (ev[0] - admit) / NS
        assert a["gen_ai.latency.time_in_model_decode"] == (ev[-1] - ev[0]) / NS
        assert a["gen_ai.latency.time_in_model_inference"] == (ev[-1] - admit) / NS
        assert a["gen_ai.usage.prompt_tokens"] == t["prompt_tokens"] > 0
        assert a["gen_ai.usage.completion_tokens"] == t["tokens"] > 0
        if span.trace_id.hex() in sent:
            parent, request_id = sent[span.trace_id.hex()]
            assert span.parent_span_id.hex() == parent
            # vLLM 0.32's: chat "chatcmpl-<X-Request-Id>", completions one engine request per
            # prompt, "cmpl-<X-Request-Id>-<n>" (request_id_item).
            want = f"cmpl-{request_id}-0" if request_id == "run-5" else f"chatcmpl-{request_id}"
            assert a["gen_ai.request.id"] == want
        else:
            roots += 1
            assert span.parent_span_id == b""
            assert a["gen_ai.request.id"].startswith("chatcmpl-")
    assert roots == 1
    assert {s.trace_id.hex() for s in spans} >= set(sent)


@pytest.mark.parametrize(
    ("knobs", "check"),
    [
        ({"span_drop": 1.0}, lambda c, n: c["dropped"] == n and c["exported"] == 0),
        ({"span_duplicate": 1.0}, lambda c, n: c["duplicated"] == n and c["exported"] == 2 * n),
        (
            {"span_drop": 0.3, "span_duplicate": 0.3, "seed": 7},
            lambda c, n: (
                0 < c["dropped"] < n
                and 0 < c["duplicated"] < n
                and c["exported"] == n - c["dropped"] + c["duplicated"]
            ),
        ),
    ],
)
async def test_drop_and_duplicate_knobs(
    serve: Serve,
    receiver: Receiver,
    knobs: dict[str, Any],
    check: Callable[[dict[str, Any], int], bool],
) -> None:
    n = 40
    url = await serve(otlp_traces_endpoint=receiver.url, span_delay_s=0.02, **knobs)
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(
            *(_chat(http, url, {"traceparent": _traceparent()[2]}) for _ in range(n))
        )
    end = time.monotonic() + 10
    while (c := (await _sim_truth(url))["spans"])["pending"] and time.monotonic() < end:
        await asyncio.sleep(0.02)
    assert c["finished"] == n and c["pending"] == 0
    assert check(c, n), c
    spans = receiver.spans()
    assert len(spans) == c["exported"]
    ids = [s.trace_id for s in spans]
    assert len(ids) - len(set(ids)) == c["duplicated"]


async def test_the_same_seed_drops_the_same_share(serve: Serve, receiver: Receiver) -> None:
    dropped = []
    for _ in range(2):
        url = await serve(otlp_traces_endpoint=receiver.url, span_drop=0.5, seed=3)
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                await _chat(http, url, {"traceparent": _traceparent()[2]})
        dropped.append((await _sim_truth(url))["spans"]["dropped"])
    assert dropped[0] == dropped[1] and 0 < dropped[0] < 20


async def test_a_failing_endpoint_is_counted_and_never_delays_a_stream(
    serve: Serve, receiver: Receiver
) -> None:
    # An endpoint that never answers while the requests run: they finish on the sim's timetable.
    receiver.hold = asyncio.Event()
    url = await serve(otlp_traces_endpoint=receiver.url, span_delay_s=0.0)
    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        for _ in range(5):
            await _chat(http, url, {"traceparent": _traceparent()[2]})
        # 5 requests of 5 events at FAST pacing (2 ms + 4 x 1 ms): far under a second.
        assert time.monotonic() - t0 < 1.0
    receiver.status = 503
    receiver.hold.set()
    end = time.monotonic() + 10
    while (c := (await _sim_truth(url))["spans"])["failed"] < 5 and time.monotonic() < end:
        await asyncio.sleep(0.02)
    assert c["failed"] == 5 and c["exported"] == 0 and c["failed_batches"] >= 1
    assert "503" in c["last_error"]


async def test_a_refused_connection_is_counted(serve: Serve) -> None:
    # A port that was just free and has no listener: the connection is refused.
    probe = TestServer(web.Application(), host="127.0.0.1")
    await probe.start_server()
    port = probe.port
    await probe.close()
    url = await serve(otlp_traces_endpoint=f"http://127.0.0.1:{port}/v1/traces", span_delay_s=0.02)
    async with aiohttp.ClientSession() as http:
        await _chat(http, url, {"traceparent": _traceparent()[2]})
    end = time.monotonic() + 10
    while (c := (await _sim_truth(url))["spans"])["failed"] < 1 and time.monotonic() < end:
        await asyncio.sleep(0.02)
    assert c["failed"] == 1 and c["exported"] == 0
    assert "Connect" in c["last_error"]


async def test_spans_still_waiting_are_sent_when_the_simulator_stops(receiver: Receiver) -> None:
    # A child process with a batch delay far past the test: only the shutdown flush sends them.
    config = SimConfig(otlp_traces_endpoint=receiver.url, span_delay_s=600, ttft=0.002, itl=0.001)
    proc = SimProcess(config).start()
    try:
        trace_ids = []
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                trace_id, _, header = _traceparent()
                trace_ids.append(trace_id)
                await _chat(http, proc.url, {"traceparent": header})
            assert (await truth(proc.url, http))[0]["trace_id"] == trace_ids[0]
        assert receiver.spans() == []
    finally:
        await asyncio.to_thread(proc.stop)
    spans = await receiver.wait_for(3)
    assert sorted(s.trace_id.hex() for s in spans) == sorted(trace_ids)


def test_request_ids_as_vllm_builds_them() -> None:
    """vLLM 0.32's gen_ai.request.id per API (its serving modules): chat and Messages from the
    X-Request-Id, completions numbered per prompt, responses from the body (the header is not
    read), numbered per sub-request; without a header, a random id."""
    assert request_id("chat", "run-7") == "chatcmpl-run-7"
    assert request_id("anthropic", "run-7") == "chatcmpl-run-7"
    assert request_id("completions", "run-7") == "cmpl-run-7-0"
    resp = request_id("responses", "run-7")
    assert re.fullmatch(r"resp_[0-9a-f]{16}_0", resp) and "run-7" not in resp
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", request_id("chat", None))


def test_traceparent_as_the_w3c_propagator_reads_it() -> None:
    t, s = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    parent = parse_traceparent(f"00-{t}-{s}-01")
    assert parent is not None and (parent.trace_id, parent.span_id, parent.sampled) == (t, s, True)
    unsampled = parse_traceparent(f"00-{t}-{s}-00")
    assert unsampled is not None and not unsampled.sampled
    future = parse_traceparent(f"cc-{t}-{s}-01-what-the-future-holds")
    assert future is not None and future.trace_id == t
    for bad in (
        None,
        "",
        f"ff-{t}-{s}-01",
        f"00-{'0' * 32}-{s}-01",
        f"00-{t}-{'0' * 16}-01",
        f"00-{t.upper()}-{s}-01",
        f"00-{t}-{s}-01-extra",
        f"00-{t[:-1]}-{s}-01",
    ):
        assert parse_traceparent(bad) is None, bad


def test_the_endpoint_must_be_a_url() -> None:
    with pytest.raises(ValueError, match="http:// or https:// URL"):
        SimConfig(otlp_traces_endpoint="127.0.0.1:4318")
