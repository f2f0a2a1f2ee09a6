"""The span receiver against senders that mean harm or are broken: a span whose values the
records file cannot hold, a taker that fails on one span, a sender that stalls or hangs up
mid-body. Each case is one refused span or payload, counted, with the rest of the payload and
the receiver unharmed, and a records file that always reads back (reviewer r1, items 2 and 8).
Real parts on 127.0.0.1: the receiver, the OpenTelemetry protobuf binding, the run's
`RunSpans` and records file."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from latbench.otlp.receiver import SpanReceiver
from latbench.records.record import RunHeader, ServerSpan, read_records
from latbench.run.spans import RunSpans
from latbench.sinks.jsonl import JsonlSink

GOOD = "11" * 16
HEADER = RunHeader("run", "test", clock_monotonic_ns=0, clock_wall_ns=0)


def add_span(
    message: ExportTraceServiceRequest,
    trace_id: str,
    *,
    start: int = 1_700_000_000 * 10**9,
    doubles: dict[str, float] | None = None,
) -> None:
    """One vLLM-like `llm_request` span in `message`, its latencies as doubles."""
    rs = message.resource_spans.add()
    span = rs.scope_spans.add().spans.add()
    span.trace_id = bytes.fromhex(trace_id)
    span.span_id = bytes.fromhex("22" * 8)
    span.name = "llm_request"
    span.kind = Span.SpanKind.SPAN_KIND_SERVER
    span.start_time_unix_nano = start
    span.end_time_unix_nano = start
    values = {"gen_ai.latency.time_to_first_token": 0.05, "gen_ai.usage.completion_tokens": 16.0}
    for key, value in (values | (doubles or {})).items():
        kv = span.attributes.add()
        kv.key = key
        kv.value.double_value = value


async def post(url: str, body: bytes) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as resp,
    ):
        return resp.status, await resp.read()


async def test_a_span_the_records_file_cannot_hold_is_refused_alone(tmp_path: Path) -> None:
    """A time past int64 (OTLP's are uint64), a count of 1e300, a negative or infinite
    duration: each span is refused with a reason (partial success), the good span of the same
    payload is kept, and the records file reads back with exactly the spans the run kept."""
    message = ExportTraceServiceRequest()
    add_span(message, "a1" * 16, start=2**64 - 1)
    add_span(message, "a2" * 16, doubles={"gen_ai.usage.completion_tokens": 1e300})
    add_span(message, "a3" * 16, doubles={"gen_ai.latency.time_to_first_token": -5.0})
    add_span(message, "a4" * 16, doubles={"gen_ai.latency.e2e": float("inf")})
    add_span(message, GOOD)
    path = tmp_path / "records.jsonl"
    sink = JsonlSink(path, HEADER)
    spans = RunSpans("127.0.0.1", 0)
    spans.attach(sink.add_span)
    await spans.start()
    try:
        status, answer = await post(spans.receiver.endpoint, message.SerializeToString())
    finally:
        await spans.stop()
    sink.close(None)
    assert status == 200
    response = ExportTraceServiceResponse()
    response.ParseFromString(answer)
    assert response.partial_success.rejected_spans == 4
    assert "span(s) rejected" in response.partial_success.error_message
    counts = spans.receiver.counts
    assert (counts.spans, counts.rejected_spans) == (1, 4)
    assert counts.last_span_rejection is not None and "a4" * 16 in counts.last_span_rejection
    assert "e2e_s is inf" in counts.last_span_rejection
    assert [s.trace_id for s in spans.spans] == [GOOD]
    assert [s.trace_id for s in read_records(path).spans] == [GOOD]


async def test_a_span_its_taker_cannot_keep_is_counted_and_the_rest_go_on() -> None:
    got: list[ServerSpan] = []

    def take(span: ServerSpan) -> None:
        if span.trace_id == "b1" * 16:
            raise ValueError("disk full")
        got.append(span)

    message = ExportTraceServiceRequest()
    for trace_id in ("b0" * 16, "b1" * 16, "b2" * 16):
        add_span(message, trace_id)
    async with SpanReceiver(take) as receiver:
        status, _ = await post(receiver.endpoint, message.SerializeToString())
    assert status == 200
    assert [s.trace_id for s in got] == ["b0" * 16, "b2" * 16]
    assert (receiver.counts.spans, receiver.counts.rejected_spans) == (2, 1)
    assert "disk full" in (receiver.counts.last_span_rejection or "")


async def test_an_observer_that_fails_is_counted_and_the_span_kept(tmp_path: Path) -> None:
    """The live series failing on a span does not lose it from the records file or the join."""
    path = tmp_path / "records.jsonl"
    sink = JsonlSink(path, HEADER)

    def observe(span: ServerSpan) -> None:
        raise RuntimeError("series gone")

    spans = RunSpans("127.0.0.1", 0)
    spans.attach(sink.add_span, [observe])
    message = ExportTraceServiceRequest()
    add_span(message, GOOD)
    await spans.start()
    try:
        status, _ = await post(spans.receiver.endpoint, message.SerializeToString())
    finally:
        await spans.stop()
    sink.close(None)
    assert status == 200
    assert spans.observer_errors == 1 and "series gone" in (spans.last_observer_error or "")
    assert [s.trace_id for s in spans.spans] == [GOOD]
    assert [s.trace_id for s in read_records(path).spans] == [GOOD]


def partial_post(port: int, sent: int = 10, length: int = 1000) -> socket.socket:
    """A POST that promises `length` bytes of body and sends `sent` of them."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
        + b"0" * sent
    )
    return s


