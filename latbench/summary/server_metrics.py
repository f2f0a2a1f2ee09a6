"""The server's own account of a run: its Prometheus metrics, scraped before, during and after
it, and reconciled with the client's records.

The servers name the same quantities differently (vLLM `vllm:`, SGLang `sglang:`, TGI `tgi_`,
TensorRT-LLM `trtllm_`, Dynamo's frontend `dynamo_frontend_`), and each lacks some: a `Dialect`
maps our names to one server's, only where it measures the same thing, and the page says which
server it is (docs/servers.md has the table and its sources). What follows is said of vLLM; the
other servers' stopwatches start and stop at their own points, which docs/servers.md names.

vLLM times each request from its arrival in the API server's engine client (after HTTP parsing
and tokenisation) to the engine's first and last outputs. latbench times it from just before the
request is handed to the HTTP client to the arrival of the events. The difference is everything
outside vLLM's stopwatch: the client, HTTP on both sides, the network, request parsing and
tokenisation, and detokenising and framing the events.

The server's histograms are counts per bucket plus an exact sum. So the reconciliation gives:
- means exactly (sum / count on each side), hence the mean overhead exactly;
- a server percentile only as the bucket that holds it, hence a percentile overhead as an
  interval whose width is that bucket's (the "uncertainty from the bucket resolution");
- an exact check that no request's client TTFT or E2E is below the server's: when both sides
  counted the same requests, at every bucket boundary the client can have no more requests at
  or under it than the server.

Everything here is a pure function of /metrics text, records and snapshots; reading the page
over HTTP during a run is `summary.scraper`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from time import monotonic_ns
from typing import Any

import numpy as np
import orjson
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from latbench.records.record import Record
from latbench.records.rundir import RunDir
from latbench.summary.samples import Samples


@dataclass(frozen=True)
class CounterSource:
    """Where a server keeps one of our counters: a counter family (its samples summed, `_total`
    or not, as Rust exporters leave it off), only the samples with `labels`; or, for a server
    that counts tokens per request in a histogram, that histogram's `_sum`."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    histogram_sum: bool = False


@dataclass(frozen=True)
class Dialect:
    """One server's metric names for what latbench reconciles (docs/servers.md cites each).

    `histograms` maps our name to the server's families, the first found winning (older vLLMs
    call ITL time_per_output_token); a name a dialect lacks is absent, never stood in for by a
    different quantity."""

    key: str
    server: str  # as the reconciliation names it
    marker: str  # what its families start with, for messages
    model_label: str | None  # the label naming the model, None for a one-model server
    histograms: dict[str, tuple[str, ...]]
    counters: dict[str, CounterSource]
    gauges: dict[str, str]
    # The server writes the model label lowercased (Dynamo's frontend), so `--model Qwen/X`
    # must match a series labelled qwen/x.
    model_lowercased: bool = False
    # The server observes ITL once per token, each gap between outputs split evenly over the
    # tokens it brought (SGLang, Dynamo); vLLM observes it once per engine step.
    itl_per_token: bool = False

    def families(self) -> set[str]:
        names = {n for names in self.histograms.values() for n in names}
        names |= {_base(c.name) for c in self.counters.values()}
        return names | set(self.gauges.values())


def _base(name: str) -> str:
    # prometheus_client's parser names a counter family without `_total`; its sample keeps it.
    return name.removesuffix("_total")


