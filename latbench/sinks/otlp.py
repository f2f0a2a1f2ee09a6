"""The OTLP sink: each finished record becomes measurements on `OtlpMetrics`'s instruments.

It observes what the Prometheus sink (`sinks/prometheus.py`) observes, by the same rules, from
the same `summary.samples.record_samples` (the one place each metric's arithmetic lives), so the
two exports of a run hold the same figures: latency histograms get the succeeded requests of the
`measure` phase; warm-up and cool-down requests are only counted; event-loop lag is recorded per
sample from the runner's lag monitor. What differs is only the naming (docs/otel.md) and one
addition the GenAI conventions ask for: a failed request's duration, with `error.type`.

The OpenTelemetry SDK is the optional `otel` extra; this module imports it only through the
`OtlpMetrics` its caller made, so a run without OTLP never loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from latbench.client.looplag import add_lag_listener
from latbench.exporter import RunLabels
from latbench.records.record import TOOL_CALL, Record, RunFooter
from latbench.spec.slo import Slo
from latbench.summary.bound import record_bounds_s
from latbench.summary.samples import (
    NS_PER_S,
    kind_tokens,
    last_instant,
    record_meets_all,
    record_samples,
)

if TYPE_CHECKING:
    from latbench.otlp.metrics import OtlpMetrics

_PER_REQUEST = ("queue_delay", "ttft", "ttfo", "ttft_tool_call", "tpot", "e2e")


class OtlpSink:
    """Sink protocol (`add`, `close`) over `OtlpMetrics`. Create it on the event loop that runs
    the benchmark: it listens to that loop's lag monitor. `base_url` is the spec's target (None:
    the built-in simulator); `close` starts the run's final export without waiting for it."""

    def __init__(
        self, otlp: OtlpMetrics, labels: RunLabels, base_url: str | None, slos: Sequence[Slo]
    ) -> None:
        from latbench.otlp.metrics import (
            ERROR_TYPE,
            PHASE,
            PREFIX,
            TOKEN_TYPE,
            TOKEN_USAGE,
            otel_name,
            run_attributes,
        )

        self.labels = labels
        self._otlp = otlp
        self._slos = tuple(slos)
        attrs = run_attributes(labels, base_url)
        self._attrs = attrs
        self._error_type = ERROR_TYPE
        self._phase = PHASE
        self._input = {**attrs, TOKEN_TYPE: "input"}
        self._output = {**attrs, TOKEN_TYPE: "output"}
        h = otlp.histograms
        self._hist = {key: h[otel_name(key)] for key in (*_PER_REQUEST, "itl", "itl_per_token")}
        self._ttft_bound = h[otel_name("ttft_error_bound")]
        self._itl_bound = h[otel_name("itl_error_bound")]
        self._tokens = h[TOKEN_USAGE]
        c = otlp.counters
        self._requests = c[PREFIX + "requests"]
        self._good = c[PREFIX + "good_requests"]
        self._excluded = c[PREFIX + "excluded_requests"]
        self._tool_tokens = c[PREFIX + "tool_call_tokens"]
        lag = h[otel_name("event_loop_lag")]
        self._detach: Callable[[], None] | None = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._detach = add_lag_listener(loop, lambda ns: lag.record(ns / NS_PER_S, attrs))

    def add(self, record: Record) -> None:
        attrs = self._attrs
        if record.phase != "measure":
            self._excluded.add(1, {**attrs, self._phase: record.phase})
            return
        if record.error is not None:
            failed = {**attrs, self._error_type: str(record.error)}
            self._requests.add(1, failed)
            # The conventions' operation duration covers failed operations too, told apart by
            # error.type; send to the request's last instant is how long it ran.
            seconds = (last_instant(record) - record.t_sent) / NS_PER_S
            self._hist["e2e"].record(seconds, failed)
            return
        self._requests.add(1, attrs)
        samples = record_samples(record)
        for key in _PER_REQUEST:
            v = samples.per_request[key]
            if v is not None:
                self._hist[key].record(v, attrs)
        # One call per gap: the SDK has no bulk record (docs/otel.md measures the cost).
        for name, gaps in (("itl", samples.itl), ("itl_per_token", samples.itl_per_token)):
            hist = self._hist[name]
            for v in gaps.tolist():
                hist.record(v, attrs)
        ttft_bound, gap_bounds = record_bounds_s(record)
        if ttft_bound is not None:
            self._ttft_bound.record(ttft_bound, attrs)
        if gap_bounds is not None:
            for v in gap_bounds.tolist():
                self._itl_bound.record(v, attrs)
        self._tokens.record(samples.n_out, self._output)
        if record.usage_prompt_tokens is not None:
            self._tokens.record(record.usage_prompt_tokens, self._input)
        tool = kind_tokens(record, TOOL_CALL)
        if tool:
            self._tool_tokens.add(tool, attrs)
        if record_meets_all(samples, self._slos):
            self._good.add(1, attrs)

    def close(self, footer: RunFooter | None) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
        self._otlp.flush_in_background()