async def wait_until(check: object, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < end, "deadline passed"
        await asyncio.sleep(0.01)


async def test_a_stalled_sender_is_refused_after_the_read_timeout() -> None:
    async with SpanReceiver(lambda s: None, read_timeout_s=0.2) as receiver:
        conn = partial_post(receiver.port)
        try:
            answer = await asyncio.to_thread(conn.recv, 4096)
        finally:
            conn.close()
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"body not received within 0.2 s" in answer
        assert receiver.counts.rejected_payloads == 1


def connections(receiver: SpanReceiver) -> int:
    """Connections the receiver's aiohttp server holds (its handler is reading the body)."""
    runner = receiver._runner
    return 0 if runner is None or runner.server is None else len(runner.server.connections)


async def test_a_stalled_sender_does_not_hold_the_receivers_stop() -> None:
    """aiohttp waits 60 s by default for a handler still running when it stops; the run's end
    must not wait for an exporter that stalled mid-body."""
    receiver = SpanReceiver(lambda s: None)
    await receiver.start()
    conn = partial_post(receiver.port)
    try:
        await wait_until(lambda: connections(receiver) > 0)
        started = time.monotonic()
        await receiver.stop()
        took = time.monotonic() - started
    finally:
        conn.close()
    assert took < 5.0, f"stop took {took:.1f} s"
    assert receiver.counts.rejected_payloads == 1
    assert "receiver stopped" in (receiver.counts.last_rejection or "")


async def test_a_sender_that_hangs_up_mid_body_is_counted() -> None:
    async with SpanReceiver(lambda s: None) as receiver:
        partial_post(receiver.port).close()
        await wait_until(lambda: receiver.counts.rejected_payloads == 1)
        assert "cut short" in (receiver.counts.last_rejection or "")
        status, _ = await post(receiver.endpoint, ExportTraceServiceRequest().SerializeToString())
        assert status == 200  # and it keeps serving


@pytest.mark.parametrize("depth", [5000])
async def test_json_nested_deeper_than_the_stack_is_a_400(depth: int) -> None:
    body = b'{"resourceSpans":' + b"[" * depth + b"]" * depth + b"}"
    async with (
        SpanReceiver(lambda s: None) as receiver,
        aiohttp.ClientSession() as http,
        http.post(receiver.endpoint, data=body, headers={"Content-Type": "application/json"}) as r,
    ):
        assert r.status == 400
        assert "nested too deeply" in await r.text()
        assert receiver.counts.rejected_payloads == 1


async def test_a_span_before_the_records_file_exists_waits_for_it(tmp_path: Path) -> None:
    """The receiver listens before the run's records file is made; a span that comes in
    between (another client's) is kept and written once the file is there."""
    spans = RunSpans("127.0.0.1", 0)
    message = ExportTraceServiceRequest()
    add_span(message, GOOD)
    await spans.start()
    try:
        status, _ = await post(spans.receiver.endpoint, message.SerializeToString())
        assert status == 200 and spans.spans == []
        path = tmp_path / "records.jsonl"
        sink = JsonlSink(path, HEADER)
        spans.attach(sink.add_span)
    finally:
        await spans.stop()
    sink.close(None)
    assert [s.trace_id for s in spans.spans] == [GOOD]
    assert [s.trace_id for s in read_records(path).spans] == [GOOD]
