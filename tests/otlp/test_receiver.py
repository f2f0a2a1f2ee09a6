"""The OTLP span receiver against the real OpenTelemetry SDK and its OTLP/HTTP exporter.

The spans are made as vLLM makes them (vllm/tracing/otel.py, vllm/v1/engine/output_processor.py
`do_tracing`): `llm_request`, SpanKind SERVER, its parent extracted from the request's
`traceparent`, the gen_ai.latency.* attributes as doubles and gen_ai.usage.* as ints, and
exported by a BatchSpanProcessor with the SDK's own OTLPSpanExporter over a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import secrets
from typing import Any

import aiohttp
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from latbench.otlp.receiver import SpanReceiver
from latbench.records.record import ServerSpan
from latbench.shared.errors import LatbenchError

NOT_A_TIME = {"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}


def vllm_attributes(i: int) -> dict[str, Any]:
    return {
        "gen_ai.response.model": "tiny",
        "gen_ai.request.id": f"chatcmpl-run-{i}",
        "gen_ai.usage.prompt_tokens": 10 + i,
        "gen_ai.usage.completion_tokens": 20 + i,
        "gen_ai.latency.time_in_queue": 0.001 * i,
        "gen_ai.latency.time_to_first_token": 0.05 + 0.001 * i,
        "gen_ai.latency.e2e": 0.5 + i,
        "gen_ai.latency.time_in_scheduler": 0.0001,
        "gen_ai.latency.time_in_model_prefill": 0.04,
        "gen_ai.latency.time_in_model_decode": 0.4,
        "gen_ai.latency.time_in_model_inference": 0.44,
    }


def export_like_vllm(endpoint: str, traces: list[str], compression: Compression) -> None:
    """The SDK's pipeline as vLLM sets it up, one span per trace id, flushed before returning."""
    provider = TracerProvider(resource=Resource.create({"service.name": "vllm.llm"}))
    exporter = OTLPSpanExporter(endpoint=endpoint, compression=compression, timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("vllm.llm_engine")
    propagator = TraceContextTextMapPropagator()
    for i, trace_id in enumerate(traces):
        parent = propagator.extract({"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
        with tracer.start_as_current_span(
            "llm_request", kind=SpanKind.SERVER, context=parent, attributes=vllm_attributes(i)
        ):
            pass
    # vLLM's start-up spans (vllm/tracing/otel.py, instrument_otel): INTERNAL, no gen_ai.*.
    with tracer.start_as_current_span("Overall Loading"), tracer.start_as_current_span("Load"):
        pass
    assert provider.force_flush(10_000)
    provider.shutdown()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_every_field_of_vllms_span_arrives(compression: Compression) -> None:
    got: list[ServerSpan] = []
    traces = [secrets.token_hex(16) for _ in range(5)]
    async with SpanReceiver(got.append) as receiver:
        assert receiver.port > 0
        await asyncio.to_thread(export_like_vllm, receiver.endpoint, traces, compression)
    assert [s.trace_id for s in got] == traces
    for i, span in enumerate(got):
        assert span.name == "llm_request"
        assert len(span.span_id) == 16
        assert span.service == "vllm.llm"
        assert span.request_id == f"chatcmpl-run-{i}"
        assert span.prompt_tokens == 10 + i and span.completion_tokens == 20 + i
        assert span.queue_s == pytest.approx(0.001 * i)
        assert span.ttft_s == pytest.approx(0.05 + 0.001 * i)
        assert span.e2e_s == pytest.approx(0.5 + i)
        assert (span.prefill_s, span.decode_s, span.inference_s) == (0.04, 0.4, 0.44)
        assert span.start_unix_ns is not None and span.end_unix_ns is not None
        assert span.end_unix_ns >= span.start_unix_ns > 1_600_000_000 * 10**9
        assert span.received_ns > 0
    assert receiver.counts.spans == 5 and receiver.counts.rejected_payloads == 0
    assert receiver.counts.other_spans == 2  # the start-up's: counted, not handed on


# An OTLP JSON export as the specification writes one (opentelemetry-proto docs/specification.md,
# "JSON Protobuf Encoding", and its examples/trace.json): camelCase keys, hex ids, times as
# strings of uint64 nanoseconds, int attributes as strings, doubles as numbers.
TRACE_ID = "5b8efff798038103d269b633813fc60c"


def otlp_json(trace_id: str = TRACE_ID, **span_extra: Any) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "sim"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "latbench-sim"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "llm_request",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {
                                        "key": "gen_ai.latency.time_to_first_token",
                                        "value": {"doubleValue": 0.125},
                                    },
                                    {
                                        "key": "gen_ai.usage.completion_tokens",
                                        "value": {"intValue": "64"},
                                    },
                                    {
                                        "key": "gen_ai.latency.time_in_queue",
                                        "value": {"intValue": "0"},
                                    },
                                ],
                                "aNewFieldFromALaterVersion": True,
                                **span_extra,
                            }
                        ],
                    }
                ],
            }
        ]
    }


async def post(
    url: str, body: bytes, content_type: str, encoding: str | None = None
) -> tuple[int, bytes, str]:
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.read(), resp.content_type


