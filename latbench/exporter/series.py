"""The series latbench exports and their state: what is counted, under which labels, and how.

The state half of the exporter, kept apart from the bytes as prometheus/client_python keeps its
metrics apart from `exposition`: `LatbenchMetrics` holds every series and is a `Collector`
registered on a `CollectorRegistry` the caller owns (never the process-global one); the
`PrometheusSink` (`latbench.sinks.prometheus`) turns records into observations on it; the text
writer (`exporter.exposition`), the server (`exporter.server`) and the pusher (`exporter.push`)
only read it. The names, buckets and help texts here are the METRICS.md contract, which is why
they sit next to the state that fills them.

Series are keyed by `RunLabels` (target, model, api, scenario, location) and nothing else: no
run id, no request id, no free-form text. A service that runs the same scenario for months keeps
one set of series for it; counters keep growing across runs, as Prometheus counters should.
`location` is where the load was sent from: `local` for this process's own workers, else the
location its agents registered with (docs/distributed.md), bounded here to MAX_LOCATIONS values
however many places agents come from.

Histograms are kept as bucket-count arrays rather than `prometheus_client.Histogram` objects so
that one record's hundreds of inter-token gaps are counted with one vectorised `searchsorted`
instead of hundreds of locked `observe` calls on the client's event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from latbench.shared.buckets import (
    VLLM_ITL_BUCKETS,
    VLLM_REQUEST_LATENCY_BUCKETS,
    VLLM_TTFT_BUCKETS,
    BucketCounts,
)
from latbench.shared.errors import ErrorKind

PREFIX = "latbench"
LABELS: tuple[str, ...] = ("target", "model", "api", "scenario", "location")
# The `location` label. Agents name their own location (`latbench agent --location`), so its
# values are bounded where series are made (`LatbenchMetrics.series`): at most MAX_LOCATIONS
# distinct ones, then OTHER_LOCATION. The fixed values below are not counted.
LOCAL = "local"  # the load came from this process's own workers
REMOTE = "remote"  # from agents that gave no location
MIXED = "mixed"  # from agents of several locations (each record still carries its own)
OTHER_LOCATION = "other"  # beyond MAX_LOCATIONS
FIXED_LOCATIONS = frozenset({LOCAL, REMOTE, MIXED, OTHER_LOCATION})
MAX_LOCATIONS = 32
# The `target` label of runs against the simulator latbench starts itself: its URL is a random
# loopback port, which would make a new series for every run.
BUILTIN_SIM_TARGET = "builtin-sim"

# ---------------------------------------------------------------------------------------------
# Buckets (seconds). Each contains every boundary of vLLM's server histogram of the same family
# (so client and server figures can be compared bucket for bucket), exactly 0.1 (the default
# SLO target: `bucket{le="0.1"} / count` is the exact attainment), and finer boundaries around
# 0.1 s so quantiles near the target are interpolated over 10-25 ms, not 150 ms.

_NEAR_TARGET = (0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.125, 0.15, 0.175, 0.2, 0.25)


def _merge(*groups: Iterable[float]) -> tuple[float, ...]:
    return tuple(sorted({float(b) for g in groups for b in g}))


TTFT_BUCKETS = _merge(VLLM_TTFT_BUCKETS, _NEAR_TARGET, (0.0025, 0.015, 0.03, 0.3, 0.4, 1.5, 2.0))
ITL_BUCKETS = _merge(
    VLLM_ITL_BUCKETS, _NEAR_TARGET, (0.001, 0.0025, 0.005, 0.0075, 0.015, 0.02, 0.03, 0.04)
)
E2E_BUCKETS = _merge(
    VLLM_REQUEST_LATENCY_BUCKETS, _NEAR_TARGET, (0.01, 0.025, 0.4, 0.65, 1.25, 3.0, 4.0, 7.5)
)
# Client-side send lateness: a healthy client is well under 1 ms; 10 ms is the open-loop limit.
QUEUE_DELAY_BUCKETS = _merge(
    VLLM_REQUEST_LATENCY_BUCKETS,
    _NEAR_TARGET,
    (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025),
)
# Event-loop lag: 1 ms is the proxy limit, used without an error bound (`spec.slo.ValidityLimits`).
LOOP_LAG_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
)  # fmt: skip

# Measured error bounds (`summary.bound`): fine from 0.1 to 10 ms, where the validity tolerances
# sit (1 ms for ITL, 5 ms for TTFT, both exact boundaries: `bucket{le="0.005"} / count` is the
# share of requests whose own TTFT bound is within the default tolerance).
ERROR_BOUND_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
    0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

# The part of a request's TTFT outside the server (client TTFT minus the server span's): on
# loopback a fraction of a millisecond, over a network a round trip, so fine from 0.1 ms up.
OUTSIDE_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
    0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramDef:
    key: str  # the METRICS.md metric, as `summary.summary.METRICS` spells it, or its bound
    help: str
    buckets: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"{PREFIX}_{self.key}_seconds"


HISTOGRAMS: tuple[HistogramDef, ...] = (
    HistogramDef("ttft", "Time to first token: first token event minus send.", TTFT_BUCKETS),
    HistogramDef("ttfo", "Time to first output: first content event minus send.", TTFT_BUCKETS),
    HistogramDef(
        "ttft_tool_call",
        "Time to first tool-call token: first tool-call event minus send (requests that called "
        "a tool).",
        TTFT_BUCKETS,
    ),
    HistogramDef("itl", "Inter-token latency: each gap between token events.", ITL_BUCKETS),
    HistogramDef(
        "itl_per_token", "Each gap between token events over the later event's tokens.", ITL_BUCKETS
    ),
    HistogramDef("tpot", "Time per output token after the first, per request.", ITL_BUCKETS),
    HistogramDef("e2e", "End to end: last token event minus send.", E2E_BUCKETS),
    HistogramDef(
        "queue_delay",
        "Client send lateness: actual send minus intended send (succeeded requests).",
        QUEUE_DELAY_BUCKETS,
    ),
    HistogramDef(
        "event_loop_lag",
        "Client event-loop lag: how late a 100 Hz ticker's callbacks ran.",
        LOOP_LAG_BUCKETS,
    ),
    HistogramDef(
        "ttft_error_bound",
        "Measured error bound of each succeeded request's TTFT: how far its stamps may be off "
        "(the larger of a late first-event stamp and a late send stamp).",
        ERROR_BOUND_BUCKETS,
    ),
    HistogramDef(
        "itl_error_bound",
        "Measured error bound of each gap between token events (the larger of its two events' "
        "late-stamp bounds).",
        ERROR_BOUND_BUCKETS,
    ),
    # The server's own span of each measured succeeded request joined with it by trace id
    # (`sinks.prometheus`, `summary.spans`): the same population as `ttft`, where spans came.
    HistogramDef(
        "server_ttft",
        "The server span's time to first token (vLLM's gen_ai.latency.time_to_first_token), "
        "per measured request joined with its span.",
        TTFT_BUCKETS,
    ),
    HistogramDef(
        "outside_ttft",
        "Client TTFT (from the attempt the span describes) minus the server span's TTFT, per "
        "joined request: the part outside the server (the network both ways, the server's HTTP "
        "parsing before its TTFT starts, its framing and write of the first chunk, and the "
        "client's own stamping error; tokenising is inside the server's TTFT). Each side is on "
        "its own clock; a negative value counts in the first bucket.",
        OUTSIDE_BUCKETS,
    ),
    HistogramDef(
        "server_queue",
        "The server span's time in queue (gen_ai.latency.time_in_queue), per joined request.",
        TTFT_BUCKETS,
    ),
    HistogramDef(
        "server_prefill",
        "The server span's time in model prefill (gen_ai.latency.time_in_model_prefill), per "
        "joined request.",
        TTFT_BUCKETS,
    ),
)
HISTOGRAM_KEYS: tuple[str, ...] = tuple(h.key for h in HISTOGRAMS)

OUTCOMES: tuple[str, ...] = ("ok", "error")
EXCLUDED_PHASES: tuple[str, ...] = ("warmup", "cooldown")
ERROR_KINDS: tuple[str, ...] = tuple(k.value for k in ErrorKind)
# How each measured request and each server span ended up in the join (`summary.spans`).
SPAN_MATCHES: tuple[str, ...] = (
    "matched", "request_without_span", "span_without_request", "duplicate",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Labels


@dataclass(frozen=True)
class RunLabels:
    """The only labels latbench's series carry. Every value comes from a bounded set."""

    target: str
    model: str
    api: str
    scenario: str
    location: str = LOCAL

    def values(self) -> list[str]:
        return [self.target, self.model, self.api, self.scenario, self.location]

    def as_dict(self) -> dict[str, str]:
        return dict(zip(LABELS, self.values(), strict=True))


