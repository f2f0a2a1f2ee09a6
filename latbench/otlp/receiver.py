"""An OTLP/HTTP trace receiver for one run: a tracing server's per-request spans, as `ServerSpan`.

vLLM (`--otlp-traces-endpoint`) exports one `llm_request` span per request, under the trace id
latbench sent in that request's `traceparent`; this is the other end of that wire, so a run can
join each request with the server's own account of it (`summary/spans.py`). It speaks OTLP/HTTP
as the specification has it (opentelemetry-proto, docs/specification.md, "OTLP/HTTP"): POST
/v1/traces with an `ExportTraceServiceRequest` as binary protobuf (application/x-protobuf, what
the Python SDK's exporter sends) or as OTLP JSON (application/json: protobuf's JSON mapping,
except that trace and span ids are hex strings, not base64: "JSON Protobuf Encoding"), either
optionally gzip-compressed; a success is 200 with an empty `ExportTraceServiceResponse` in the
request's encoding (with `partial_success` when some spans were unusable).

Decoding is the project's own binding's (`opentelemetry-proto`, the `otel` extra), never a
hand-written protobuf reader. It runs on the run's own event loop, which sends no request (the
worker processes do), so a payload decoded here never delays a timestamp.

Only a request's span is handed on: one of kind SERVER (the span a server makes of a request it
received, as vLLM's `llm_request`) or one carrying a `gen_ai.latency.*` attribute. vLLM 0.32
also exports its start-up as a trace of INTERNAL spans ("Overall Loading", "Load weights", ...),
sent once the receiver is up; those are counted (`other_spans`) and left out, since no request
could ever match them.

A sender is never trusted: the body is capped before and after decompression (a gzip bomb
stops at the cap), a malformed body is a 400 with a line saying what was wrong, an unknown
content type a 415, a body that does not arrive within `READ_TIMEOUT_S` a 408, and the receiver
keeps serving; rejected payloads and spans are counted. A span is checked with the records
file's own rules (`records.record.check_span`) before it is handed on, so that one bad value (a
time past int64, a count of 1e300, a negative duration) is one rejected span, never a records
file that cannot be read back or a payload whose other spans are lost. Stopping waits at most
`SHUTDOWN_TIMEOUT_S` for a sender still mid-request: the run's end never waits on a stalled
exporter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from latbench.records.record import ServerSpan, check_span, is_trace_id
from latbench.shared.errors import LatbenchError

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

TRACES_PATH = "/v1/traces"
# The OpenTelemetry Collector's default cap on a request body is 20 MiB; a batch of a few
# thousand vLLM spans is well under 1 MiB, so 16 MiB refuses only what is not a batch of spans.
MAX_BODY_BYTES = 16 << 20
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
INSTALL_HINT = "pip install 'latbench[otel]'"
# A batch of spans is one small POST on a live connection: a body that takes longer than this is
# a stalled or dead sender, not a slow one.
READ_TIMEOUT_S = 10.0
# How long stopping waits for a request still being handled (aiohttp's default is 60 s).
SHUTDOWN_TIMEOUT_S = 1.0

# vLLM's attribute names (vllm/tracing: SpanAttributes), each to its ServerSpan field.
FLOAT_ATTRS: dict[str, str] = {
    "gen_ai.latency.time_to_first_token": "ttft_s",
    "gen_ai.latency.e2e": "e2e_s",
    "gen_ai.latency.time_in_queue": "queue_s",
    "gen_ai.latency.time_in_model_prefill": "prefill_s",
    "gen_ai.latency.time_in_model_decode": "decode_s",
    "gen_ai.latency.time_in_model_inference": "inference_s",
}
INT_ATTRS: dict[str, str] = {
    "gen_ai.usage.prompt_tokens": "prompt_tokens",
    "gen_ai.usage.completion_tokens": "completion_tokens",
}
REQUEST_ID_ATTR = "gen_ai.request.id"
SERVICE_NAME_ATTR = "service.name"


def traces_url(host: str, port: int) -> str:
    """The URL a sender on this machine posts its spans to (`--otlp-traces-endpoint`), for a
    receiver listening on `host:port`."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"  # listening everywhere: loopback reaches it
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{TRACES_PATH}"


def otel_available() -> bool:
    try:
        _messages()
    except LatbenchError:
        return False
    return True


def _messages() -> tuple[type[ExportTraceServiceRequest], type[Any]]:
    """The request and response messages, imported on first use: the binding is an extra."""
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )
    except ImportError:
        raise LatbenchError(
            "receiving a server's OTLP spans needs the OpenTelemetry protobuf binding: "
            f"{INSTALL_HINT}"
        ) from None
    return ExportTraceServiceRequest, ExportTraceServiceResponse


