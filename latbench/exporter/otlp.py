"""latbench's metrics over OTLP/HTTP: one more exposition of the exporter's state, for stacks that
are OpenTelemetry-native rather than Prometheus-scraped, under the GenAI semantic-convention names
where one exists.

The state is `exporter.series.LatbenchMetrics`, which the Prometheus sink already fills; this
module only reads it, as `exporter.exposition` (the text format) and `exporter.push` (the
Pushgateway) do: prometheus/client_python's split of state from exposition. So a record costs
nothing more with OTLP on, there is no second copy of any histogram, and the two backends cannot
disagree: each OTLP histogram is the Prometheus one (the same bucket boundaries, counts and sum),
each counter and gauge the same value. The request is written with opentelemetry-proto, the
binding the span receiver reads with (the `otel` extra), and POSTed as protobuf from a thread of
its own, like the Pushgateway's pusher: at the start, every `interval`, once at the end.

Names follow OpenTelemetry semantic conventions v1.41.0, docs/gen-ai/gen-ai-metrics.md
(open-telemetry/semantic-conventions; the GenAI conventions have since moved to
open-telemetry/semantic-conventions-genai, whose development branch renames the client metrics
`gen_ai.client.inference.*`; docs/otel.md tracks it):
- `gen_ai.client.operation.duration` (s): E2E of succeeded requests;
- `gen_ai.client.operation.time_to_first_chunk` (s): TTFT;
- `gen_ai.client.operation.time_per_output_chunk` (s): each gap between token events (ITL);
- everything else under `latbench.`: the other histograms (TTFO, ITL per token, TPOT, queue
  delay, loop lag, error bounds, the server span's split), the counters and the gauges.

Attributes are as bounded as the Prometheus labels: the run's label set (target, model, API,
scenario, location) as semantic-convention attributes plus `latbench.*` for what they lack, and a
counter's one extra label (an outcome, error kind, phase, span match or GPU); never a request id.

Temporality: cumulative (the default) sends each series as it stands, from when the exporter
first saw it; delta sends the difference from the last export that the collector accepted, so a
failed export's share is in the next one and the deltas always add up to the run. A failed
export is kept for one warning (or logged, in the service), never a failed run.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

import numpy as np
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from latbench.exporter.otlp_config import OtlpConfig
from latbench.exporter.series import (
    BUILTIN_SIM_TARGET,
    HISTOGRAMS,
    SCALARS,
    LatbenchMetrics,
    RunLabels,
    RunSeries,
    ScalarDef,
)

SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

OPERATION_DURATION = "gen_ai.client.operation.duration"
TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
TIME_PER_OUTPUT_CHUNK = "gen_ai.client.operation.time_per_output_chunk"

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
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
TARGET = "latbench.target"
API = "latbench.api"
SCENARIO = "latbench.scenario"
LOCATION = "latbench.location"
PHASE = "latbench.phase"
OUTCOME = "latbench.outcome"
SPAN_MATCH = "latbench.span.match"
# The hardware conventions' device id (semconv hardware/gpu.md); the value is latbench's own
# "source:gpu" name, unique within the run.
HW_ID = "hw.id"

# latbench's API kind -> the convention's operation (well-known values: chat, text_completion).
OPERATIONS: Mapping[str, str] = {
    "chat": "chat",
    "completions": "text_completion",
    "anthropic": "chat",
    "responses": "chat",
}


@dataclass(frozen=True)
class MetricDef:
    """How one of the exporter's series is named over OTLP."""

    name: str
    unit: str
    description: str
    key: str  # HistogramDef.key or ScalarDef.name in exporter.series
    attribute: str | None = None  # what the Prometheus series' extra label becomes
    integer: bool = False  # counts are sent as integers, amounts (s, J, W, ratio) as doubles
    buckets: tuple[float, ...] = ()  # a histogram's boundaries: exactly the Prometheus series'


def otel_name(key: str) -> str:
    """The OTLP name of latbench's histogram `key`."""
    return SEMCONV_HISTOGRAMS.get(key, PREFIX + key)


HISTOGRAM_DEFS: tuple[MetricDef, ...] = tuple(
    MetricDef(otel_name(h.key), "s", h.help, h.key, buckets=h.buckets) for h in HISTOGRAMS
)

