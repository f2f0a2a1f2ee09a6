"""latbench's metrics over OTLP/HTTP, for stacks that are OpenTelemetry-native rather than
Prometheus-scraped, under the GenAI semantic-convention names where one exists.

The figures are the Prometheus series' (`latbench.exporter.series`), not a second account of
them: the same histograms with exactly the same bucket boundaries (a View per instrument), filled
from the same per-record samples (`latbench.sinks.otlp` calls `summary.samples.record_samples`,
as the Prometheus sink does), so a bucket read in either backend holds the same requests.

Names follow OpenTelemetry semantic conventions v1.41.0, docs/gen-ai/gen-ai-metrics.md
(open-telemetry/semantic-conventions; the GenAI conventions have since moved to
open-telemetry/semantic-conventions-genai, whose development branch renames the client metrics
`gen_ai.client.inference.*`; docs/otel.md tracks it):
- `gen_ai.client.operation.duration` (s): E2E, last token event minus send; failed requests too,
  with `error.type`, as the convention asks (send to their last instant);
- `gen_ai.client.operation.time_to_first_chunk` (s): TTFT;
- `gen_ai.client.operation.time_per_output_chunk` (s): each gap between token events (ITL);
- `gen_ai.client.token.usage` ({token}, `gen_ai.token.type` input | output), with the
  convention's own boundaries (latbench has no token histogram to match);
- what the conventions lack under `latbench.`: TTFO, time to first tool call, ITL per token, TPOT,
  queue delay, event-loop lag, the error bounds (histograms, latbench's buckets), and requests,
  good requests, excluded requests and tool-call tokens (counters).

Attributes are as bounded as the Prometheus labels: the run's label set (target, model, API,
scenario) as semantic-convention attributes plus `latbench.*` for what they lack, and an error
kind or a phase from a closed set; never a request id.

The SDK's `PeriodicExportingMetricReader` exports on its own thread, so a slow or dead collector
never holds up the runner's loop; a failed export is counted and becomes one warning at the end
(`OtlpMetrics.shutdown`), never a failed run: the records file and results do not depend on it.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from latbench.exporter.series import BUILTIN_SIM_TARGET, HISTOGRAMS, RunLabels
from latbench.shared.secrets import read_secret_file

SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

OPERATION_DURATION = "gen_ai.client.operation.duration"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
TIME_PER_OUTPUT_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
TOKEN_USAGE = "gen_ai.client.token.usage"
# The convention's advised boundaries for token usage (gen-ai-metrics.md).
TOKEN_USAGE_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))

# latbench's histogram key (exporter.series.HISTOGRAMS) -> its semantic-convention name.
SEMCONV_HISTOGRAMS: Mapping[str, str] = {
    "e2e": OPERATION_DURATION,
    "ttft": TIME_TO_FIRST_CHUNK,
    "itl": TIME_PER_OUTPUT_CHUNK,
}
PREFIX = "latbench."

# Attribute keys. gen_ai.provider.name replaced gen_ai.system in semconv 1.37.
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
TARGET = "latbench.target"
API = "latbench.api"
SCENARIO = "latbench.scenario"
PHASE = "latbench.phase"

# latbench's API kind -> the convention's operation (well-known values: chat, text_completion).
OPERATIONS: Mapping[str, str] = {
    "chat": "chat",
    "completions": "text_completion",
    "anthropic": "chat",
    "responses": "chat",
}

DEFAULT_INTERVAL_S = 10.0


def _latbench_version() -> str:
    # From the installed distribution, not `latbench.__version__`: the package face imports
    # every stage, and this one sits below `run` (.importlinter).
    try:
        return version("latbench")
    except PackageNotFoundError:
        return "unknown"


DEFAULT_TIMEOUT_S = 5.0
Temporality = Literal["cumulative", "delta"]


@dataclass(frozen=True)
class InstrumentDef:
    name: str
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None  # histograms only
    key: str = ""  # the Prometheus histogram's key (exporter.series), or "" where none


def otel_name(key: str) -> str:
    """The OTLP name of latbench's histogram `key`."""
    return SEMCONV_HISTOGRAMS.get(key, PREFIX + key)


