"""Other servers' Prometheus pages, as the simulator serves them with `metrics_dialect` set:
SGLang, TGI, TensorRT-LLM (trtllm-serve) and NVIDIA Dynamo's HTTP frontend, the same instants
that vllm_metrics.py renders as vLLM's, under each server's own names, labels and bucket
boundaries, so latbench's reconciliation can be tested against each without the server.

Where each name, bucket list and counting rule comes from (the reconciliation's side of the same
table is latbench/summary/server_metrics.py; docs/servers.md cites both):
- SGLang: python/sglang/srt/metrics/collector.py (sgl-project/sglang@00ae9c15): the tokenizer's
  TTFT, ITL (each interval split evenly over the tokens it brought, observed once per token) and
  E2E histograms, its token and request counters; the scheduler's queue time and gauges.
- TGI: router/src/server.rs (huggingface/text-generation-inference@db931fcf): durations in
  seconds, recorded for successful requests only, in 35 geometric buckets from 0.00015 s; token
  counts as per-request histograms; written by the Rust `metrics-exporter-prometheus`, whose
  counters carry no `_total` (so this page is written here, not by prometheus_client).
- TensorRT-LLM: tensorrt_llm/metrics/collector.py (`trtllm_` prefix, served at
  /prometheus/metrics): vLLM's v1 buckets, no ITL histogram.
- Dynamo: lib/llm/src/http/service/metrics.rs (ai-dynamo/dynamo@79a21ca4): log-spaced buckets
  rounded to 2 significant figures (`generate_log_buckets` with its defaults, values below),
  ITL per token as SGLang's. The requests counter's `endpoint` and `request_type` labels are
  left out: the simulator's metrics do not know the route a request took, and latbench reads
  only `status`. Dynamo's queued-requests gauge (waiting for a first token) is left out too.
  Dynamo lowercases the `model` label (`create_inflight_guard`, `create_response_collector`:
  `model.to_string().to_lowercase()`), and so does this page.

Unlike vLLM, which creates its labelled series when it starts, these servers create each series
at its first observation: SGLang's multiprocess prometheus_client and TensorRT-LLM's
`.labels()` calls, TGI's metrics-rs exporter (a metric registers on its first record) and
Dynamo's rust-prometheus vectors (no child until `with_label_values`; `gather` skips a family
without one). So this page shows a histogram once it has an observation, a counter once a
request has ended (a label's child once it has counted), and the gauges once the server has
held a request; TensorRT-LLM's page (one prometheus_client registry) still declares a family
without series by its `# HELP` and `# TYPE` lines, as prometheus_client writes it.

Imports only shared/ and what this package's vLLM page already uses (prometheus_client).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Hist:
    """One histogram of a dialect: the simulator's quantity `key`, the server's name, help and
    finite bucket bounds."""

    key: str
    name: str
    help: str
    bounds: tuple[float, ...]


SGLANG_TTFT_BUCKETS = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0,
)  # fmt: skip
SGLANG_E2E_BUCKETS = (*SGLANG_TTFT_BUCKETS, 600.0, 1200.0, 1800.0, 2400.0)
SGLANG_ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
    0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000,
)  # fmt: skip
SGLANG_QUEUE_BUCKETS = (
    0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0,
    80.0, 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0,
    1400.0, 1600.0, 1800.0, 2000.0, 2500.0, 3000.0,
)  # fmt: skip


def _tgi_duration_buckets() -> tuple[float, ...]:
    # TGI multiplies 0.0001 by 1.5 35 times, keeping each product (server.rs).
    out, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        out.append(value)
    return tuple(out)


TGI_DURATION_BUCKETS = _tgi_duration_buckets()
TRTLLM_PREFILL_BUCKETS = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
    640.0, 2560.0,
)  # fmt: skip
# generate_log_buckets(min, max, count) with Dynamo's defaults: 0, then count - 1 log-spaced
# values up to max, each rounded to 2 significant figures.
DYNAMO_TTFT_BUCKETS = (
    0.0, 0.0022, 0.0047, 0.01, 0.022, 0.047, 0.1, 0.22, 0.47, 1.0, 2.2, 4.7, 10.0, 22.0, 48.0,
    100.0, 220.0, 480.0,
)  # fmt: skip
DYNAMO_ITL_BUCKETS = (
    0.0, 0.0019, 0.0035, 0.0067, 0.013, 0.024, 0.045, 0.084, 0.16, 0.3, 0.56, 1.1, 2.0,
)  # fmt: skip
DYNAMO_DURATION_BUCKETS = (0.0, 1.9, 3.4, 6.3, 12.0, 22.0, 40.0, 75.0, 140.0, 260.0)
DYNAMO_ISL_BUCKETS = (
    0.0, 100.0, 210.0, 430.0, 870.0, 1800.0, 3600.0, 7400.0, 15000.0, 31000.0, 63000.0, 130000.0,
)  # fmt: skip
DYNAMO_OSL_BUCKETS = (
    0.0, 100.0, 210.0, 430.0, 880.0, 1800.0, 3700.0, 7600.0, 16000.0, 32000.0,
)  # fmt: skip

_REQ = VLLM_REQUEST_LATENCY_BUCKETS


def histograms(dialect: str, max_model_len: int) -> tuple[Hist, ...]:
    """The dialect's histograms (not vLLM's: vllm_metrics.py keeps those)."""
    if dialect == "sglang":
        return (
            Hist("ttft", "sglang:time_to_first_token_seconds",
                 "Histogram of time to first token in seconds.", SGLANG_TTFT_BUCKETS),
            Hist("itl_per_token", "sglang:inter_token_latency_seconds",
                 "Histogram of inter-token latency in seconds.", SGLANG_ITL_BUCKETS),
            Hist("e2e", "sglang:e2e_request_latency_seconds",
                 "Histogram of End-to-end request latency in seconds", SGLANG_E2E_BUCKETS),
            Hist("queue", "sglang:queue_time_seconds",
                 "Histogram of queueing time in seconds.", SGLANG_QUEUE_BUCKETS),
        )  # fmt: skip
    if dialect == "tgi":
        # TGI sizes its token buckets from its limits: max input and max total tokens / 100.
        tokens = tuple(max_model_len / 100 * (x + 1) for x in range(100))
        return (
            Hist("e2e", "tgi_request_duration",
                 "Total time spent processing the request", TGI_DURATION_BUCKETS),
            Hist("queue", "tgi_request_queue_duration",
                 "Time spent in the queue per request", TGI_DURATION_BUCKETS),
            Hist("inference", "tgi_request_inference_duration",
                 "Request inference duration", TGI_DURATION_BUCKETS),
            Hist("time_per_token", "tgi_request_mean_time_per_token_duration",
                 "Mean time per token per request", TGI_DURATION_BUCKETS),
            Hist("prompt_len", "tgi_request_input_length", "Input token length per request",
                 tokens),
            Hist("gen_len", "tgi_request_generated_tokens", "Generated tokens per request",
                 tokens),
        )  # fmt: skip
    if dialect == "trtllm":
        return (
            Hist("e2e", "trtllm_e2e_request_latency_seconds",
                 "Histogram of end to end request latency in seconds.", _REQ),
            Hist("ttft", "trtllm_time_to_first_token_seconds",
                 "Histogram of time to first token in seconds.", VLLM_TTFT_BUCKETS),
            Hist("tpot", "trtllm_time_per_output_token_seconds",
                 "Histogram of time per output token in seconds.", VLLM_ITL_BUCKETS),
            Hist("queue", "trtllm_request_queue_time_seconds",
                 "Histogram of time spent in WAITING phase for request.", _REQ),
            Hist("prefill", "trtllm_request_prefill_time_seconds",
                 "Histogram of prefill (context) phase duration in seconds "
                 "(first_token_time - first_scheduled_time).", TRTLLM_PREFILL_BUCKETS),
            Hist("decode", "trtllm_request_decode_time_seconds",
                 "Histogram of decode (generation) phase duration in seconds "
                 "(last_token_time - first_token_time).", _REQ),
            Hist("inference", "trtllm_request_inference_time_seconds",
                 "Histogram of total inference duration in seconds "
                 "(last_token_time - first_scheduled_time).", _REQ),
        )  # fmt: skip
    if dialect == "dynamo":
        return (
            Hist("e2e", "dynamo_frontend_request_duration_seconds", "Duration of LLM requests",
                 DYNAMO_DURATION_BUCKETS),
            Hist("prompt_len", "dynamo_frontend_input_sequence_tokens",
                 "Input sequence length in tokens", DYNAMO_ISL_BUCKETS),
            Hist("gen_len", "dynamo_frontend_output_sequence_tokens",
                 "Output sequence length in tokens", DYNAMO_OSL_BUCKETS),
            Hist("ttft", "dynamo_frontend_time_to_first_token_seconds",
                 "Time to first token in seconds", DYNAMO_TTFT_BUCKETS),
            Hist("itl_per_token", "dynamo_frontend_inter_token_latency_seconds",
                 "Inter-token latency in seconds", DYNAMO_ITL_BUCKETS),
        )  # fmt: skip
    raise ValueError(f"no such metrics dialect: {dialect!r}")


# TGI records its request metrics when a request ends well, and only then (server.rs), except
# the input length, recorded when it validates the request (validation.rs).
SUCCESS_ONLY = frozenset({"tgi"})


@dataclass
class Counts:
    """What every dialect's page is rendered from, kept by vllm_metrics.ServerMetrics."""

    model: str
    hist: dict[str, BucketCounts]
    prompt_tokens: int
    generation_tokens: int
    succeeded: dict[str, int]  # by finish reason
    failed: int
    cached_tokens: int
    running: int
    waiting: int
    seen: bool = True  # a request has reached the server: its gauges exist

    @property
    def ended(self) -> bool:
        """A request has ended (the counters are created, at 0 or more, when one does)."""
        return sum(self.succeeded.values()) + self.failed > 0