VLLM = Dialect(
    key="vllm",
    server="vLLM",
    marker="vllm:*",
    model_label="model_name",
    histograms={
        "ttft": ("vllm:time_to_first_token_seconds",),
        "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "tpot": ("vllm:request_time_per_output_token_seconds",),
        "e2e": ("vllm:e2e_request_latency_seconds",),
        "queue": ("vllm:request_queue_time_seconds",),
        "prefill": ("vllm:request_prefill_time_seconds",),
        "decode": ("vllm:request_decode_time_seconds",),
        "inference": ("vllm:request_inference_time_seconds",),
    },
    counters={
        "prompt_tokens": CounterSource("vllm:prompt_tokens_total"),
        "generation_tokens": CounterSource("vllm:generation_tokens_total"),
        "requests": CounterSource("vllm:request_success_total"),  # summed over finished_reason
        # Prompt tokens looked up in the prefix cache, and those found there (vLLM counts both
        # in tokens, over every request it scheduled, hits in whole blocks).
        "prefix_cache_queries": CounterSource("vllm:prefix_cache_queries_total"),
        "prefix_cache_hits": CounterSource("vllm:prefix_cache_hits_total"),
    },
    gauges={
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv_cache_usage": "vllm:kv_cache_usage_perc",
    },
)
# SGLang (python/sglang/srt/metrics/collector.py): the tokenizer manager's request histograms
# (ITL observed once per token, the interval split evenly), the scheduler's queue time and
# gauges. No TPOT, prefill, decode or inference histograms.
SGLANG = Dialect(
    key="sglang",
    server="SGLang",
    marker="sglang:*",
    model_label="model_name",
    histograms={
        "ttft": ("sglang:time_to_first_token_seconds",),
        "itl": ("sglang:inter_token_latency_seconds",),
        "e2e": ("sglang:e2e_request_latency_seconds",),
        "queue": ("sglang:queue_time_seconds",),
    },
    itl_per_token=True,
    counters={
        "prompt_tokens": CounterSource("sglang:prompt_tokens_total"),
        "generation_tokens": CounterSource("sglang:generation_tokens_total"),
        "requests": CounterSource("sglang:num_requests_total"),  # finished requests
        # SGLang's own hit rate is cached prompt tokens over prompt tokens.
        "prefix_cache_queries": CounterSource("sglang:prompt_tokens_total"),
        "prefix_cache_hits": CounterSource("sglang:cached_tokens_total"),
    },
    gauges={
        "running": "sglang:num_running_reqs",
        "waiting": "sglang:num_queue_reqs",
        "kv_cache_usage": "sglang:token_usage",
    },
)
# TGI (router/src/server.rs, docs/source/reference/metrics.md): durations in seconds, recorded
# for successful requests only; no TTFT or ITL histogram at all, and its "mean time per token"
# is inference time over generated tokens, prefill included, so it is no TPOT: it is shown as a
# server phase. Token counts are per-request histograms; counters carry no `_total`.
TGI = Dialect(
    key="tgi",
    server="TGI",
    marker="tgi_*",
    model_label=None,
    histograms={
        "e2e": ("tgi_request_duration",),
        "queue": ("tgi_request_queue_duration",),
        "inference": ("tgi_request_inference_duration",),
        "time_per_token": ("tgi_request_mean_time_per_token_duration",),
    },
    counters={
        "prompt_tokens": CounterSource("tgi_request_input_length", histogram_sum=True),
        "generation_tokens": CounterSource("tgi_request_generated_tokens", histogram_sum=True),
        "requests": CounterSource("tgi_request_success"),
    },
    gauges={"running": "tgi_batch_current_size", "waiting": "tgi_queue_size"},
)
# TensorRT-LLM's trtllm-serve (tensorrt_llm/metrics/collector.py, at /prometheus/metrics):
# vLLM's v1 histograms and buckets under a `trtllm_` prefix, no ITL histogram.
TRTLLM = Dialect(
    key="trtllm",
    server="TensorRT-LLM",
    marker="trtllm_*",
    model_label="model_name",
    histograms={
        "ttft": ("trtllm_time_to_first_token_seconds",),
        "tpot": ("trtllm_time_per_output_token_seconds",),
        "e2e": ("trtllm_e2e_request_latency_seconds",),
        "queue": ("trtllm_request_queue_time_seconds",),
        "prefill": ("trtllm_request_prefill_time_seconds",),
        "decode": ("trtllm_request_decode_time_seconds",),
        "inference": ("trtllm_request_inference_time_seconds",),
    },
    counters={
        "prompt_tokens": CounterSource("trtllm_prompt_tokens_total"),
        "generation_tokens": CounterSource("trtllm_generation_tokens_total"),
        "requests": CounterSource("trtllm_request_success_total"),  # summed over finished_reason
    },
    gauges={
        "running": "trtllm_num_requests_running",
        "waiting": "trtllm_num_requests_waiting",
        "kv_cache_usage": "trtllm_kv_cache_utilization",
    },
)
# NVIDIA Dynamo's HTTP frontend (lib/llm/src/http/service/metrics.rs): timed from the frontend's
# handler, so its "server" includes routing to a worker; no queue or engine phases, no TPOT. Its
# in-flight gauge counts requests from arrival to the end of their response.
DYNAMO = Dialect(
    key="dynamo",
    server="Dynamo",
    marker="dynamo_frontend_*",
    model_label="model",
    histograms={
        "ttft": ("dynamo_frontend_time_to_first_token_seconds",),
        "itl": ("dynamo_frontend_inter_token_latency_seconds",),
        "e2e": ("dynamo_frontend_request_duration_seconds",),
    },
    counters={
        "prompt_tokens": CounterSource("dynamo_frontend_input_sequence_tokens", histogram_sum=True),
        "generation_tokens": CounterSource("dynamo_frontend_output_tokens_total"),
        "requests": CounterSource("dynamo_frontend_requests_total", (("status", "success"),)),
    },
    gauges={"inflight": "dynamo_frontend_inflight_requests"},
    model_lowercased=True,
    itl_per_token=True,
)
# In detection order: on a tie, the first wins.
DIALECTS: dict[str, Dialect] = {d.key: d for d in (VLLM, SGLANG, TGI, TRTLLM, DYNAMO)}
DIALECT_KEYS: tuple[str, ...] = tuple(DIALECTS)