class BadPayload(Exception):
    """A payload the receiver refuses; `status` is the HTTP answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ReceiverCounts:
    """What the receiver has seen; every payload and span is in exactly one count."""

    payloads: int = 0  # accepted (200)
    rejected_payloads: int = 0  # answered 400, 408, 413 or 415, or cut off by the sender
    spans: int = 0  # handed on as ServerSpan
    # In an accepted payload, but unusable: no valid 16-byte trace id, a value the records
    # file cannot hold (`check_span`), or one its taker could not keep.
    rejected_spans: int = 0
    other_spans: int = 0  # valid, but not a request's (not SERVER, no gen_ai.latency.*)
    last_rejection: str | None = None  # the latest refused payload's reason, for the warning
    last_span_rejection: str | None = None  # the latest rejected span's reason

    def to_dict(self) -> dict[str, int | str | None]:
        return asdict(self)


class SpanReceiver:
    """OTLP/HTTP POST /v1/traces on `host:port` (0: a free port; `port` holds the bound one
    after `start`), each usable span handed to `on_span` on the loop that runs the receiver."""

    def __init__(
        self,
        on_span: Callable[[ServerSpan], None],
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self._request_type, self._response_type = _messages()  # fails before anything listens
        self.on_span = on_span
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.counts = ReceiverCounts()
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        """The URL a sender on this machine posts to (`--otlp-traces-endpoint`)."""
        return traces_url(self.host, self.port)

    async def start(self) -> None:
        # The raw body is read with its own cap; aiohttp's cap would answer 413 with a page
        # of HTML, and its own decompression has no cap of its own on what comes out.
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(TRACES_PATH, self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            auto_decompress=False,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise LatbenchError(
                f"the OTLP span receiver cannot listen on {self.host}:{self.port}: {e.strerror}"
            ) from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # the bound port, when asked for port 0

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SpanReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            kind = _content_kind(request.content_type)
            body = await _read_within(request, self.max_body_bytes, self.read_timeout_s)
            body = _decompress(
                request.headers.get("Content-Encoding", ""), body, self.max_body_bytes
            )
            message = self._decode(kind, body)
        except BadPayload as e:
            self._refused(str(e))
            return web.Response(status=e.status, text=f"{e}\n")
        except asyncio.CancelledError:
            # The receiver stopped (the run ended) while the body was still coming.
            self._refused("body cut off: the receiver stopped while it was still coming")
            raise
        accepted = rejected = 0
        reason = ""
        for span in spans_of(message, monotonic_ns()):
            if isinstance(span, ServerSpan):
                try:
                    self.on_span(span)
                except Exception as e:  # its taker could not keep it: the others still count
                    span = Rejected(f"span {span.trace_id} could not be kept: {e}")
                else:
                    accepted += 1
                    continue
            if isinstance(span, Rejected):
                rejected += 1
                reason = span.reason
            else:
                self.counts.other_spans += 1
        self.counts.payloads += 1
        self.counts.spans += accepted
        self.counts.rejected_spans += rejected
        response = self._response_type()
        if rejected:
            self.counts.last_span_rejection = reason
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = (
                f"{rejected} span(s) rejected; the last: {reason}"
            )
        if kind == PROTOBUF:
            return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
        from google.protobuf import json_format

        return web.Response(body=json_format.MessageToJson(response), content_type=JSON)

    def _refused(self, why: str) -> None:
        self.counts.rejected_payloads += 1
        self.counts.last_rejection = why

    def _decode(self, kind: str, body: bytes) -> ExportTraceServiceRequest:
        message = self._request_type()
        if kind == PROTOBUF:
            from google.protobuf.message import DecodeError

            try:
                message.ParseFromString(body)
            except DecodeError as e:
                raise BadPayload(400, f"not an OTLP ExportTraceServiceRequest: {e}") from None
            return message
        from google.protobuf import json_format

        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:  # orjson's depth limit (1024) is one too
            raise BadPayload(400, f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadPayload(400, "not an OTLP JSON ExportTraceServiceRequest: not an object")
        try:
            _hex_ids_to_base64(data)
            # The specification asks receivers to ignore fields they do not know.
            json_format.ParseDict(data, message, ignore_unknown_fields=True)
        except (json_format.ParseError, BadPayload) as e:
            raise BadPayload(400, f"not an OTLP JSON ExportTraceServiceRequest: {e}") from None
        except RecursionError:
            # Nesting (an AnyValue's kvlist in a kvlist ...) deeper than Python's stack.
            raise BadPayload(
                400, "not an OTLP JSON ExportTraceServiceRequest: nested too deeply"
            ) from None
        except (TypeError, ValueError) as e:
            # json_format lets some wrong shapes through as these (a list where a message is).
            raise BadPayload(
                400, f"not an OTLP JSON ExportTraceServiceRequest: {type(e).__name__}: {e}"
            ) from None
        return message


def _content_kind(content_type: str) -> str:
    if content_type in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if content_type == JSON:
        return JSON
    raise BadPayload(
        415, f"content type {content_type or '(none)'!r}: send {PROTOBUF} or {JSON} (OTLP/HTTP)"
    )


async def _read_within(request: web.Request, cap: int, timeout_s: float) -> bytes:
    """The body, at most `cap` bytes, within `timeout_s`: a sender that stalls mid-body (or
    closes the connection) is a refused payload, never a handler that holds the run's end."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_capped(request, cap)
    except TimeoutError:
        raise BadPayload(408, f"body not received within {timeout_s:g} s") from None
    except (ConnectionError, aiohttp.ClientPayloadError) as e:
        raise BadPayload(400, f"body cut short: {e or type(e).__name__}") from None