def location_label(locations: Iterable[str | None] | None) -> str:
    """The `location` label of a run whose load came from agents of `locations` (None: a local
    run): their one location, REMOTE when they gave none, MIXED when they differ. Unbounded:
    `LatbenchMetrics.series` bounds it."""
    if locations is None:
        return LOCAL
    found = {REMOTE if loc is None else loc for loc in locations}
    if not found:
        return LOCAL
    return found.pop() if len(found) == 1 else MIXED


def _escape_label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def target_label(base_url: str | None) -> str:
    """The `target` label: the server root without credentials, query or fragment; the builtin
    simulator (no base URL in the spec) is one fixed value whatever port it got."""
    if base_url is None:
        return BUILTIN_SIM_TARGET
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


# ---------------------------------------------------------------------------------------------
# State


class RunSeries:
    """Everything exported for one label set, across all runs that share it."""

    def __init__(self, labels: RunLabels) -> None:
        self.labels = labels
        # The label set as the text format writes it, built once rather than at every scrape.
        self.label_text = ",".join(
            f'{k}="{_escape_label_value(v)}"' for k, v in zip(LABELS, labels.values(), strict=True)
        )
        self.hist: dict[str, BucketCounts] = {h.key: BucketCounts(h.buckets) for h in HISTOGRAMS}
        # Plain ints, written on the event loop only; a scrape reads each atomically.
        self.requests: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.excluded: dict[str, int] = dict.fromkeys(EXCLUDED_PHASES, 0)
        self.spans: dict[str, int] = dict.fromkeys(SPAN_MATCHES, 0)
        self.good = 0
        self.output_tokens = 0
        self.tool_call_tokens = 0
        self.prompt_tokens = 0
        # GPU samples (sinks/prometheus.add_gpu): each device's last reading, by its `gpu` name
        # alone (the sample's source is not in the key: one run samples one source), and the
        # energy all devices used over the measured requests' span of runs of this label set
        # (the warm-up and cool-down left out, as the output tokens counter leaves them out).
        self.gpu_utilization: dict[str, float] = {}
        self.gpu_memory_used: dict[str, float] = {}
        self.gpu_power: dict[str, float] = {}
        self.energy_j = 0.0
        self.start_time = 0.0
        self.ended_at = 0.0  # time.monotonic() when a run of this label set last ended
        self._cpu_done = 0.0
        self._active: dict[int, _ActiveRun] = {}
        self._next_id = 0
        self._lock = threading.Lock()

    def start_run(
        self,
        inflight: Callable[[], int] | None,
        offered: Callable[[], float | None] | None = None,
    ) -> int:
        with self._lock:
            run = self._next_id
            self._next_id += 1
            self._active[run] = _ActiveRun(inflight, time.process_time(), offered)
        self.start_time = time.time()
        return run

    def end_run(self, run: int) -> None:
        with self._lock:
            active = self._active.pop(run, None)
            if active is not None:
                self._cpu_done += time.process_time() - active.cpu0
            # From here on this run's values are final: a scrape that starts later reads them.
            self.ended_at = time.monotonic()

    @property
    def active(self) -> int:
        return len(self._active)

    def inflight(self) -> int:
        with self._lock:
            fns = [a.inflight for a in self._active.values() if a.inflight is not None]
        return sum(fn() for fn in fns)

    def offered_rate(self) -> float:
        """Requests per second the active runs' open-loop schedules intend now; 0 when none does
        (closed loop, or between runs)."""
        with self._lock:
            fns = [a.offered for a in self._active.values() if a.offered is not None]
        return sum(rate for fn in fns if (rate := fn()) is not None)

    def cpu_seconds(self) -> float:
        """Process CPU time spent while runs of this label set were active. The client is one
        process with one event loop, so this over that time is the share of a core it used."""
        now = time.process_time()
        with self._lock:
            return self._cpu_done + sum(now - a.cpu0 for a in self._active.values())