HISTOGRAM_DEFS: tuple[InstrumentDef, ...] = (
    *(InstrumentDef(otel_name(h.key), "s", h.help, h.buckets, h.key) for h in HISTOGRAMS),
    InstrumentDef(
        TOKEN_USAGE,
        "{token}",
        "Input and output tokens of succeeded measured requests (input as the server's usage "
        "reported it; output is N_out).",
        TOKEN_USAGE_BUCKETS,
    ),
)
COUNTER_DEFS: tuple[InstrumentDef, ...] = (
    InstrumentDef(
        PREFIX + "requests",
        "{request}",
        "Measured requests finished; failed ones carry error.type (latbench's error kind).",
    ),
    InstrumentDef(
        PREFIX + "good_requests",
        "{request}",
        "Measured requests that met every SLO of their run (goodput numerator).",
    ),
    InstrumentDef(
        PREFIX + "excluded_requests",
        "{request}",
        "Requests finished outside the measurement (warm-up, cool-down), by latbench.phase.",
    ),
    InstrumentDef(
        PREFIX + "tool_call_tokens",
        "{token}",
        "Tool-call tokens of succeeded measured requests: in the output tokens, not the answer.",
    ),
)


def run_attributes(labels: RunLabels, base_url: str | None) -> dict[str, str | int]:
    """The attributes every data point of a run carries: its label set, as the conventions name
    it where they can. `base_url` is the spec's target (None: the built-in simulator, whose
    random loopback port would make new series every run, so it gets no server.*)."""
    attrs: dict[str, str | int] = {
        OPERATION_NAME: OPERATIONS.get(labels.api, labels.api),
        # The wire format's provider: the conventions use it to say which flavour of telemetry
        # follows, and a vLLM or SGLang server speaks OpenAI's.
        PROVIDER_NAME: "anthropic" if labels.api == "anthropic" else "openai",
        REQUEST_MODEL: labels.model,
        TARGET: labels.target,
        API: labels.api,
        SCENARIO: labels.scenario,
    }
    if base_url is not None and labels.target != BUILTIN_SIM_TARGET:
        parts = urlsplit(base_url)
        if parts.hostname:
            attrs[SERVER_ADDRESS] = parts.hostname
            try:
                port = parts.port
            except ValueError:
                port = None
            attrs[SERVER_PORT] = port or (443 if parts.scheme == "https" else 80)
    return attrs


class OtlpError(ValueError):
    """OTLP export cannot be set up (a bad URL or header): the caller names the flag."""