# ScalarDef.name -> (OTLP name, unit, the extra label's attribute, integer). Names without the
# unit suffix Prometheus wants (OTel puts the unit in `unit`); the GPU series stay latbench's
# rather than the hardware conventions' hw.gpu.*: those are a host's own readings, reported all
# the time, where these are the last reading during a run of the label set.
SCALAR_NAMES: Mapping[str, tuple[str, str, str | None, bool]] = {
    "requests": ("latbench.requests", "{request}", OUTCOME, True),
    "errors": ("latbench.errors", "{request}", ERROR_TYPE, True),
    "excluded_requests": ("latbench.excluded_requests", "{request}", PHASE, True),
    "spans": ("latbench.spans", "{span}", SPAN_MATCH, True),
    "good_requests": ("latbench.good_requests", "{request}", None, True),
    "output_tokens": ("latbench.output_tokens", "{token}", None, True),
    "tool_call_tokens": ("latbench.tool_call_tokens", "{token}", None, True),
    "prompt_tokens": ("latbench.prompt_tokens", "{token}", None, True),
    "client_cpu_seconds": ("latbench.client_cpu_time", "s", None, False),
    "inflight_requests": ("latbench.inflight_requests", "{request}", None, True),
    "offered_rate": ("latbench.offered_rate", "{request}/s", None, False),
    "run_active": ("latbench.run_active", "{run}", None, True),
    "run_start_time_seconds": ("latbench.run_start_time", "s", None, False),
    "gpu_utilization_ratio": ("latbench.gpu.utilization", "1", HW_ID, False),
    "gpu_memory_used_bytes": ("latbench.gpu.memory.usage", "By", HW_ID, True),
    "gpu_power_watts": ("latbench.gpu.power", "W", HW_ID, False),
    "energy_joules": ("latbench.energy", "J", None, False),
}


def _scalar_def(f: ScalarDef) -> MetricDef:
    # A series added to exporter.series without a row above still goes out, under its
    # Prometheus name and label (tests/otlp/test_metrics.py asks for a row for each).
    name, unit, attribute, integer = SCALAR_NAMES.get(
        f.name, (PREFIX + f.name, "", f.extra and PREFIX + f.extra, False)
    )
    return MetricDef(name, unit, f.help, f.name, attribute, integer)


COUNTER_DEFS: tuple[tuple[ScalarDef, MetricDef], ...] = tuple(
    (f, _scalar_def(f)) for f in SCALARS if f.type == "counter"
)
GAUGE_DEFS: tuple[tuple[ScalarDef, MetricDef], ...] = tuple(
    (f, _scalar_def(f)) for f in SCALARS if f.type != "counter"
)


def latbench_version() -> str:
    # From the installed distribution, not `latbench.__version__`: the package face imports
    # every stage, and this one sits below `run` (.importlinter).
    try:
        return version("latbench")
    except PackageNotFoundError:
        return "unknown"


def run_attributes(labels: RunLabels) -> dict[str, str | int]:
    """The attributes every data point of a label set carries, as the conventions name them
    where they can. server.* come from the `target` label when it is a URL (a `latbench run`);
    the built-in simulator (a random loopback port per run) and the service's catalogue names
    have none."""
    attrs: dict[str, str | int] = {
        OPERATION_NAME: OPERATIONS.get(labels.api, labels.api),
        # The wire format's provider: the conventions use it to say which flavour of telemetry
        # follows, and a vLLM or SGLang server speaks OpenAI's.
        PROVIDER_NAME: "anthropic" if labels.api == "anthropic" else "openai",
        REQUEST_MODEL: labels.model,
        TARGET: labels.target,
        API: labels.api,
        SCENARIO: labels.scenario,
        LOCATION: labels.location,
    }
    if labels.target != BUILTIN_SIM_TARGET:
        parts = urlsplit(labels.target)
        if parts.scheme in ("http", "https") and parts.hostname:
            attrs[SERVER_ADDRESS] = parts.hostname
            try:
                port = parts.port
            except ValueError:
                port = None
            attrs[SERVER_PORT] = port or (443 if parts.scheme == "https" else 80)
    return attrs


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


# -------------------------------------------------------------------------------------------------
# The request, from a snapshot of the state


@dataclass
class _Reading:
    """What a series held at one export: histograms as counts per bucket (+Inf last) and sum,
    each counter as (extra label value, value) pairs. Read once per export, so what is sent and
    what delta's next export subtracts are the same numbers (the CPU counter moves between two
    reads)."""

    at_ns: int
    hist: dict[str, tuple[np.ndarray, float]]
    counters: dict[str, list[tuple[str, float]]]


def _read(s: RunSeries, at_ns: int) -> _Reading:
    hist: dict[str, tuple[np.ndarray, float]] = {}
    for h in HISTOGRAMS:
        cumulative, total = s.hist[h.key].snapshot()
        hist[h.key] = (np.diff(np.asarray(cumulative, dtype=np.int64), prepend=0), total)
    counters = {f.name: f.values(s) for f, _ in COUNTER_DEFS}
    return _Reading(at_ns, hist, counters)


