"""vLLM's own Prometheus metrics, as the simulator serves them at `GET /metrics` (or, with
`SimConfig.metrics_dialect`, another server's page of the same counts: metrics_dialects.py).

`ServerMetrics` is what vLLM itself would export (vLLM v1's names, labels and bucket boundaries),
from the instants the engine and the truth record already keep: arrival, `t_admit`
(`Pacer.admit_ns`), and the first and last event write; and the prefix cache's and the
multi-modal cache's query and hit counters (prefix.py), counted at admission as vLLM counts them,
whether or not the request then succeeds. It keeps running totals since the
simulator started, observed once per request when it ends, so it survives `/sim/truth/reset` and
does not depend on `truth_capacity`. It is kept apart from engine.py because it is vLLM's
metrics page, not part of the latency model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
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
from latbench.sim import metrics_dialects as dialects
from latbench.sim.engine import FINISH_REASONS, Engine, FinishReason, TruthEntry

# vLLM v1's histograms: (name, help, buckets). The keys are ServerMetrics' own.
_VLLM_HISTOGRAMS: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "ttft": (
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        VLLM_TTFT_BUCKETS,
    ),
    "itl": (
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        VLLM_ITL_BUCKETS,
    ),
    "tpot": (
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        VLLM_ITL_BUCKETS,
    ),
    "e2e": (
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    "queue": (
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    "inference": (
        "vllm:request_inference_time_seconds",
        "Histogram of time spent in RUNNING phase for request.",
        VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    "prefill": (
        "vllm:request_prefill_time_seconds",
        "Histogram of time spent in PREFILL phase for request.",
        VLLM_REQUEST_LATENCY_BUCKETS,
    ),
    "decode": (
        "vllm:request_decode_time_seconds",
        "Histogram of time spent in DECODE phase for request.",
        VLLM_REQUEST_LATENCY_BUCKETS,
    ),
}
VLLM_LABELS: tuple[str, ...] = ("model_name", "engine")


class ServerMetrics:
    """The server-side metrics for `GET /metrics`: a prometheus_client collector, rendering
    vLLM's page, or with `SimConfig.metrics_dialect` another server's (metrics_dialects.py)
    from the same counts.

    Everything runs on the simulator's one event loop; a request is observed once, when it ends
    (`finished`), so the per-event path does no work for it.
    """

    def __init__(self, model: str, engine: Engine) -> None:
        self._model = model
        self._labels = [model, "0"]  # model_name, engine (vLLM's engine index)
        self._engine = engine
        self.dialect = engine.config.metrics_dialect
        if self.dialect == "vllm":
            bounds_of = {k: bounds for k, (_, _, bounds) in _VLLM_HISTOGRAMS.items()}
            self._dialect_hists: tuple[dialects.Hist, ...] = ()
        else:
            self._dialect_hists = dialects.histograms(self.dialect, engine.config.max_model_len)
            bounds_of = {h.key: h.bounds for h in self._dialect_hists}
        self._hist = {k: BucketCounts(bounds) for k, bounds in bounds_of.items()}
        self._les = {
            k: [*(floatToGoString(b) for b in bounds), "+Inf"] for k, bounds in bounds_of.items()
        }
        self._success_only = self.dialect in dialects.SUCCESS_ONLY
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.failed = 0
        self.success: dict[FinishReason, int] = dict.fromkeys(FINISH_REASONS, 0)
        self.replaying = 0  # transcripts being replayed: running, outside the load model
        # A request has reached the server: the other servers create their series lazily
        # (metrics_dialects.py), their gauges with the first request they hold.
        self.seen = False

    def finished(
        self, entry: TruthEntry, admit_ns: int, prompt_tokens: int, finish: FinishReason | None
    ) -> None:
        """Observe one generation request at its end. `finish` is None when a fault or the
        client cut it: its latencies are still observed (below; TGI's only when it succeeded),
        its tokens and success not."""
        self.seen = True
        if finish is None and self._success_only and "prompt_len" in self._hist:
            # TGI records the input length when it validates a request (validation.rs),
            # whatever becomes of it; the rest only for a request that succeeded.
            self._hist["prompt_len"].observe(float(prompt_tokens))
        events = entry.events_ns
        if not events:
            return
        if finish is None:
            self.failed += 1
        if finish is not None or not self._success_only:
            self._observe(entry, admit_ns, prompt_tokens)
        if finish is not None:
            self.success[finish] += 1
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += entry.tokens
            self.cached_tokens += entry.cached_tokens

    def _observe(self, entry: TruthEntry, admit_ns: int, prompt_tokens: int) -> None:
        events = entry.events_ns
        arrival, first, last = entry.arrival_ns, events[0], events[-1]
        values = {
            "ttft": (first - arrival) / 1e9,
            "e2e": (last - arrival) / 1e9,
            "queue": (admit_ns - arrival) / 1e9,
            "prefill": (first - admit_ns) / 1e9,
            "decode": (last - first) / 1e9,
            "inference": (last - admit_ns) / 1e9,
            # TGI's mean time per token: inference time over every generated token.
            "time_per_token": (last - admit_ns) / 1e9 / max(entry.tokens, 1),
            "prompt_len": float(prompt_tokens),
            "gen_len": float(entry.tokens),
        }
        if entry.tokens > 1:
            values["tpot"] = (last - first) / 1e9 / (entry.tokens - 1)
        h = self._hist
        for key, value in values.items():
            if key in h:
                h[key].observe(value)
        if len(events) > 1:
            gaps = np.diff(np.frombuffer(events, dtype=np.int64)) / 1e9
            if "itl" in h:  # vLLM: one observation per engine step
                h["itl"].observe_many(gaps)
            if "itl_per_token" in h:
                # SGLang and Dynamo split each interval evenly over the tokens it brought and
                # observe it once per token.
                k = self._engine.config.tokens_per_event
                h["itl_per_token"].observe_many(np.repeat(gaps / k, k))

    def text(self, registry: CollectorRegistry) -> bytes:
        """The page: prometheus_client's text of `registry` (which holds this collector), or
        TGI's, which a Rust exporter writes differently."""
        if self.dialect == "tgi":
            return dialects.tgi_text(self._counts(), self._dialect_hists)
        return generate_latest(registry)

    def _counts(self) -> dialects.Counts:
        running, waiting = self._engine.active + self.replaying, self._engine.queued
        self.seen = self.seen or running + waiting > 0
        return dialects.Counts(
            model=self._model,
            hist=self._hist,
            prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens,
            succeeded=dict(self.success),
            failed=self.failed,
            cached_tokens=self.cached_tokens,
            running=running,
            waiting=waiting,
            seen=self.seen,
        )

    def collect(self) -> Iterator[Metric]:
        if self.dialect != "vllm":
            yield from dialects.collect(self.dialect, self._counts(), self._dialect_hists)
            return
        labels = self._labels
        for key, (name, help_text, _) in _VLLM_HISTOGRAMS.items():
            fam = HistogramMetricFamily(name, help_text, labels=list(VLLM_LABELS))
            cumulative, total = self._hist[key].snapshot()
            fam.add_metric(labels, list(zip(self._les[key], cumulative, strict=True)), total)
            yield fam
        cache, images = self._engine.cache, self._engine.images
        for name, help_text, value in (
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                cache.queries if cache is not None else 0,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                cache.hits if cache is not None else 0,
            ),
            (
                "vllm:mm_cache_queries",
                "Multi-modal cache queries, in terms of number of queried items.",
                images.queries,
            ),
            (
                "vllm:mm_cache_hits",
                "Multi-modal cache hits, in terms of number of cached items.",
                images.hits,
            ),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens),
            (
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                self.generation_tokens,
            ),
        ):
            counter = CounterMetricFamily(name, help_text, labels=list(VLLM_LABELS))
            counter.add_metric(labels, value)
            yield counter
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*VLLM_LABELS, "finished_reason"],
        )
        for reason, n in self.success.items():
            success.add_metric([*labels, reason], n)
        yield success
        running = self._engine.active + self.replaying
        for name, help_text, value in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                running,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                self._engine.queued,
            ),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=list(VLLM_LABELS))
            gauge.add_metric(labels, value)
            yield gauge