# Client metric -> server histogram compared with it.
PAIRS: tuple[str, ...] = ("ttft", "itl", "tpot", "e2e")
# Server-only phases, shown next to the pairs.
PHASES: tuple[str, ...] = ("queue", "prefill", "decode", "inference", "time_per_token")
QUANTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


class ServerMetricsError(Exception):
    """A /metrics page that cannot be read as a known server's."""


class NotRecognisedYet(ServerMetricsError):
    """A Prometheus page with none of a known server's series for the model (yet): a server
    that creates each series at its first observation shows none before its first request
    (SGLang, TGI, TensorRT-LLM, Dynamo), so a later page may still say whose it is."""


@dataclass(frozen=True)
class Histogram:
    bounds: tuple[float, ...]  # finite upper bounds (le), ascending
    cumulative: tuple[float, ...]  # count at or under each bound, then the +Inf count
    sum: float

    @property
    def count(self) -> float:
        return self.cumulative[-1]

    def minus(self, earlier: Histogram) -> Histogram:
        if earlier.bounds != self.bounds:
            raise ServerMetricsError("the server's bucket boundaries changed during the run")
        return Histogram(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)),
            self.sum - earlier.sum,
        )

    def quantile_bucket(self, q: float) -> tuple[float, float]:
        """The bucket (lower, upper] that holds the q-th percentile; upper may be +inf."""
        rank = q / 100 * self.count
        lower = 0.0
        for bound, cum in zip((*self.bounds, math.inf), self.cumulative, strict=True):
            if cum >= rank and cum > 0:
                return lower, bound
            lower = bound
        return lower, math.inf


