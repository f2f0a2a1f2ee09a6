"""The Prometheus sink: each finished record becomes observations on `LatbenchMetrics`.

What is observed, and why:
- Latency histograms get the succeeded requests of the `measure` phase only, the population
  `summary.summary` reports on. So `bucket{le="0.1"} / count` at the end of a run equals the summary's
  exact attainment, and a cold-start warm-up never burns SLO error budget. Warm-up and
  cool-down requests are counted in `latbench_excluded_requests_total{phase}` so a dashboard
  still shows that the run is alive during its warm-up. A `phase` label on the histograms was
  rejected: every panel and rule would have to filter it, and forgetting to would mix
  populations silently.
- Queue delay is observed for every measured request, failed ones included, as in the
  summary's validity verdict: a late send is the client's doing whatever the server answered.
- Event-loop lag is observed per sample, live, from the runner's own monitor.

A record is observed when it finishes (`add`), which happens continuously during a run: a
request's TTFT reaches Prometheus when that request ends, not at its first token.

Each metric is computed here from the record with the same arithmetic as `summary.summary` (integer
nanoseconds subtracted first, one division), so a sample that is exactly 100 ms in the summary
is exactly 0.1 here and lands in the `le="0.1"` bucket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from latbench.client.looplag import add_lag_listener
from latbench.exporter.metrics import LatbenchMetrics, RunLabels, target_label
from latbench.records.record import CONTENT, Record, RunFooter
from latbench.spec.slo import Slo
from latbench.summary.summary import GAP_METRICS

NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RecordSamples:
    """One record's metric samples, in seconds (METRICS.md); None where it has no sample."""

    per_request: Mapping[str, float | None]
    itl: np.ndarray
    itl_per_token: np.ndarray
    n_out: int


def record_samples(r: Record) -> RecordSamples:
    ev = r.ev_t
    n_ev = len(ev)
    ev_n_known = r.ev_n is not None and len(r.ev_n) == n_ev
    if r.usage_completion_tokens is not None:
        n_out = r.usage_completion_tokens
    elif ev_n_known:
        assert r.ev_n is not None
        n_out = sum(r.ev_n)
    else:
        n_out = n_ev
    per: dict[str, float | None] = dict.fromkeys(
        ("ttft", "ttfo", "tpot", "e2e", "ttft_from_schedule", "e2e_from_schedule"), None
    )
    per["queue_delay"] = (r.t_sent - r.t_intended) / NS_PER_S
    if n_ev:
        first, last = ev[0], ev[-1]
        per["ttft"] = (first - r.t_sent) / NS_PER_S
        per["e2e"] = (last - r.t_sent) / NS_PER_S
        per["ttft_from_schedule"] = (first - r.t_intended) / NS_PER_S
        per["e2e_from_schedule"] = (last - r.t_intended) / NS_PER_S
        fc = r.ev_kind.find(CONTENT)
        if 0 <= fc < n_ev:
            per["ttfo"] = (ev[fc] - r.t_sent) / NS_PER_S
        if n_out > 1:
            per["tpot"] = (last - first) / (float(n_out - 1) * NS_PER_S)
    if n_ev > 1:
        gap_ns = np.diff(np.asarray(ev, dtype=np.int64))
        itl = gap_ns / NS_PER_S
        if ev_n_known:
            assert r.ev_n is not None
            # An event reported with 0 tokens counts its gap once, as `summary.summary` does.
            later = np.maximum(np.asarray(r.ev_n[1:], dtype=np.int64), 1).astype(np.float64)
            itl_per_token = gap_ns / (later * NS_PER_S)
        else:
            itl_per_token = itl
    else:
        itl = itl_per_token = np.empty(0, dtype=np.float64)
    return RecordSamples(per, itl, itl_per_token, n_out)


def meets_all(s: RecordSamples, slos: Sequence[Slo]) -> bool:
    """At or under every SLO's threshold, judged on the request's own sample (its worst gap for
    ITL); a metric it has no sample of is not judged (as `summary.summary`'s goodput)."""
    for slo in slos:
        if slo.metric in GAP_METRICS:
            gaps = s.itl if slo.metric == "itl" else s.itl_per_token
            if gaps.size and float(gaps.max()) > slo.threshold_s:
                return False
        else:
            v = s.per_request.get(slo.metric)
            if v is not None and v > slo.threshold_s:
                return False
    return True


def run_labels(spec_base_url: str | None, model: str, api: str, scenario: str) -> RunLabels:
    """Labels of a run. `spec_base_url` is the spec's target (None: the builtin simulator)."""
    return RunLabels(target=target_label(spec_base_url), model=model, api=api, scenario=scenario)


class PrometheusSink:
    """Sink protocol (`add`, `close`) over `LatbenchMetrics`. Create it on the event loop that
    runs the benchmark: it listens to that loop's lag monitor."""

    def __init__(
        self,
        metrics: LatbenchMetrics,
        labels: RunLabels,
        slos: Sequence[Slo],
        inflight: Callable[[], int] | None = None,
    ) -> None:
        self.labels = labels
        self._slos = tuple(slos)
        self._s = metrics.series(labels)
        self._run = self._s.start_run(inflight)
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
        samples = record_samples(record)
        qd = samples.per_request["queue_delay"]
        assert qd is not None
        s.hist["queue_delay"].observe(qd)
        if record.error is not None:
            s.requests["error"] += 1
            kind = str(record.error)
            s.errors[kind] = s.errors.get(kind, 0) + 1
            return
        s.requests["ok"] += 1
        for key in ("ttft", "ttfo", "tpot", "e2e"):
            v = samples.per_request[key]
            if v is not None:
                s.hist[key].observe(v)
        s.hist["itl"].observe_many(samples.itl)
        s.hist["itl_per_token"].observe_many(samples.itl_per_token)
        s.output_tokens += samples.n_out
        if record.usage_prompt_tokens is not None:
            s.prompt_tokens += record.usage_prompt_tokens
        if meets_all(samples, self._slos):
            s.good += 1

    def close(self, footer: RunFooter | None) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
        self._s.end_run(self._run)