def parse_endpoint(url: str) -> str:
    """The collector's metrics URL. OTLP/HTTP's metrics path is /v1/metrics; a bare base URL
    (`http://collector:4318`) gets it appended, as the SDK does for OTEL_EXPORTER_OTLP_ENDPOINT."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtlpError(f"{url!r}: expected an http(s) URL, e.g. http://127.0.0.1:4318/v1/metrics")
    if parts.path in ("", "/"):
        return url.rstrip("/") + "/v1/metrics"
    return url


def parse_headers(items: Sequence[str]) -> dict[str, str]:
    """`NAME=VALUE` pairs (the CLI's `--otlp-header`); `NAME=@PATH` reads the value from a file,
    so a token need not sit in the process list or the shell's history."""
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise OtlpError(f"--otlp-header {item!r}: write it as NAME=VALUE or NAME=@FILE")
        value = value.strip()
        if value.startswith("@"):
            value = read_secret_file(Path(value[1:]), f"--otlp-header {name}")
        headers[name] = value
    return headers


# -------------------------------------------------------------------------------------------------
# Failed exports, counted. The SDK's exporter reports a failure only as a log line (and force_flush
# still returns True), so the exporter is wrapped to count them and, when the caller asks, its log
# lines are kept for one warning instead of printed on the terminal mid-run.

_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http"
_capturing: weakref.WeakSet[OtlpMetrics] = weakref.WeakSet()
_capture_lock = threading.Lock()


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        for m in list(_capturing):
            m._note(record.getMessage())


_capture_handler = _Capture(logging.WARNING)


class _CountingExporter(MetricExporter):
    """Delegates to the OTLP exporter; counts what it failed to send."""

    def __init__(self, inner: OTLPMetricExporter, owner: OtlpMetrics) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._owner = owner

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as e:  # a collector's failure never ends a run
            self._owner._note(f"{type(e).__name__}: {e}")
            result = MetricExportResult.FAILURE
        self._owner._exported(result is MetricExportResult.SUCCESS)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _temporality(t: Temporality | None) -> dict[type, AggregationTemporality] | None:
    if t is None:  # the SDK's default, or OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
        return None
    sums = AggregationTemporality.DELTA if t == "delta" else AggregationTemporality.CUMULATIVE
    return {
        Counter: sums,
        Histogram: sums,
        ObservableCounter: sums,
        # Up-down sums stay cumulative under delta preference, as the OTLP exporter spec says.
        UpDownCounter: AggregationTemporality.CUMULATIVE,
        ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
        ObservableGauge: AggregationTemporality.CUMULATIVE,
    }


class OtlpMetrics:
    """One MeterProvider exporting latbench's instruments to a collector's OTLP/HTTP (protobuf)
    endpoint every `interval_s`, and at `flush`/`shutdown`. Long-lived in the service (one for
    all its runs, like its Prometheus registry), one per `latbench run` on the command line.

    `headers` go with every export (auth), over OTEL_EXPORTER_OTLP_[METRICS_]HEADERS. With
    `capture_logs`, the SDK's export errors are kept for `warnings` rather than logged (a
    terminal run shows one line at the end; the service leaves them to its log)."""

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        temporality: Temporality | None = None,
        capture_logs: bool = True,
    ) -> None:
        if not interval_s > 0:
            raise OtlpError(f"export interval {interval_s:g}: give more than 0 seconds")
        if not timeout_s > 0:
            raise OtlpError(f"export timeout {timeout_s:g}: give more than 0 seconds")
        self.endpoint = parse_endpoint(endpoint)
        self.timeout_s = timeout_s
        self.exports = 0
        self.failures = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        inner = OTLPMetricExporter(
            endpoint=self.endpoint,
            headers=dict(headers or {}),
            timeout=timeout_s,
            preferred_temporality=_temporality(temporality),
        )
        self._capture = capture_logs
        if capture_logs:
            with _capture_lock:
                _capturing.add(self)
                logger = logging.getLogger(_EXPORTER_LOGGER)
                if _capture_handler not in logger.handlers:
                    logger.addHandler(_capture_handler)
                logger.propagate = False
        reader = PeriodicExportingMetricReader(
            _CountingExporter(inner, self),
            export_interval_millis=interval_s * 1000,
            export_timeout_millis=timeout_s * 1000,
        )
        views = [
            View(
                instrument_name=d.name,
                aggregation=ExplicitBucketHistogramAggregation(boundaries=d.buckets),
            )
            for d in HISTOGRAM_DEFS
        ]
        ours = _latbench_version()
        resource = Resource.create({"service.name": "latbench", "service.version": ours})
        self.provider = MeterProvider(metric_readers=[reader], resource=resource, views=views)
        meter = self.provider.get_meter("latbench", ours, schema_url=SCHEMA_URL)
        self.histograms: dict[str, Any] = {
            d.name: meter.create_histogram(d.name, unit=d.unit, description=d.description)
            for d in HISTOGRAM_DEFS
        }
        self.counters: dict[str, Any] = {
            d.name: meter.create_counter(d.name, unit=d.unit, description=d.description)
            for d in COUNTER_DEFS
        }
        self._closed = False

    def _note(self, message: str) -> None:
        # The SDK's retry line names the cause; its promise of a retry is stale by the end.
        message = re.sub(r",? *retrying in [0-9.]+ ?s\.?$", "", message.strip())
        with self._lock:
            if len(self.errors) < 10:
                self.errors.append(message)

    def _exported(self, ok: bool) -> None:
        with self._lock:
            self.exports += 1
            self.failures += not ok

    def flush_in_background(self) -> None:
        """Export now, from a thread of its own: a run's final values reach the collector at
        its end without the caller's loop waiting on a slow one."""
        with self._lock:
            if self._closed or (self._flusher is not None and self._flusher.is_alive()):
                return
            self._flusher = threading.Thread(
                target=self.flush, name="latbench-otlp-flush", daemon=True
            )
            self._flusher.start()

    def flush(self) -> None:
        """Export now and wait for it (at most the export timeout, plus the SDK's retries within
        it)."""
        self.provider.force_flush(timeout_millis=self.timeout_s * 1000)

    @property
    def warnings(self) -> list[str]:
        """Exports that failed, as one line (empty when every one went through)."""
        with self._lock:
            failed, total, errors = self.failures, self.exports, list(self.errors)
        if not failed:
            return []
        why = f"; the first error: {errors[0]}" if errors else ""
        return [
            f"{failed} of {total} OTLP metric exports to {self.endpoint} failed{why} (the run's "
            "records and results are unaffected)"
        ]

    def shutdown(self) -> list[str]:
        """The final export, then the provider's end; what failed over its life, as warnings."""
        with self._lock:
            done, self._closed = self._closed, True
            flusher = self._flusher
        if done:
            return self.warnings
        if flusher is not None:
            flusher.join(self.timeout_s * 2)
        self.provider.shutdown(timeout_millis=self.timeout_s * 1000)
        if self._capture:
            with _capture_lock:
                _capturing.discard(self)
                if not _capturing:
                    logger = logging.getLogger(_EXPORTER_LOGGER)
                    logger.removeHandler(_capture_handler)
                    logger.propagate = True
        return self.warnings