@dataclass(frozen=True)
class _ActiveRun:
    inflight: Callable[[], int] | None
    cpu0: float
    offered: Callable[[], float | None] | None = None


class LatbenchMetrics:
    """latbench's metrics as a `Collector`: register it on a `CollectorRegistry` you own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._series: dict[RunLabels, RunSeries] = {}
        self._locations: set[str] = set()  # the location values in use, beside the fixed ones
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def series(self, labels: RunLabels) -> RunSeries:
        """The series of a label set, created (at zero, so they appear at once) on first use.
        A location beyond the MAX_LOCATIONS already in use is exported as OTHER_LOCATION (the
        returned series' `labels` say which); the series of a location stay for the exporter's
        life, as every series does."""
        loc = self.location(labels.location)
        if loc != labels.location:
            labels = replace(labels, location=loc)
        with self._lock:
            s = self._series.get(labels)
            if s is None:
                s = self._series[labels] = RunSeries(labels)
            return s

    def location(self, value: str) -> str:
        """`value` as the `location` label exports it: itself while fewer than MAX_LOCATIONS
        values are in use (or it is one of them, or a fixed one), else OTHER_LOCATION."""
        if value in FIXED_LOCATIONS:
            return value
        with self._lock:
            if value in self._locations:
                return value
            if len(self._locations) < MAX_LOCATIONS:
                self._locations.add(value)
                return value
        return OTHER_LOCATION

    def peek_locations(self, values: Iterable[str]) -> dict[str, str]:
        """Each of `values` as the `location` label would export it now, taking no slot: one in
        use (or fixed) as itself; a new one as itself while the new ones fit in the slots left
        (in sorted order, so that a scrape is stable), else OTHER_LOCATION. For a gauge of
        what merely is connected: a slot is taken only by a run's series (`series`), so agents
        that connect and leave without running do not push later real ones to OTHER_LOCATION."""
        wanted = set(values)
        with self._lock:
            room = MAX_LOCATIONS - len(self._locations)
            new = sorted(wanted - FIXED_LOCATIONS - self._locations)
            shown = set(new[: max(room, 0)]) | FIXED_LOCATIONS | self._locations
        return {v: v if v in shown else OTHER_LOCATION for v in wanted}

    def all_series(self) -> list[RunSeries]:
        with self._lock:
            return list(self._series.values())

    def last_run_end(self) -> float:
        """`time.monotonic()` when the latest run ended (0 if none has)."""
        return max((s.ended_at for s in self.all_series()), default=0.0)

    def describe(self) -> Iterator[Metric]:
        # Names only, for the registry's duplicate check; no samples are computed.
        yield from self._families([])

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.all_series())

    def _families(self, all_series: Sequence[RunSeries]) -> Iterator[Metric]:
        for h in HISTOGRAMS:
            hist = HistogramMetricFamily(h.name, h.help, labels=list(LABELS))
            les = [floatToGoString(b) for b in h.buckets] + ["+Inf"]
            for s in all_series:
                cumulative, total = s.hist[h.key].snapshot()
                buckets = list(zip(les, cumulative, strict=True))
                hist.add_metric(s.labels.values(), buckets, total)
            yield hist
        for f in SCALARS:
            labels = [*LABELS, f.extra] if f.extra else list(LABELS)
            fam: CounterMetricFamily | GaugeMetricFamily
            if f.type == "counter":
                fam = CounterMetricFamily(f.family, f.help, labels=labels)
            else:
                fam = GaugeMetricFamily(f.family, f.help, labels=labels)
            for s in all_series:
                for extra, value in f.values(s):
                    fam.add_metric(s.labels.values() + ([extra] if f.extra else []), value)
            yield fam


@dataclass(frozen=True)
class ScalarDef:
    """A counter or gauge: one sample per label set, or one per value of an `extra` label."""

    name: str
    type: str  # "counter" | "gauge"
    help: str
    read: Callable[[RunSeries], float | Mapping[str, float]]
    extra: str | None = None

    @property
    def family(self) -> str:
        return f"{PREFIX}_{self.name}"

    @property
    def sample(self) -> str:
        return f"{self.family}_total" if self.type == "counter" else self.family

    def values(self, s: RunSeries) -> list[tuple[str, float]]:
        got = self.read(s)
        if isinstance(got, Mapping):
            return [(k, float(v)) for k, v in list(got.items())]
        return [("", float(got))]


SCALARS: tuple[ScalarDef, ...] = (
    ScalarDef(
        "requests",
        "counter",
        "Measured (measure-phase) requests finished, by outcome: ok or error.",
        lambda s: s.requests,
        "outcome",
    ),
    ScalarDef(
        "errors",
        "counter",
        "Measured requests that failed, by error kind (METRICS.md, Errors).",
        lambda s: s.errors,
        "kind",
    ),
    ScalarDef(
        "excluded_requests",
        "counter",
        "Requests finished outside the measurement (warm-up, cool-down); not in any histogram.",
        lambda s: s.excluded,
        "phase",
    ),
    ScalarDef(
        "spans",
        "counter",
        "The server's spans joined with the measured succeeded requests by trace id: matched, "
        "request_without_span, span_without_request, duplicate (a trace id's second span).",
        lambda s: s.spans,
        "match",
    ),
    ScalarDef(
        "good_requests",
        "counter",
        "Measured requests that met every SLO of their run (goodput numerator).",
        lambda s: s.good,
    ),
    ScalarDef(
        "output_tokens",
        "counter",
        "Output tokens (N_out) of succeeded measured requests.",
        lambda s: s.output_tokens,
    ),
    ScalarDef(
        "tool_call_tokens",
        "counter",
        "Tool-call tokens (a tool's name and arguments) of succeeded measured requests: in "
        "output_tokens, but not the answer.",
        lambda s: s.tool_call_tokens,
    ),
    ScalarDef(
        "prompt_tokens",
        "counter",
        "Prompt tokens of succeeded measured requests, as the server's usage reported them.",
        lambda s: s.prompt_tokens,
    ),
    ScalarDef(
        "client_cpu_seconds",
        "counter",
        "CPU seconds the latbench process used while a run of this label set was active.",
        lambda s: s.cpu_seconds(),
    ),
    ScalarDef(
        "inflight_requests", "gauge", "Requests sent and not yet finished.", lambda s: s.inflight()
    ),
    ScalarDef(
        "offered_rate",
        "gauge",
        "Requests per second the open-loop schedule intends now (a ramp's or a stair's rate at "
        "this instant; sessions per second when it paces sessions); 0 in closed loop and between "
        "runs.",
        lambda s: s.offered_rate(),
    ),
    ScalarDef("run_active", "gauge", "Runs of this label set in progress.", lambda s: s.active),
    ScalarDef(
        "run_start_time_seconds",
        "gauge",
        "Unix time the latest run of this label set started.",
        lambda s: s.start_time,
    ),
    # -- GPU and energy (summary/gpu.py samples them; docs/gpu.md) --------------------------
    ScalarDef(
        "gpu_utilization_ratio",
        "gauge",
        "Each GPU's utilisation (0..1) at its last sample during a run of this label set.",
        lambda s: s.gpu_utilization,
        "gpu",
    ),
    ScalarDef(
        "gpu_memory_used_bytes",
        "gauge",
        "Each GPU's memory used at its last sample during a run of this label set.",
        lambda s: s.gpu_memory_used,
        "gpu",
    ),
    ScalarDef(
        "gpu_power_watts",
        "gauge",
        "Each GPU's power draw at its last sample during a run of this label set.",
        lambda s: s.gpu_power,
        "gpu",
    ),
    ScalarDef(
        "energy_joules",
        "counter",
        "Energy all sampled GPUs (or the host's RAPL counters) used while the measured requests of "
        "runs of this label set ran (warm-up and cool-down left out, as from "
        "latbench_output_tokens_total); J per output token = rate(this) / "
        "rate(latbench_output_tokens_total).",
        lambda s: s.energy_j,
    ),
)