@dataclass(frozen=True)
class Snapshot:
    t_ns: int
    histograms: dict[str, Histogram] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    dialect: str = "vllm"  # a key of DIALECTS: whose names the page was read by

    def to_dict(self) -> dict[str, Any]:
        return {
            "t_ns": self.t_ns,
            "dialect": self.dialect,
            "histograms": {k: asdict(h) for k, h in self.histograms.items()},
            "counters": self.counters,
            "gauges": self.gauges,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        hist = {
            k: Histogram(tuple(h["bounds"]), tuple(h["cumulative"]), h["sum"])
            for k, h in d["histograms"].items()
        }
        dialect = d.get("dialect", "vllm")  # files from before other servers were read
        if dialect not in DIALECTS:
            raise KeyError(f"unknown server dialect {dialect!r}")
        return cls(d["t_ns"], hist, dict(d["counters"]), dict(d["gauges"]), dialect)


def parse_metrics(
    text: str, model: str | None, t_ns: int | None = None, dialect: str | None = None
) -> Snapshot:
    """A server's families from a /metrics page, summed over engines and ranks; only `model`'s
    series when the server labels series by model (a server may serve several). `dialect`
    None: the server is recognised from the page (the dialect with the most of its families
    there with `model`'s series, then the most declared by a `# TYPE` line; vLLM first on a
    tie), NotRecognisedYet when none is; the scraper then reads every later page the same way.

    Servers other than vLLM create a series at its first observation, so a page may lack a
    family, or all of them, until the server has served a request: read with a `dialect`, such
    a page is a snapshot without those families (`reconcile` counts them from zero). Only a
    page with another known server's families and none of `dialect`'s is refused."""
    try:
        parsed = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise ServerMetricsError(f"not Prometheus text: {e}") from None
    if dialect is not None:
        d = DIALECTS[dialect]
        if not any(fam.name in d.families() for fam in parsed):
            other = next(
                (o for o in DIALECTS.values() if any(f.name in o.families() for f in parsed)),
                None,
            )
            if other is not None:
                raise ServerMetricsError(
                    f"no {d.server} metrics ({d.marker}) on the page, but {other.server}'s: "
                    "another server answered"
                )
    else:
        scores = [(_score(parsed, model, d), d) for d in DIALECTS.values()]
        best, d = max(scores, key=lambda sd: sd[0])  # max keeps the first of equals
        if best == (0, 0):
            raise NotRecognisedYet(_nothing_known())
        if best[0] == 0 and any(fam.samples for fam in parsed if fam.name in d.families()):
            # Its series are there for other models only: ours may come with its first request.
            raise NotRecognisedYet(
                f"the page has {d.server}'s metrics ({d.marker}) but none for model {model!r}"
            )
    return _read(parsed, model, d, monotonic_ns() if t_ns is None else t_ns)


def _ours(s: Sample, model: str | None, d: Dialect) -> bool:
    if model is None or d.model_label is None:
        return True
    label = s.labels.get(d.model_label)
    if label is None:
        return True
    return label == (model.lower() if d.model_lowercased else model)


def _score(parsed: list[Metric], model: str | None, d: Dialect) -> tuple[int, int]:
    """How many of the dialect's families the page has with samples of `model`, and how many it
    declares at all (a `# TYPE` line, with or without samples)."""
    names = d.families()
    mine = [fam for fam in parsed if fam.name in names]
    return sum(1 for fam in mine if any(_ours(s, model, d) for s in fam.samples)), len(mine)


def _nothing_known() -> str:
    servers = ", ".join(d.server for d in DIALECTS.values())
    return f"no metrics of a server latbench knows ({servers}) on the page"


def _read(parsed: list[Metric], model: str | None, d: Dialect, t_ns: int) -> Snapshot:
    families = {name for names in d.histograms.values() for name in names}
    buckets: dict[str, dict[float, float]] = {}  # by the server's family name
    sums: dict[str, float] = {}
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    for fam in parsed:
        for s in fam.samples:
            if not _ours(s, model, d):
                continue
            if fam.name in families and fam.type == "histogram":
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    b = buckets.setdefault(fam.name, {})
                    b[le] = b.get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    sums[fam.name] = sums.get(fam.name, 0.0) + s.value
            for ours, c in d.counters.items():
                if c.histogram_sum:
                    match = fam.type == "histogram" and s.name == c.name + "_sum"
                else:
                    match = _base(s.name) == _base(c.name) and fam.type != "histogram"
                if match and all(s.labels.get(k) == v for k, v in c.labels):
                    counters[ours] = counters.get(ours, 0.0) + s.value
            for ours, name in d.gauges.items():
                if s.name == name:
                    gauges[ours] = gauges.get(ours, 0.0) + s.value
    histograms = {}
    for ours, names in d.histograms.items():
        # A server that serves both a metric's new name and its deprecated one: the new one.
        name = next((n for n in names if n in buckets), None)
        if name is None:
            continue
        b = buckets[name]
        les = sorted(b)
        if les[-1] != math.inf:
            raise ServerMetricsError(f"{name}: no +Inf bucket")
        histograms[ours] = Histogram(
            tuple(les[:-1]), tuple(b[le] for le in les), sums.get(name, 0.0)
        )
    return Snapshot(t_ns, histograms, counters, gauges, d.key)


# --- what a run's scrapes hold ----------------------------------------------------------------


@dataclass
class ServerMetrics:
    """What the scraper collected: the snapshots the reconciliation needs, the gauges' course
    during the run, and what went wrong (a failed scrape never fails the run)."""

    url: str
    before: Snapshot | None = None
    after: Snapshot | None = None
    timeline: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def dialect(self) -> Dialect | None:
        """Whose metrics the scrapes read: the first scrape recognised the server."""
        return None if self.before is None else DIALECTS[self.before.dialect]

    def to_dict(self) -> dict[str, Any]:
        d = self.dialect
        return {
            "url": self.url,
            "server": None if d is None else d.server,
            "dialect": None if d is None else d.key,
            "before": None if self.before is None else self.before.to_dict(),
            "after": None if self.after is None else self.after.to_dict(),
            "timeline": self.timeline,
            "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServerMetrics:
        return cls(
            d["url"],
            None if d.get("before") is None else Snapshot.from_dict(d["before"]),
            None if d.get("after") is None else Snapshot.from_dict(d["after"]),
            list(d.get("timeline", [])),
            list(d.get("errors", [])),
        )


def read_server_metrics(run: RunDir) -> ServerMetrics | None:
    """The run's scrapes, if it has them."""
    try:
        data = run.read_server_metrics()
        return None if data is None else ServerMetrics.from_dict(data)
    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
        raise ServerMetricsError(f"{run.server_metrics}: not a server metrics file ({e})") from None


# --- reconciliation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    n: float
    mean_s: float | None
    quantiles_s: dict[str, float] = field(default_factory=dict)  # the client's, exact
    # The server's: the bucket (lower, upper] that holds each percentile.
    buckets_s: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    metric: str
    client: Side
    server: Side
    mean_overhead_s: float | None  # client mean - server mean (exact)
    overhead_s: dict[str, tuple[float, float]]  # percentile -> (low, high) bounds of the gap
    # Bucket boundaries where the client counts more requests at or under it than the server:
    # a request the client saw faster than the server did (only checked for TTFT and E2E).
    below_server_at: tuple[float, ...] = ()


@dataclass(frozen=True)
class Reconciliation:
    url: str
    same_requests: bool  # both sides counted the same number of finished requests
    client_requests: int
    server_requests: float
    tokens: dict[str, dict[str, float | None]]  # prompt/generation: client, server
    pairs: dict[str, Pair]
    phases: dict[str, Side]  # the server's queue, prefill, decode, inference
    peak: dict[str, float]  # the server's gauges at their highest during the run
    # Mean client TTFT split into the server's parts and what lies outside the server.
    ttft_split_s: dict[str, float | None] | None
    notes: tuple[str, ...]
    # The server's prefix cache over the run: tokens queried, tokens hit, hits / queries (None
    # with no query); None when the server has no such counters (not a cache that never hit).
    prefix_cache: dict[str, float | None] | None = None
    server: str = "vLLM"  # whose metrics: Dialect.server
    dialect: str = "vllm"
    # The client metrics of PAIRS the server exports no histogram for: the client's alone.
    missing: tuple[str, ...] = ()
    # The server observes ITL once per token (SGLang, Dynamo): the client's ITL side is then
    # its ITL per token, each gap counted once per token of its later event.
    itl_per_token: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and math.isinf(x):
        return None  # JSON has no infinity; an open bucket's upper bound
    return x


def client_samples(records: Sequence[Record], itl_per_token: bool = False) -> dict[str, np.ndarray]:
    """The client's samples over every finished request of the run, warm-up and cool-down
    included (the server's counters cannot tell the phases apart); the summary's own
    per-metric arrays, so both read METRICS.md the same way.

    `itl_per_token`: the server observes ITL once per token, each gap split evenly over the
    tokens its later output brought (SGLang, Dynamo); the client's ITL is then the summary's
    ITL per token, each gap counted once per token of its later event, so both sides hold the
    same observations (one token an event: the same as the plain ITL)."""
    s = Samples.build([r for r in records if r.ok])
    per_request = {k: v[~np.isnan(v)] for k, v in s.per_request.items()}
    itl = s.gaps["itl"]
    if itl_per_token and s.ev_tokens is not None:
        # The tokens of each gap's later event (a 0-token event counts its gap once, as the
        # summary's ITL per token does).
        weights = np.maximum(s.ev_tokens[1:][s.gap_keep], 1)
        itl = np.repeat(s.gaps["itl_per_token"], weights)
    return {"ttft": per_request["ttft"], "itl": itl, "tpot": per_request["tpot"],
            "e2e": per_request["e2e"]}  # fmt: skip


def _client_side(samples: np.ndarray) -> Side:
    if samples.size == 0:
        return Side(0, None)
    # The server's histogram places a percentile by rank (the bucket holding the ceil(q n)-th
    # smallest); the client's percentile here follows the same rule, so that a client no faster
    # than the server per request is never below the server's bucket. With few samples this can
    # differ a little from the summary's interpolated percentiles.
    values = np.percentile(samples, QUANTILES, method="inverted_cdf")
    return Side(
        int(samples.size),
        float(samples.mean()),
        {f"p{q:g}": float(v) for q, v in zip(QUANTILES, values, strict=True)},
    )


def _server_side(h: Histogram) -> Side:
    if h.count <= 0:
        return Side(0, None)
    buckets = {f"p{q:g}": h.quantile_bucket(q) for q in QUANTILES}
    return Side(h.count, h.sum / h.count, buckets_s=buckets)


def _below_server_at(samples: np.ndarray, h: Histogram) -> tuple[float, ...]:
    srt = np.sort(samples)
    at_or_under = np.searchsorted(srt, np.asarray(h.bounds), side="right")
    return tuple(b for b, c, s in zip(h.bounds, at_or_under, h.cumulative, strict=False) if c > s)


def _since(before: Snapshot, after: Snapshot, name: str) -> Histogram | None:
    """The histogram's growth over the run; a family the server created during it (absent
    before: it creates a series at its first observation) counts from zero."""
    h = after.histograms.get(name)
    if h is None:
        return None
    earlier = before.histograms.get(name)
    return h if earlier is None else h.minus(earlier)


def reconcile(records: Sequence[Record], server: ServerMetrics) -> Reconciliation | None:
    """The client's records set against the server's scrapes; None without scrapes, and
    ServerMetricsError (naming what went wrong) when they cannot be reconciled."""
    if server.before is None or server.after is None:
        if server.errors:  # the scraper ran but never had both ends of the run
            raise ServerMetricsError(server.errors[-1])
        return None
    before, after = server.before, server.after
    if before.dialect != after.dialect:
        raise ServerMetricsError(
            f"the server's metrics were {DIALECTS[before.dialect].server}'s before the run and "
            f"{DIALECTS[after.dialect].server}'s after it: another server answered"
        )
    dialect = DIALECTS[after.dialect]
    for name, value in before.counters.items():
        if name not in after.counters or after.counters[name] < value:
            source = dialect.counters[name]
            shown = source.name + ("_sum" if source.histogram_sum else "")
            went = "went down" if name in after.counters else "disappeared"
            raise ServerMetricsError(
                f"the server's {shown} {went} during the run: it restarted, so its "
                "figures cannot be set against the run's"
            )

    def grew(key: str) -> float | None:
        # A counter the server created during the run started from zero.
        return (
            after.counters[key] - before.counters.get(key, 0.0) if key in after.counters else None
        )

    completed = sum(1 for r in records if r.ok)
    server_requests = grew("requests") or 0.0
    same = completed == server_requests
    notes: list[str] = []
    if server_requests > completed:
        notes.append(
            f"the server finished {server_requests:g} requests while the client completed "
            f"{completed}: other traffic shared the server (or it counted requests the client "
            "gave up on), so the two sides describe different populations"
        )
    elif server_requests < completed:
        notes.append(
            f"the server counted {server_requests:g} finished requests, fewer than the client's "
            f"{completed}: its metrics were read before it recorded them all, or a proxy sits "
            "between"
        )
    samples = client_samples(records, dialect.itl_per_token)
    pairs: dict[str, Pair] = {}
    for metric in PAIRS:
        if metric not in dialect.histograms:
            continue
        h = _since(before, after, metric)
        if h is None:
            if samples[metric].size:
                notes.append(
                    f"{dialect.server}'s page had no {metric.upper()} series after the run: it "
                    "observed none, so that figure is the client's alone"
                )
            continue
        c, s = _client_side(samples[metric]), _server_side(h)
        mean = None if c.mean_s is None or s.mean_s is None else c.mean_s - s.mean_s
        overhead = {
            q: (v - s.buckets_s[q][1], v - s.buckets_s[q][0])
            for q, v in c.quantiles_s.items()
            if q in s.buckets_s
        }
        below = _below_server_at(samples[metric], h) if same and metric in ("ttft", "e2e") else ()
        pairs[metric] = Pair(metric, c, s, mean, overhead, below)
    phases = {p: _server_side(h) for p in PHASES if (h := _since(before, after, p)) is not None}
    tokens: dict[str, dict[str, float | None]] = {}
    for name, attr in (
        ("prompt", "usage_prompt_tokens"),
        ("generation", "usage_completion_tokens"),
    ):
        vals = [getattr(r, attr) for r in records if r.ok and getattr(r, attr) is not None]
        tokens[name] = {
            "client": float(sum(vals)) if vals else None,
            "server": grew(f"{name}_tokens"),
        }
    return Reconciliation(
        url=server.url,
        same_requests=same,
        client_requests=completed,
        server_requests=server_requests,
        tokens=tokens,
        pairs=pairs,
        phases=phases,
        peak=peak_gauges(server.timeline, dialect),
        ttft_split_s=_ttft_split(pairs, phases),
        notes=tuple(notes) + tuple(server.errors),
        prefix_cache=prefix_cache(before, after),
        server=dialect.server,
        dialect=dialect.key,
        missing=tuple(m for m in PAIRS if m not in dialect.histograms),
        itl_per_token=dialect.itl_per_token,
    )


def peak_gauges(timeline: Sequence[dict[str, float]], dialect: Dialect) -> dict[str, float]:
    """Each of the server's gauges at its highest over the scrapes: what the scrapes saw, so a
    moment between two scrapes is not in it (the gauges are instantaneous, as the servers keep
    them)."""
    peak: dict[str, float] = {}
    for row in timeline:
        for k in dialect.gauges:
            if k in row:
                peak[k] = max(peak.get(k, row[k]), row[k])
    return peak


def prefix_cache(before: Snapshot, after: Snapshot) -> dict[str, float | None] | None:
    """The prefix cache's hit rate over the run, in tokens: the hits counter's growth over the
    queries counter's, between the scrapes before and after it (vLLM's own dashboards divide the
    same two counters). Other traffic on the server in the meantime counts too, as it does in
    every server figure here."""
    names = ("prefix_cache_queries", "prefix_cache_hits")
    if not all(n in after.counters for n in names):
        return None
    # A counter the server created during the run (at its first query) started from zero.
    queries, hits = (after.counters[n] - before.counters.get(n, 0.0) for n in names)
    return {"queries": queries, "hits": hits, "hit_rate": hits / queries if queries > 0 else None}


def _ttft_split(pairs: dict[str, Pair], phases: dict[str, Side]) -> dict[str, float | None] | None:
    """Mean client TTFT = queue + prefill + the rest of the server's TTFT (its front end, IPC
    and output processing) + what lies outside the server. Means add up; percentiles do not."""
    ttft = pairs.get("ttft")
    if ttft is None or ttft.client.mean_s is None or ttft.server.mean_s is None:
        return None
    # A server without a queue or prefill histogram (SGLang has no prefill, Dynamo neither):
    # that part is None, and stays inside `server_other` rather than being called zero.
    queue, prefill = (phases.get(k) for k in ("queue", "prefill"))
    q = None if queue is None else queue.mean_s
    p = None if prefill is None else prefill.mean_s
    return {
        "client_ttft": ttft.client.mean_s,
        "server_ttft": ttft.server.mean_s,
        "queue": q,
        "prefill": p,
        "server_other": ttft.server.mean_s - (q or 0.0) - (p or 0.0),
        "outside_server": ttft.client.mean_s - ttft.server.mean_s,
    }
