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
  and power as gauges, and the energy since its previous sample (`summary.energy.EnergyMeter`)
  added to the energy counter, but only its part inside the measured requests' span, from the
  earliest intended send to the latest last instant of the `measure` phase's requests seen so
  far: the output tokens counter counts measured requests only, so a dashboard's J per token,
  a ratio of the two rates, must leave the warm-up's and cool-down's energy out as well. A
  step is held until a measured request's span reaches it (the sampler reads ahead of the
  records, which come when their requests end), and what never falls inside is never counted.

A record is observed when it finishes (`add`), which happens continuously during a run: a
request's TTFT reaches Prometheus when that request ends, not at its first token.

The server's spans (`add_span`, from the run's OTLP receiver) are joined with the records by
trace id as they come, whichever of the two arrives first: a span usually comes after its
request (the server exports in batches), but can come before it (the server ends its span at
its last token, the client its record at the stream's end). The join counts what
`summary.spans.join_spans` counts (`latbench_spans_total{match}`) and observes the server's
TTFT, queue and prefill and the client TTFT minus the server's. Either side waits at most
`JOIN_MAX_AGE_S` and `JOIN_MAX_WAITING` entries for the other, so a server that never traces,
or traces only some requests, cannot make the sink grow without bound; what gives up waiting,
or is still waiting when the run closes the sink, is counted as unmatched.

Each metric comes from `summary.samples.record_samples`, the arithmetic the summary uses (integer
nanoseconds subtracted first, one division), so a sample that is exactly 100 ms in the summary
is exactly 0.1 here and lands in the `le="0.1"` bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from latbench.client.looplag import add_lag_listener
from latbench.exporter import LatbenchMetrics, RunLabels, location_label, target_label
from latbench.records.record import TOOL_CALL, GpuSample, Record, RunFooter, ServerSpan
from latbench.spec.slo import Slo
from latbench.summary.bound import record_bounds_s
from latbench.summary.energy import EnergyMeter
from latbench.summary.samples import (
    NS_PER_S,
    kind_tokens,
    last_instant,
    record_meets_all,
    record_samples,
)

# How long, and how many, records and spans wait for each other: far over vLLM's 5 s batch
# delay and any run's in-flight requests.
JOIN_MAX_AGE_S = 300.0
JOIN_MAX_WAITING = 100_000
# Energy steps held outside the measured span (a long warm-up, 0.5 s a step a GPU): past
# this many, the oldest of those before it go uncounted.
ENERGY_MAX_HELD = 100_000

Step = tuple[int, int, float]  # (from, to) monotonic ns, J


def run_labels(
    spec_base_url: str | None,
    model: str,
    api: str,
    scenario: str,
    locations: Sequence[str | None] | None = None,
) -> RunLabels:
    """Labels of a run. `spec_base_url` is the spec's target (None: the builtin simulator);
    `locations`, those of the agents that send its load (None: this process's workers)."""
    return RunLabels(
        target=target_label(spec_base_url),
        model=model,
        api=api,
        scenario=scenario,
        location=location_label(locations),
    )


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
        *,
        spans: bool = False,
    ) -> None:
        # `spans`: the run receives the server's spans (`run.spans`), so its records wait for
        # them; without a receiver nothing would come, and every record would end up counted as
        # a request without a span.
        self._spans = spans
        self._slos = tuple(slos)
        self._s = metrics.series(labels)
        self.labels = self._s.labels  # as exported: a location past the bound is "other"
        self._run = self._s.start_run(inflight, offered)
        self._meter = EnergyMeter()
        # The measured requests' span so far, and the energy steps not yet counted: before it
        # (the warm-up, ordered by time) and after it or before any measured request.
        self._measured: tuple[int, int] | None = None
        self._early: list[Step] = []
        self._late: list[Step] = []
        lag = self._s.hist["event_loop_lag"]
        self._detach: Callable[[], None] | None = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._detach = add_lag_listener(loop, lambda ns: lag.observe(ns / NS_PER_S))
        # trace id -> (time.monotonic() it came, client TTFT s) of measured succeeded records,
        # and -> (time it came, span) of spans, each waiting for the other; `_joined`: trace
        # ids whose record came (True once a span was used for it), for duplicates. Insertion
        # order is arrival order, so the oldest is always first.
        self._records_waiting: OrderedDict[str, tuple[float, float | None]] = OrderedDict()
        self._spans_waiting: OrderedDict[str, tuple[float, ServerSpan]] = OrderedDict()
        self._joined: OrderedDict[str, bool] = OrderedDict()

    def add(self, record: Record) -> None:
        s = self._s
        tid = record.trace_id if self._spans else None  # None: this record joins nothing
        if tid is not None and (record.phase != "measure" or not record.ok):
            # Not in the join: its span, if any, is used up without a count, as the summary's.
            span = self._spans_waiting.pop(tid, None)
            self._remember(tid, used=span is not None)
        if record.phase != "measure":
            s.excluded[record.phase] = s.excluded.get(record.phase, 0) + 1
            return
        self._measured_until(record)
        if record.error is not None:
            s.requests["error"] += 1
            kind = str(record.error)
            s.errors[kind] = s.errors.get(kind, 0) + 1
            return
        s.requests["ok"] += 1
        samples = record_samples(record)
        if tid is not None:
            # The attempt the span describes: a retried request's last send, as the summary's
            # join takes it (summary/spans.py).
            self._record_for_join(tid, samples.per_request["attempt_ttft"])
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
        step = self._meter.add(sample)
        if step is not None:
            self._late.append(step)
            self._count_energy(late=True)

    def _measured_until(self, record: Record) -> None:
        """Widen the measured span to `record`'s lifetime, and count the energy it now holds."""
        lo, hi = record.t_intended, last_instant(record)
        span = self._measured
        if span is None:
            self._measured = (lo, hi)
            self._count_energy(late=True)
            return
        self._measured = (min(lo, span[0]), max(hi, span[1]))
        self._count_energy(early=lo < span[0], late=hi > span[1])

    def _count_energy(self, early: bool = False, late: bool = False) -> None:
        """Add to the energy counter the parts of the held steps (those before the measured
        span with `early`, after it with `late`) that lie inside it, each step's energy spread
        evenly over its interval; hold the parts outside, for a span that may yet widen."""
        span = self._measured
        if span is None:
            del self._late[:-ENERGY_MAX_HELD]
            return
        lo, hi = span
        pending: list[Step] = []
        if early:
            pending, self._early = self._early, []
        if late:
            pending, self._late = pending + self._late, []
        for a, b, joules in pending:
            if b <= lo:
                self._early.append((a, b, joules))
            elif a >= hi:
                self._late.append((a, b, joules))
            else:
                self._s.energy_j += joules * (min(b, hi) - max(a, lo)) / (b - a)
                if a < lo:
                    self._early.append((a, lo, joules * (lo - a) / (b - a)))
                if b > hi:
                    self._late.append((hi, b, joules * (b - hi) / (b - a)))
        del self._early[:-ENERGY_MAX_HELD]
        del self._late[:-ENERGY_MAX_HELD]

    def add_span(self, span: ServerSpan) -> None:
        """A server span from the run's receiver, joined with its record now or when it comes."""
        tid = span.trace_id
        counts = self._s.spans
        now = time.monotonic()
        self._expire(now)
        if tid in self._joined:
            if self._joined[tid]:
                counts["duplicate"] += 1
            else:
                self._joined[tid] = True  # its record is not measured or failed: no count
            return
        if tid in self._spans_waiting:
            counts["duplicate"] += 1
            return
        waiting = self._records_waiting.pop(tid, None)
        if waiting is None:
            self._spans_waiting[tid] = (now, span)
            if len(self._spans_waiting) > JOIN_MAX_WAITING:
                self._spans_waiting.popitem(last=False)
                counts["span_without_request"] += 1
            return
        self._observe_join(waiting[1], span)
        self._remember(tid, used=True)

    def _record_for_join(self, tid: str, client_ttft: float | None) -> None:
        now = time.monotonic()
        self._expire(now)
        waiting = self._spans_waiting.pop(tid, None)
        if waiting is not None:
            self._observe_join(client_ttft, waiting[1])
            self._remember(tid, used=True)
            return
        self._records_waiting[tid] = (now, client_ttft)
        if len(self._records_waiting) > JOIN_MAX_WAITING:
            self._records_waiting.popitem(last=False)
            self._s.spans["request_without_span"] += 1

    def _observe_join(self, client_ttft: float | None, span: ServerSpan) -> None:
        s = self._s
        s.spans["matched"] += 1
        for key, value in (
            ("server_ttft", span.ttft_s),
            ("server_queue", span.queue_s),
            ("server_prefill", span.prefill_s),
        ):
            if value is not None:
                s.hist[key].observe(value)
        if client_ttft is not None and span.ttft_s is not None:
            s.hist["outside_ttft"].observe(client_ttft - span.ttft_s)

    def _remember(self, tid: str, used: bool) -> None:
        self._joined[tid] = used
        if len(self._joined) > JOIN_MAX_WAITING:
            self._joined.popitem(last=False)

    def _expire(self, now: float) -> None:
        """Count and drop what has waited longer than JOIN_MAX_AGE_S (the oldest come first)."""
        counts = self._s.spans
        cutoff = now - JOIN_MAX_AGE_S
        for waiting, kind in (
            (self._records_waiting, "request_without_span"),
            (self._spans_waiting, "span_without_request"),
        ):
            while waiting and next(iter(waiting.values()))[0] < cutoff:
                waiting.popitem(last=False)
                counts[kind] += 1

    def close(self, footer: RunFooter | None) -> None:
        # The run has waited for its spans (`run.spans`): what still waits never matched.
        counts = self._s.spans
        counts["request_without_span"] += len(self._records_waiting)
        counts["span_without_request"] += len(self._spans_waiting)
        self._records_waiting.clear()
        self._spans_waiting.clear()
        if self._detach is not None:
            self._detach()
            self._detach = None
        self._s.end_run(self._run)