class OtlpExposition:
    """Builds `ExportMetricsServiceRequest`s from a `LatbenchMetrics`. Not thread-safe: one
    exporter thread calls `request` and then `accepted` (delta's baseline moves only then)."""

    def __init__(self, metrics: LatbenchMetrics, temporality: str = "cumulative") -> None:
        self.metrics = metrics
        self.delta = temporality == "delta"
        self._temporality = (
            pb.AGGREGATION_TEMPORALITY_DELTA
            if self.delta
            else pb.AGGREGATION_TEMPORALITY_CUMULATIVE
        )
        # When each series started, as the exporter first saw it (cumulative start times).
        self._started: dict[RunLabels, int] = {}
        # Delta: each series as the last accepted export had it; and what the pending one reads.
        self._accepted: dict[RunLabels, _Reading] = {}
        self._pending: dict[RunLabels, _Reading] = {}
        self._attrs: dict[RunLabels, list[KeyValue]] = {}
        ours = latbench_version()
        self._resource = Resource(
            attributes=[_kv("service.name", "latbench"), _kv("service.version", ours)]
        )
        self._scope = InstrumentationScope(name="latbench", version=ours)

    def _start_of(self, s: RunSeries, now_ns: int) -> int:
        start = self._started.get(s.labels)
        if start is None:
            # The series' first run's start when the exporter sees it during that run (it is
            # made at a run's start, and a pusher exports then); never later than now.
            first = int(s.start_time * 1e9) if s.start_time > 0 else now_ns
            start = self._started[s.labels] = min(first, now_ns)
        return start

    def _attributes(self, labels: RunLabels) -> list[KeyValue]:
        kvs = self._attrs.get(labels)
        if kvs is None:
            kvs = self._attrs[labels] = [_kv(k, v) for k, v in run_attributes(labels).items()]
        return kvs

    def request(self, now_ns: int | None = None) -> ExportMetricsServiceRequest:
        """Every series as it stands now (cumulative) or since the last accepted export (delta)."""
        now = time.time_ns() if now_ns is None else now_ns
        all_series = self.metrics.all_series()
        readings = {s.labels: _read(s, now) for s in all_series}
        self._pending = readings
        # Per series: its attributes, the interval its sums cover, and what to subtract.
        rows: list[tuple[RunSeries, list[KeyValue], int, _Reading | None]] = []
        for s in all_series:
            start = self._start_of(s, now)
            base = self._accepted.get(s.labels) if self.delta else None
            rows.append(
                (s, self._attributes(s.labels), start if base is None else base.at_ns, base)
            )
        metrics: list[pb.Metric] = []
        for d in HISTOGRAM_DEFS:
            points = []
            for s, attrs, start, base in rows:
                counts, total = readings[s.labels].hist[d.key]
                if base is not None:
                    counts = counts - base.hist[d.key][0]
                    total -= base.hist[d.key][1]
                points.append(
                    pb.HistogramDataPoint(
                        attributes=attrs,
                        start_time_unix_nano=start,
                        time_unix_nano=now,
                        count=int(counts.sum()),
                        sum=total,
                        bucket_counts=counts.tolist(),
                        explicit_bounds=d.buckets,
                    )
                )
            metrics.append(
                pb.Metric(
                    name=d.name,
                    unit=d.unit,
                    description=d.description,
                    histogram=pb.Histogram(
                        data_points=points, aggregation_temporality=self._temporality
                    ),
                )
            )
        for f, d in COUNTER_DEFS:
            points = []
            for s, attrs, start, base in rows:
                before = {} if base is None else dict(base.counters[f.name])
                for extra, value in readings[s.labels].counters[f.name]:
                    value -= before.get(extra, 0.0)
                    points.append(self._number(d, attrs, extra, value, start, now))
            if points:
                metrics.append(
                    pb.Metric(
                        name=d.name,
                        unit=d.unit,
                        description=d.description,
                        sum=pb.Sum(
                            data_points=points,
                            aggregation_temporality=self._temporality,
                            is_monotonic=True,
                        ),
                    )
                )
        for f, d in GAUGE_DEFS:
            points = [
                self._number(d, attrs, extra, value, 0, now)
                for s, attrs, _, _ in rows
                for extra, value in f.values(s)
            ]
            if points:
                metrics.append(
                    pb.Metric(
                        name=d.name,
                        unit=d.unit,
                        description=d.description,
                        gauge=pb.Gauge(data_points=points),
                    )
                )
        return ExportMetricsServiceRequest(
            resource_metrics=[
                pb.ResourceMetrics(
                    resource=self._resource,
                    scope_metrics=[
                        pb.ScopeMetrics(scope=self._scope, metrics=metrics, schema_url=SCHEMA_URL)
                    ],
                )
            ]
        )

    def _number(
        self, d: MetricDef, attrs: list[KeyValue], extra: str, value: float, start: int, now: int
    ) -> pb.NumberDataPoint:
        kvs = attrs if d.attribute is None else [*attrs, _kv(d.attribute, extra)]
        if d.integer:
            return pb.NumberDataPoint(
                attributes=kvs, start_time_unix_nano=start, time_unix_nano=now, as_int=round(value)
            )
        return pb.NumberDataPoint(
            attributes=kvs, start_time_unix_nano=start, time_unix_nano=now, as_double=value
        )

    def accepted(self) -> None:
        """The collector took the last request: delta's next one counts from it."""
        if self.delta:
            self._accepted.update(self._pending)
        self._pending = {}


