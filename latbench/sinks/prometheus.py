"""The Prometheus sink: each finished record becomes observations on `LatbenchMetrics`.

What is observed, and why:
- Latency histograms get the succeeded requests of the `measure` phase only, the population
  the summary reports on. So `bucket{le="0.1"} / count` at the end of a run equals the summary's
  exact attainment, and a cold-start warm-up never burns SLO error budget. Warm-up and
  cool-down requests are counted in `latbench_excluded_requests_total{phase}` so a dashboard
  still shows that the run is alive during its warm-up. A `phase` label on the histograms was
  rejected: every panel and rule would have to filter it, and forgetting to would mix
  populations silently.
- Queue delay is a latency like the others (METRICS.md): succeeded measured requests only, as
  the summary's `latency.queue_delay` and a `queue_delay` SLO count it. (The validity
  diagnostic's queue delay, in `validity`, is a different figure: every measured request.)
- Event-loop lag is observed per sample, live, from the runner's own monitor.
- GPU samples (`add_gpu`, from `summary.gpu`'s sampler): each device's last utilisation, memory
  and power as gauges, and the energy since its previous sample added to the energy counter
  (`summary.energy.EnergyMeter`), so a dashboard's J per token is a ratio of two rates.

A record is observed when it finishes (`add`), which happens continuously during a run: a
request's TTFT reaches Prometheus when that request ends, not at its first token.

Each metric comes from `summary.samples.record_samples`, the arithmetic the summary uses (integer
nanoseconds subtracted first, one division), so a sample that is exactly 100 ms in the summary
is exactly 0.1 here and lands in the `le="0.1"` bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from latbench.client.looplag import add_lag_listener
from latbench.exporter import LatbenchMetrics, RunLabels, target_label
from latbench.records.record import TOOL_CALL, GpuSample, Record, RunFooter
from latbench.spec.slo import Slo
from latbench.summary.bound import record_bounds_s
from latbench.summary.energy import EnergyMeter
from latbench.summary.samples import NS_PER_S, kind_tokens, record_meets_all, record_samples


def run_labels(spec_base_url: str | None, model: str, api: str, scenario: str) -> RunLabels:
    """Labels of a run. `spec_base_url` is the spec's target (None: the builtin simulator)."""
    return RunLabels(target=target_label(spec_base_url), model=model, api=api, scenario=scenario)


class PrometheusSink:
    """Sink protocol (`add`, `close`) over `LatbenchMetrics`. Create it on the event loop that
    runs the benchmark: it listens to that loop's lag monitor. `inflight` and `offered` (the
    open-loop schedule's rate now, None when there is none) are read at each scrape."""

    def __init__(
        self,
        metrics: LatbenchMetrics,
        labels: RunLabels,
        slos: Sequence[Slo],
        inflight: Callable[[], int] | None = None,
        offered: Callable[[], float | None] | None = None,
    ) -> None:
        self.labels = labels
        self._slos = tuple(slos)
        self._s = metrics.series(labels)
        self._run = self._s.start_run(inflight, offered)
        self._meter = EnergyMeter()
        lag = self._s.hist["event_loop_lag"]
        self._detach: Callable[[], None] | None = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._detach = add_lag_listener(loop, lambda ns: lag.observe(ns / NS_PER_S))

    def add(self, record: Record) -> None:
        s = self._s
        if record.phase != "measure":
            s.excluded[record.phase] = s.excluded.get(record.phase, 0) + 1
            return
        if record.error is not None:
            s.requests["error"] += 1
            kind = str(record.error)
            s.errors[kind] = s.errors.get(kind, 0) + 1
            return
        s.requests["ok"] += 1
        samples = record_samples(record)
        for key in ("queue_delay", "ttft", "ttfo", "ttft_tool_call", "tpot", "e2e"):
            v = samples.per_request[key]
            if v is not None:
                s.hist[key].observe(v)
        s.hist["itl"].observe_many(samples.itl)
        s.hist["itl_per_token"].observe_many(samples.itl_per_token)
        ttft_bound, gap_bounds = record_bounds_s(record)
        if ttft_bound is not None:
            s.hist["ttft_error_bound"].observe(ttft_bound)
        if gap_bounds is not None:
            s.hist["itl_error_bound"].observe_many(gap_bounds)
        s.output_tokens += samples.n_out
        s.tool_call_tokens += kind_tokens(record, TOOL_CALL)
        if record.usage_prompt_tokens is not None:
            s.prompt_tokens += record.usage_prompt_tokens
        if record_meets_all(samples, self._slos):
            s.good += 1

    def add_gpu(self, sample: GpuSample) -> None:
        s, gpu = self._s, sample.gpu or "host"
        if sample.utilization is not None:
            s.gpu_utilization[gpu] = sample.utilization
        if sample.memory_used_bytes is not None:
            s.gpu_memory_used[gpu] = float(sample.memory_used_bytes)
        if sample.power_w is not None:
            s.gpu_power[gpu] = sample.power_w
        s.energy_j += self._meter.add(sample)

    def close(self, footer: RunFooter | None) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
        self._s.end_run(self._run)