@pytest.mark.parametrize("encoding", [None, "gzip"])
async def test_otlp_json_with_hex_ids(encoding: str | None) -> None:
    got: list[ServerSpan] = []
    body = orjson.dumps(otlp_json())
    if encoding == "gzip":
        body = gzip.compress(body)
    async with SpanReceiver(got.append) as receiver:
        status, answer, ctype = await post(receiver.endpoint, body, "application/json", encoding)
    assert (status, ctype) == (200, "application/json")
    assert orjson.loads(answer) == {}  # an empty ExportTraceServiceResponse
    [span] = got
    assert span.trace_id == TRACE_ID and span.span_id == "eee19b7ec3c1b174"
    assert (span.start_unix_ns, span.end_unix_ns) == (1544712660000000000, 1544712661000000000)
    assert (span.ttft_s, span.completion_tokens, span.queue_s) == (0.125, 64, 0.0)
    assert span.service == "sim" and span.e2e_s is None and span.request_id is None


async def test_a_span_without_a_trace_id_is_counted_as_a_partial_success() -> None:
    got: list[ServerSpan] = []
    data = otlp_json()
    spans = data["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append({**spans[0], "traceId": "00" * 16})  # all zero: invalid (W3C)
    spans.append({**spans[0], "traceId": "abcd"})  # not 16 bytes
    async with SpanReceiver(got.append) as receiver:
        status, answer, _ = await post(receiver.endpoint, orjson.dumps(data), "application/json")
    assert status == 200
    assert orjson.loads(answer)["partialSuccess"]["rejectedSpans"] == "2"
    assert len(got) == 1
    assert (receiver.counts.spans, receiver.counts.rejected_spans) == (1, 2)


async def test_protobuf_answer_is_an_export_response() -> None:
    message = ExportTraceServiceRequest()
    data = otlp_json()
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for key in ("traceId", "spanId", "parentSpanId"):
        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    json_format.ParseDict(data, message, ignore_unknown_fields=True)
    got: list[ServerSpan] = []
    async with SpanReceiver(got.append) as receiver:
        status, answer, ctype = await post(
            receiver.endpoint, message.SerializeToString(), "application/x-protobuf"
        )
    assert (status, ctype) == (200, "application/x-protobuf")
    response = ExportTraceServiceResponse()
    response.ParseFromString(answer)
    assert not response.HasField("partial_success")
    assert [s.trace_id for s in got] == [TRACE_ID]


BOMB = gzip.compress(b"\0" * (4 << 20))


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "status", "says"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf", None, 400, "ExportTraceService"),
        (b"{not json", "application/json", None, 400, "not JSON"),
        (b"[1, 2]", "application/json", None, 400, "not an object"),
        (orjson.dumps(otlp_json("zz" * 16)), "application/json", None, 400, "not hex"),
        (
            orjson.dumps(NOT_A_TIME),
            "application/json",
            None,
            400,
            "ExportTraceServiceRequest",
        ),
        (b"\x1f\x8b garbage", "application/json", "gzip", 400, "not gzip"),
        (gzip.compress(b"{}")[:-6], "application/json", "gzip", 400, "truncated"),
        (BOMB, "application/x-protobuf", "gzip", 413, "once decompressed"),
        (b"x" * ((1 << 20) + 1), "application/x-protobuf", None, 413, "cap"),
        (b"{}", "text/plain", None, 415, "application/x-protobuf"),
        (b"{}", "application/json", "br", 415, "content encoding 'br'"),
    ],
)
async def test_bad_input_is_refused_with_a_reason_and_the_receiver_keeps_serving(
    body: bytes, content_type: str, encoding: str | None, status: int, says: str
) -> None:
    got: list[ServerSpan] = []
    async with SpanReceiver(got.append, max_body_bytes=1 << 20) as receiver:
        code, answer, _ = await post(receiver.endpoint, body, content_type, encoding)
        assert code == status
        assert says in answer.decode()
        assert "Traceback" not in answer.decode()
        assert receiver.counts.rejected_payloads == 1
        assert receiver.counts.last_rejection is not None
        code, _, _ = await post(receiver.endpoint, orjson.dumps(otlp_json()), "application/json")
        assert code == 200
    assert [s.trace_id for s in got] == [TRACE_ID]


async def test_a_taken_port_is_a_clear_error() -> None:
    async with SpanReceiver(lambda s: None) as first:
        with pytest.raises(LatbenchError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await SpanReceiver(lambda s: None, port=first.port).start()


async def test_only_a_requests_span_is_handed_on() -> None:
    """SERVER kind, or any kind with a gen_ai.latency.* attribute: a request's; an INTERNAL span
    without one (vLLM's start-up trace) is counted and left out."""
    got: list[ServerSpan] = []
    data = otlp_json()
    spans = data["resourceSpans"][0]["scopeSpans"][0]["spans"]
    internal_with_latency = {**spans[0], "traceId": "11" * 16, "kind": 1}
    internal_without = {**spans[0], "traceId": "22" * 16, "kind": 1, "attributes": []}
    spans += [internal_with_latency, internal_without]
    async with SpanReceiver(got.append) as receiver:
        status, _, _ = await post(receiver.endpoint, orjson.dumps(data), "application/json")
    assert status == 200
    assert [s.trace_id for s in got] == [TRACE_ID, "11" * 16]
    assert (receiver.counts.spans, receiver.counts.other_spans) == (2, 1)