# -------------------------------------------------------------------------------------------------
# Sending


class ExportFailed(Exception):
    """One export that did not go through, with the reason as the collector or the socket gave
    it."""


def post(config: OtlpConfig, body: bytes) -> str | None:
    """POST one request; returns the collector's partial-success message (some points rejected),
    or None. Raises ExportFailed when it was not accepted."""
    req = urllib.request.Request(
        config.endpoint,
        data=body,
        method="POST",
        headers={**config.headers, "Content-Type": "application/x-protobuf"},
    )
    try:
        with urllib.request.urlopen(req, timeout=config.timeout_s) as resp:
            answer = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace").strip()
        raise ExportFailed(f"HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")) from e
    except urllib.error.URLError as e:
        raise ExportFailed(str(e.reason)) from e
    except (OSError, ValueError) as e:  # a timeout while reading, a malformed URL
        raise ExportFailed(f"{type(e).__name__}: {e}") from e
    try:
        parsed = ExportMetricsServiceResponse.FromString(answer)
    except Exception:  # a 200 with a body that is not the response: accepted all the same
        return None
    partial = parsed.partial_success
    if partial.rejected_data_points:
        why = partial.error_message or "no reason given"
        return f"the collector rejected {partial.rejected_data_points} data points: {why}"
    return None


class OtlpPusher:
    """Exports a `LatbenchMetrics` to one collector from a thread of its own: at `start`, every
    `config.interval_s`, and once more at `finish`. Exports are serialised, so the final one
    follows any in flight. Failures never raise: the run's warnings get them (`warnings`), and
    with `log` each change between failing and working is logged as it happens (the service)."""

    def __init__(
        self, metrics: LatbenchMetrics, config: OtlpConfig, log: logging.Logger | None = None
    ) -> None:
        self.config = config
        self.exposition = OtlpExposition(metrics, config.temporality)
        self._log = log
        self._export_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.exports = 0
        self.failures = 0
        self.errors: list[str] = []  # the first few reasons, for the warning
        self.notes: list[str] = []  # partial successes
        self._failing = False

    def export(self) -> bool:
        """One export now; True when the collector accepted it."""
        with self._export_lock:
            body = self.exposition.request().SerializeToString()
            try:
                note = post(self.config, body)
            except ExportFailed as e:
                self._failed(str(e))
                return False
            self.exposition.accepted()
            self.exports += 1
            if self._failing and self._log is not None:
                self._log.info("OTLP metric export to %s works again", self.config.endpoint)
            self._failing = False
            if note is not None and len(self.notes) < 10:
                self.notes.append(note)
            return True

    def _failed(self, why: str) -> None:
        # Logged when it starts failing, not at every interval of a collector that stays down.
        if not self._failing and self._log is not None:
            self._log.warning(
                "OTLP metric export to %s failed: %s (logged again once it works)",
                self.config.endpoint,
                why,
            )
        self._failing = True
        if len(self.errors) < 10:
            self.errors.append(why)
        self.failures += 1
        self.exports += 1

    def start(self) -> None:
        """Export now and every interval, from a thread (never the event loop)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="latbench-otlp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.export()
            if self._stop.wait(self.config.interval_s):
                return

    def stop(self) -> None:
        """Stop the periodic exports (one in flight finishes, within the timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.timeout_s + 1)

    def finish(self) -> None:
        """Stop the periodic exports and export the final values."""
        self.stop()
        self.export()

    @property
    def warnings(self) -> list[str]:
        """What failed, as one line (and partial successes as another); empty when all went."""
        out: list[str] = []
        if self.failures:
            out.append(
                f"{self.failures} of {self.exports} OTLP metric exports to {self.config.endpoint} "
                f"failed; the first error: {self.errors[0]} (the run's records and results are "
                "unaffected)"
            )
        if self.notes:
            out.append(f"OTLP metric export to {self.config.endpoint}: {self.notes[0]}")
        return out