def collect(dialect: str, c: Counts, hists: tuple[Hist, ...]) -> Iterator[Metric]:
    """The page of a Python server (SGLang, TensorRT-LLM) or of Dynamo's (rust-prometheus, whose
    text prometheus_client writes alike): prometheus_client families, each series only once
    the server would have created it (the module's docstring)."""
    if dialect == "sglang":
        labels = {"model_name": c.model, "engine_type": "unified"}
        # The scheduler's series carry its ranks besides.
        sched = {**labels, "tp_rank": "0", "pp_rank": "0", "moe_ep_rank": "0"}
    elif dialect == "trtllm":
        labels = sched = {"model_name": c.model, "engine_type": "trtllm"}
    else:
        labels = sched = {"model": c.model.lower()}  # Dynamo lowercases it
    declared = dialect == "trtllm"  # one registry: a family without series keeps its TYPE line
    for h in hists:
        own = sched if h.key == "queue" and dialect == "sglang" else labels
        fam = _histogram(h, c.hist[h.key], own)
        if fam.samples or declared:
            yield fam
    total_success = sum(c.succeeded.values())
    ended = c.ended
    if dialect == "sglang":
        if ended:
            yield _counter(
                "sglang:prompt_tokens",
                "Number of prefill tokens processed.",
                labels,
                c.prompt_tokens,
            )
            yield _counter(
                "sglang:generation_tokens",
                "Number of generation tokens processed.",
                labels,
                c.generation_tokens,
            )
            yield _counter(
                "sglang:cached_tokens", "Number of cached prompt tokens.", labels, c.cached_tokens
            )
            yield _counter(
                "sglang:num_requests", "Number of requests processed.", labels, total_success
            )
        if c.seen:
            yield _gauge(
                "sglang:num_running_reqs", "The number of running requests.", sched, c.running
            )
            yield _gauge(
                "sglang:num_queue_reqs",
                "The number of requests in the waiting queue.",
                sched,
                c.waiting,
            )
    elif dialect == "trtllm":
        success = CounterMetricFamily(
            "trtllm_request_success", "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )  # fmt: skip
        for reason, n in c.succeeded.items():
            if n:
                success.add_metric([*labels.values(), reason], n)
        yield success
        yield _counter(
            "trtllm_prompt_tokens",
            "Cumulative number of prompt (input) tokens processed.",
            labels,
            c.prompt_tokens,
            ended,
        )
        yield _counter(
            "trtllm_generation_tokens",
            "Cumulative number of generation (output) tokens produced.",
            labels,
            c.generation_tokens,
            ended,
        )
        yield _gauge(
            "trtllm_num_requests_running", "Number of active requests", labels, c.running, c.seen
        )
        yield _gauge(
            "trtllm_num_requests_waiting", "Number of queued requests", labels, c.waiting, c.seen
        )
    else:  # dynamo
        requests = CounterMetricFamily(
            "dynamo_frontend_requests", "Total number of LLM requests processed",
            labels=["model", "status"],
        )  # fmt: skip
        for status, n in (("success", total_success), ("error", c.failed)):
            if n:
                requests.add_metric([labels["model"], status], n)
        if requests.samples:
            yield requests
        if ended:
            yield _counter(
                "dynamo_frontend_output_tokens",
                "Total number of output tokens generated (updates in real-time)",
                labels,
                c.generation_tokens,
            )
        if c.seen:
            # From arrival to the end of the response: everything the server holds.
            yield _gauge(
                "dynamo_frontend_inflight_requests",
                "Number of inflight requests",
                labels,
                c.running + c.waiting,
            )


def _histogram(h: Hist, counts: BucketCounts, labels: dict[str, str]) -> Metric:
    """The histogram's family; without a series until its first observation."""
    fam = HistogramMetricFamily(h.name, h.help, labels=list(labels))
    cumulative, total = counts.snapshot()
    if cumulative[-1] > 0:
        les = [*(floatToGoString(b) for b in h.bounds), "+Inf"]
        fam.add_metric(list(labels.values()), list(zip(les, cumulative, strict=True)), total)
    return fam


def _counter(
    name: str, help_text: str, labels: dict[str, str], value: float, created: bool = True
) -> Metric:
    fam = CounterMetricFamily(name, help_text, labels=list(labels))
    if created:
        fam.add_metric(list(labels.values()), value)
    return fam


def _gauge(
    name: str, help_text: str, labels: dict[str, str], value: float, created: bool = True
) -> Metric:
    fam = GaugeMetricFamily(name, help_text, labels=list(labels))
    if created:
        fam.add_metric(list(labels.values()), value)
    return fam


def tgi_text(c: Counts, hists: tuple[Hist, ...]) -> bytes:
    """TGI's page as `metrics-exporter-prometheus` writes it: counters without `_total`,
    histograms as buckets, `_sum` and `_count`, bounds in Rust's shortest float form (which is
    Python's repr), and no labels (TGI serves one model)."""
    lines: list[str] = []

    def scalar(kind: str, name: str, help_text: str, value: float) -> None:
        lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"))

    # Each metric appears with its first record (metrics-rs registers it then).
    success = sum(c.succeeded.values())
    if c.seen:
        scalar("counter", "tgi_request_count", "Total number of requests", success + c.failed)
        scalar("gauge", "tgi_queue_size", "Current queue size", c.waiting)
        scalar("gauge", "tgi_batch_current_size", "Current batch size", c.running)
    if success:
        scalar("counter", "tgi_request_success", "Number of successful requests", success)
    for h in hists:
        cumulative, total = c.hist[h.key].snapshot()
        if cumulative[-1] == 0:
            continue
        lines.extend((f"# HELP {h.name} {h.help}", f"# TYPE {h.name} histogram"))
        for bound, n in zip((*h.bounds, None), cumulative, strict=True):
            le = "+Inf" if bound is None else repr(bound)
            lines.append(f'{h.name}_bucket{{le="{le}"}} {n}')
        lines.extend((f"{h.name}_sum {total!r}", f"{h.name}_count {cumulative[-1]}"))
    return ("\n".join(lines) + "\n").encode() if lines else b""