async def _read_capped(request: web.Request, cap: int) -> bytes:
    if request.content_length is not None and request.content_length > cap:
        raise BadPayload(413, f"body of {request.content_length} bytes is over the {cap} cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > cap:
            raise BadPayload(413, f"body over the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def _decompress(encoding: str, body: bytes, cap: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    # gzip is OTLP/HTTP's; deflate is the Python SDK exporter's other choice.
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise BadPayload(
            415, f"content encoding {encoding!r}: send gzip, deflate or none (OTLP/HTTP)"
        )
    inflate = zlib.decompressobj(wbits=wbits)
    try:
        out = inflate.decompress(body, cap + 1)
    except zlib.error as e:
        raise BadPayload(400, f"not {encoding}: {e}") from None
    if len(out) > cap or inflate.unconsumed_tail:
        raise BadPayload(413, f"body over the {cap}-byte cap once decompressed")
    if not inflate.eof:
        raise BadPayload(400, f"not {encoding}: the stream is truncated")
    return out


_ID_KEYS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """OTLP JSON's hex ids as protobuf's JSON mapping wants bytes (base64), in place."""
    for rs in _list(data, "resourceSpans", "resource_spans"):
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            for span in _list(ss, "spans"):
                _convert_ids(span)
                for link in _list(span, "links"):
                    _convert_ids(link)


def _list(d: object, *keys: str) -> Iterator[dict[str, Any]]:
    if not isinstance(d, dict):
        return
    for key in keys:
        value = d.get(key)
        if isinstance(value, list):
            yield from (v for v in value if isinstance(v, dict))


def _convert_ids(d: dict[str, Any]) -> None:
    for key in _ID_KEYS:
        value = d.get(key)
        if isinstance(value, str) and value:
            try:
                d[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                raise BadPayload(400, f"{key} {value[:40]!r} is not hex (OTLP JSON)") from None


SPAN_KIND_SERVER = 2  # opentelemetry/proto/trace/v1/trace.proto, Span.SpanKind


@dataclass(frozen=True, slots=True)
class Rejected:
    """A span refused (OTLP partial success), and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class NotARequest:
    """A valid span that no request could match (vLLM's start-up trace): counted, left out."""

    name: str


def spans_of(
    message: ExportTraceServiceRequest, received_ns: int
) -> Iterator[ServerSpan | Rejected | NotARequest]:
    """Each span of an export as a `ServerSpan`, or why not."""
    for rs in message.resource_spans:
        service = _string(rs.resource.attributes, SERVICE_NAME_ATTR)
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield _server_span(span, service, received_ns)


def _server_span(
    span: Span, service: str | None, received_ns: int
) -> ServerSpan | Rejected | NotARequest:
    trace_id = binascii.hexlify(span.trace_id).decode()
    if len(span.trace_id) != 16 or not is_trace_id(trace_id):
        return Rejected(f"trace id {trace_id[:40]!r} is not a valid 16-byte trace id")
    fields: dict[str, Any] = {}
    request_id = None
    latency = False
    for kv in span.attributes:
        if kv.key in FLOAT_ATTRS:
            latency = True
            fields[FLOAT_ATTRS[kv.key]] = _number(kv.value)
        elif kv.key in INT_ATTRS:
            fields[INT_ATTRS[kv.key]] = _count(kv.value)
        elif kv.key == REQUEST_ID_ATTR and kv.value.HasField("string_value"):
            request_id = kv.value.string_value
    if span.kind != SPAN_KIND_SERVER and not latency:
        return NotARequest(span.name)
    fields |= {
        "trace_id": trace_id,
        "span_id": binascii.hexlify(span.span_id).decode(),
        "name": span.name,
        "received_ns": received_ns,
        "start_unix_ns": span.start_time_unix_nano or None,
        "end_unix_ns": span.end_time_unix_nano or None,
        "request_id": request_id,
        "service": service,
    }
    try:
        # The records file's own rules: a span kept here always reads back from it.
        check_span(fields)
    except ValueError as e:
        return Rejected(f"span {trace_id}: {e}")
    return ServerSpan(**fields)


def _number(value: AnyValue) -> float | None:
    """A duration as sent: a double (vLLM's) or an int; `check_span` judges its value."""
    if value.HasField("double_value"):
        return float(value.double_value)
    if value.HasField("int_value"):
        return float(value.int_value)
    return None


def _count(value: AnyValue) -> int | float | None:
    """A token count: an int, or a double as a whole number where it holds one; any other
    number is passed on as sent, for `check_span` to refuse with the value in its reason."""
    if value.HasField("int_value"):
        return int(value.int_value)
    if value.HasField("double_value"):
        v = value.double_value
        return int(v) if v.is_integer() else v
    return None  # a string or a bool is no count: the field is left out


def _string(attributes: Any, key: str) -> str | None:
    kv: KeyValue
    for kv in attributes:
        if kv.key == key and kv.value.HasField("string_value"):
            return str(kv.value.string_value)
    return None
