"""Summaries of a run: every figure is a pure function of the records (METRICS.md).

`summarize(records)` reads only what the records hold, so the summary of a replayed records file
equals the live one. The measurement is the `measure` phase; latency distributions use the
requests in it that succeeded, while failed ones count in the errors and in the goodput
denominator. Samples are turned into flat numpy arrays once (one entry per request, one per gap),
never into per-token Python objects: a run can hold 100k requests of 1k events each.

Percentiles are `np.percentile` with its default linear method over the raw samples, the same
computation as vLLM's `vllm bench serve`, so figures compare one to one.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latbench.records.record import CONTENT, Record
from latbench.shared.errors import ErrorKind, RecordsError
from latbench.spec.slo import (
    DEFAULT_LIMITS,
    DEFAULT_SLOS,
    METRICS,
    Slo,
    ValidityLimits,
)

NS_PER_S = 1_000_000_000

# Metrics with one sample per gap between events; every other metric has one per request.
GAP_METRICS = frozenset({"itl", "itl_per_token"})
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)


# --------------------------------------------------------------------------------------------
# Client-side validity inputs


@dataclass(frozen=True)
class ClientStats:
    """What the runner measured about itself; stored in the records file footer as JSON."""

    loop_lag_ns: Sequence[int]  # event-loop ticker: actual minus intended wake-up, per tick
    # CPU seconds of the busiest worker process over the run (each runs one event loop, on one
    # core at a time; the runner's own sinks do not delay any timestamp)
    cpu_s: float
    wall_s: float
    open_loop: bool
    unsent: int  # scheduled but never sent when the run stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "loop_lag_ns": [int(x) for x in self.loop_lag_ns],
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "open_loop": self.open_loop,
            "unsent": self.unsent,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClientStats:
        try:
            return cls(
                loop_lag_ns=tuple(int(x) for x in d["loop_lag_ns"]),
                cpu_s=float(d["cpu_s"]),
                wall_s=float(d["wall_s"]),
                open_loop=bool(d["open_loop"]),
                unsent=int(d["unsent"]),
            )
        except KeyError as e:
            raise RecordsError(f"client stats: missing field {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            raise RecordsError(f"client stats: {e}") from e


# --------------------------------------------------------------------------------------------
# Result types


def pct_key(p: float) -> str:
    """`50.0` -> `p50`, `99.9` -> `p99.9`: the key of a percentile in dicts and tables."""
    return f"p{p:g}"


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


@dataclass(frozen=True)
class Stats:
    """Exact statistics of raw samples. Every figure is None when there are no samples."""

    count: int
    mean: float | None
    std: float | None  # population std (ddof=0), as np.std and vLLM
    min: float | None
    max: float | None
    percentiles: Mapping[float, float | None]  # requested percentile -> value

    @classmethod
    def of(cls, samples: np.ndarray, percentiles: Sequence[float]) -> Stats:
        if samples.size == 0:
            return cls(0, None, None, None, None, {float(p): None for p in percentiles})
        values = np.percentile(samples, percentiles) if percentiles else []
        return cls(
            count=int(samples.size),
            mean=float(samples.mean()),
            std=float(samples.std()),
            min=float(samples.min()),
            max=float(samples.max()),
            percentiles={float(p): float(v) for p, v in zip(percentiles, values, strict=True)},
        )

    def p(self, percentile: float) -> float | None:
        return self.percentiles.get(float(percentile))

    def to_dict(self, digits: int = 9) -> dict[str, Any]:
        d: dict[str, Any] = {
            "count": self.count,
            "mean": _round(self.mean, digits),
            "std": _round(self.std, digits),
            "min": _round(self.min, digits),
            "max": _round(self.max, digits),
        }
        for p, v in self.percentiles.items():
            d[pct_key(p)] = _round(v, digits)
        return d


@dataclass(frozen=True)
class Window:
    """[start, end) of the measurement, monotonic ns."""

    start_ns: int
    end_ns: int
    derived: bool  # True when computed from the records rather than given by the runner

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / NS_PER_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_s": round(self.duration_s, 9),
            "derived": self.derived,
        }


@dataclass(frozen=True)
class RequestCounts:
    measured: int  # measure-phase requests, failed or not
    succeeded: int
    failed: int
    warmup: int  # outside the measurement, counted so the reader sees what was left out
    cooldown: int
    errors_by_kind: Mapping[str, int]  # ErrorKind value -> count, most frequent first
    errors_by_status: Mapping[int, int]  # HTTP status of http_status errors -> count

    def to_dict(self) -> dict[str, Any]:
        return {
            "measured": self.measured,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "warmup": self.warmup,
            "cooldown": self.cooldown,
        }

    def errors_dict(self) -> dict[str, Any]:
        return {
            "total": self.failed,
            "by_kind": dict(self.errors_by_kind),
            # JSON object keys are strings.
            "by_status": {str(k): v for k, v in self.errors_by_status.items()},
        }


@dataclass(frozen=True)
class Tokens:
    """Token accounting over the succeeded measure-phase requests."""

    output_total: int  # sum of N_out
    per_request: Stats  # N_out distribution
    sources: Mapping[str, int]  # which source gave N_out: usage, ev_n, events
    prompt_total: int | None  # from usage; None when no request reported it
    prompt_reported: int  # requests whose usage had prompt tokens
    requested: int  # requests that set max_tokens
    received_fewer: int  # N_out < max_tokens
    received_exact: int
    received_more: int
    # Requests where two sources are both present and differ: usage vs sum of ev_n (a real
    # disagreement), and each of those vs the event count (events carrying other than one token).
    disagreements: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_total": self.output_total,
            "per_request": self.per_request.to_dict(digits=3),
            "sources": dict(self.sources),
            "prompt_total": self.prompt_total,
            "prompt_reported": self.prompt_reported,
            "requested": self.requested,
            "received_fewer": self.received_fewer,
            "received_exact": self.received_exact,
            "received_more": self.received_more,
            "disagreements": dict(self.disagreements),
        }


@dataclass(frozen=True)
class Rates:
    """Rates over the window; None when there is no window of positive length."""

    requests_per_s: float | None  # succeeded measure-phase requests
    output_tokens_per_s: float | None
    goodput_per_s: float | None  # measure-phase requests that met every SLO
    good: int
    goodput_fraction: float | None  # good / measured (failed requests included)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests_per_s": _round(self.requests_per_s, 6),
            "output_tokens_per_s": _round(self.output_tokens_per_s, 6),
            "goodput_per_s": _round(self.goodput_per_s, 6),
            "good": self.good,
            "goodput_fraction": _round(self.goodput_fraction, 6),
        }


@dataclass(frozen=True)
class SloResult:
    slo: Slo
    count: int  # samples of the metric
    value_s: float | None  # the metric's percentile; None without samples
    attainment: float | None  # fraction of samples at or under the threshold

    @property
    def passed(self) -> bool | None:
        """None when there were no samples to judge."""
        return None if self.value_s is None else self.value_s <= self.slo.threshold_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "slo": str(self.slo),
            "metric": self.slo.metric,
            "percentile": self.slo.percentile,
            "threshold_s": self.slo.threshold_s,
            "count": self.count,
            "value_s": _round(self.value_s, 9),
            "attainment": _round(self.attainment, 6),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Validity:
    """How far the run can be trusted to measure the server rather than the client."""

    known: bool  # False when no ClientStats were given: nothing is judged
    open_loop: bool | None
    queue_delay_p50_s: float | None  # every measure-phase request, failed or not
    queue_delay_p99_s: float | None
    queue_delay_max_s: float | None
    loop_lag_p50_s: float | None
    loop_lag_p99_s: float | None
    loop_lag_max_s: float | None
    client_cpu: float | None  # fraction of one core
    unsent: int | None
    client_bound: bool | None  # None when unknown
    reasons: tuple[str, ...]
    limits: ValidityLimits = DEFAULT_LIMITS

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"known": self.known, "open_loop": self.open_loop}
        for name in ("queue_delay", "loop_lag"):
            for stat in ("p50", "p99", "max"):
                key = f"{name}_{stat}_s"
                d[key] = _round(getattr(self, key), 9)
        d |= {
            "client_cpu": _round(self.client_cpu, 4),
            "unsent": self.unsent,
            "client_bound": self.client_bound,
            "reasons": list(self.reasons),
            "limits": asdict(self.limits),
        }
        return d


def _pct(fraction: float) -> str:
    """15%, 1.25%, 33.3%: enough figures that a share just over its limit does not read equal."""
    return f"{fraction * 100:.3g}%"


@dataclass(frozen=True)
class Failures:
    """The failed-share verdict. Cancelled requests are left out of both sides of the share:
    latbench cut them (a stop or an abort asked for by whoever ran it), the server did not fail
    them. Requests cut because the run's overtime ran out (`overtime`) do count as failed: the
    server did not finish them in time, and leaving them out would pass a server whose streams
    never end. A run where no measured request succeeded fails whatever the limit says."""

    measured: int
    succeeded: int
    failed: int  # measured requests that failed, cancelled ones aside (overtime cuts included)
    cancelled: int
    limit: float
    overtime: int = 0  # of `failed`, those cut at the overtime

    @property
    def judged(self) -> int:
        return self.measured - self.cancelled

    @property
    def fraction(self) -> float | None:
        return self.failed / self.judged if self.judged else None

    @property
    def passed(self) -> bool:
        if self.measured and not self.succeeded:
            return False
        return self.fraction is None or self.fraction <= self.limit

    def describe(self) -> str:
        """One plain sentence, for the terminal and for reasons."""
        if self.measured and not self.succeeded:
            cut = f" ({self.cancelled:,} cancelled)" if self.cancelled else ""
            return f"none of the {self.measured:,} measured requests succeeded{cut}"
        share = self.fraction or 0.0
        where = "over" if share > self.limit else "within"
        cut = f", {self.overtime:,} of them cut at the overtime" if self.overtime else ""
        return (
            f"{self.failed:,} of {self.judged:,} measured requests failed ({_pct(share)}{cut}), "
            f"{where} the {_pct(self.limit)} limit"
            + (f"; {self.cancelled:,} cancelled, not counted" if self.cancelled else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "failed": self.failed,
            "cancelled": self.cancelled,
            "overtime": self.overtime,
            "judged": self.judged,
            "fraction": _round(self.fraction, 6),
            "max_failed_fraction": self.limit,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Summary:
    window: Window | None  # None when there are no measure-phase records and none was given
    percentiles: tuple[float, ...]
    requests: RequestCounts
    latency: Mapping[str, Stats]  # every name in METRICS, in that order, values in seconds
    decode_rate: Stats  # per-user decode rate, 1 / TPOT, tokens/s
    tokens: Tokens
    rates: Rates
    slos: tuple[SloResult, ...]
    validity: Validity

    @property
    def slo_passed(self) -> bool:
        """No SLO failed, and something succeeded: a run where every request failed never passes.

        An SLO without samples (no request had two tokens, say) is shown as such, not failed.
        """
        return self.requests.succeeded > 0 and all(r.passed is not False for r in self.slos)

    @property
    def client_bound(self) -> bool:
        return bool(self.validity.client_bound)

    @property
    def failures(self) -> Failures:
        req = self.requests
        cancelled = req.errors_by_kind.get(str(ErrorKind.CANCELLED), 0)
        return Failures(
            measured=req.measured,
            succeeded=req.succeeded,
            failed=req.failed - cancelled,
            cancelled=cancelled,
            limit=self.validity.limits.max_failed_fraction,
            overtime=req.errors_by_kind.get(str(ErrorKind.OVERTIME), 0),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: times in seconds, None where a distribution has no samples."""
        return {
            "window": None if self.window is None else self.window.to_dict(),
            "percentiles": list(self.percentiles),
            "requests": self.requests.to_dict(),
            "errors": self.requests.errors_dict(),
            "latency": {name: s.to_dict() for name, s in self.latency.items()},
            "decode_rate": self.decode_rate.to_dict(digits=6),
            "tokens": self.tokens.to_dict(),
            "rates": self.rates.to_dict(),
            "slo": {"passed": self.slo_passed, "results": [r.to_dict() for r in self.slos]},
            "validity": self.validity.to_dict(),
            "client_bound": self.client_bound,
            "failures": self.failures.to_dict(),
        }


# --------------------------------------------------------------------------------------------
# Computation


def summarize(
    records: Iterable[Record],
    *,
    window: tuple[int, int] | None = None,
    slos: Sequence[Slo] = DEFAULT_SLOS,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    client: ClientStats | None = None,
    limits: ValidityLimits = DEFAULT_LIMITS,
) -> Summary:
    """Summarize a run.

    `window` is [start, end) in monotonic ns, as the runner's footer gives it. When None it is
    derived from the measure-phase records, failed ones included: from the earliest `t_intended`
    to the latest instant any of them holds (`t_end`, last event or `t_sent`). Which requests
    are measured is decided by their `phase`, not by the window.
    """
    pcts = _check_percentiles(percentiles)
    measured: list[Record] = []
    outside: Counter[str] = Counter()
    for r in records:
        if r.phase == "measure":
            measured.append(r)
        else:
            outside[r.phase] += 1
    ok = [r for r in measured if r.error is None]
    win = _window(measured, window)
    duration = win.duration_s if win is not None and win.end_ns > win.start_ns else None

    s = _Samples.build(ok)
    latency = {name: Stats.of(s.samples(name), pcts) for name in METRICS}
    tpot = s.samples("tpot")
    decode_rate = Stats.of(1.0 / tpot[tpot > 0], pcts)  # a zero TPOT has no finite rate

    slo_results = tuple(_slo_result(slo, s.samples(slo.metric)) for slo in slos)
    good = int(s.meets_all(slos).sum())

    def per_s(n: float) -> float | None:
        return None if duration is None else n / duration

    rates = Rates(
        requests_per_s=per_s(len(ok)),
        output_tokens_per_s=per_s(int(s.n_out.sum())),
        goodput_per_s=per_s(good),
        good=good,
        goodput_fraction=good / len(measured) if measured else None,
    )
    return Summary(
        window=win,
        percentiles=pcts,
        requests=_request_counts(measured, len(ok), outside),
        latency=latency,
        decode_rate=decode_rate,
        tokens=s.tokens(ok, pcts),
        rates=rates,
        slos=slo_results,
        validity=_validity(measured, client, limits),
    )


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    out: list[float] = []
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p!r} is outside 0..100")
        if float(p) not in out:
            out.append(float(p))
    return tuple(out)


def _window(measured: Sequence[Record], given: tuple[int, int] | None) -> Window | None:
    if given is not None:
        return Window(int(given[0]), int(given[1]), derived=False)
    if not measured:
        return None
    start = min(r.t_intended for r in measured)
    end = max(_last_instant(r) for r in measured)
    return Window(start, end, derived=True)


def _last_instant(r: Record) -> int:
    # Normally t_end; a record cut short may lack it, and its events still happened.
    return max(r.t_sent, r.ev_t[-1] if r.ev_t else r.t_sent, r.t_end or r.t_sent)


def _ev_n_known(r: Record) -> bool:
    # A count list that does not match the events cannot be attributed to them.
    return r.ev_n is not None and len(r.ev_n) == len(r.ev_t)


@dataclass(frozen=True)
class _Samples:
    """Flat arrays over the succeeded requests, built once.

    Per-request arrays hold NaN where a request has no sample (no events, no content, N_out <= 1);
    gap arrays hold one value per gap, in request order.
    """

    per_request: dict[str, np.ndarray]  # seconds
    gaps: dict[str, np.ndarray]  # seconds
    worst_gap: dict[str, np.ndarray]  # per request, its largest gap; NaN without gaps
    n_out: np.ndarray
    usage: np.ndarray  # usage completion tokens, -1 when not reported
    ev_n_known: np.ndarray
    ev_n_sum: np.ndarray
    n_events: np.ndarray

    @classmethod
    def build(cls, ok: Sequence[Record]) -> _Samples:
        nreq = len(ok)
        n_ev = np.fromiter((len(r.ev_t) for r in ok), dtype=np.int64, count=nreq)
        total = int(n_ev.sum())
        t = np.fromiter(
            itertools.chain.from_iterable(r.ev_t for r in ok), dtype=np.int64, count=total
        )
        ends = np.cumsum(n_ev)
        starts = ends - n_ev
        has = n_ev > 0
        t_sent = np.fromiter((r.t_sent for r in ok), dtype=np.int64, count=nreq)
        t_int = np.fromiter((r.t_intended for r in ok), dtype=np.int64, count=nreq)
        first = np.zeros(nreq, dtype=np.int64)
        last = np.zeros(nreq, dtype=np.int64)
        first[has] = t[starts[has]]
        last[has] = t[ends[has] - 1]
        fc = np.fromiter((r.ev_kind.find(CONTENT) for r in ok), dtype=np.int64, count=nreq)
        has_c = (fc >= 0) & (fc < n_ev)
        first_c = np.zeros(nreq, dtype=np.int64)
        first_c[has_c] = t[starts[has_c] + fc[has_c]]

        # N_out: usage, else the sum of per-event counts, else one per event.
        usage = np.fromiter(
            (-1 if r.usage_completion_tokens is None else r.usage_completion_tokens for r in ok),
            dtype=np.int64,
            count=nreq,
        )
        known = np.fromiter((_ev_n_known(r) for r in ok), dtype=bool, count=nreq)
        ev_sum = n_ev.copy()
        n: np.ndarray | None = None  # tokens per event, only when some request reported them
        if known.any():
            # 1 per event where the server did not report counts (METRICS.md).
            n = np.fromiter(
                itertools.chain.from_iterable(
                    r.ev_n if _ev_n_known(r) else itertools.repeat(1, len(r.ev_t)) for r in ok
                ),
                dtype=np.int64,
                count=total,
            )
            ev_sum[has] = np.add.reduceat(n, starts[has])
        n_out = np.where(usage >= 0, usage, np.where(known, ev_sum, n_ev))

        def span(
            a: np.ndarray, b: np.ndarray, mask: np.ndarray, per: np.ndarray | None = None
        ) -> np.ndarray:
            # Subtract in integer ns, then divide once, so that an exact instant stays exact.
            out = np.full(nreq, np.nan)
            out[mask] = (a[mask] - b[mask]) / (NS_PER_S if per is None else per[mask] * NS_PER_S)
            return out

        tpot_ok = has & (n_out > 1)
        per_request = {
            "ttft": span(first, t_sent, has),
            "ttfo": span(first_c, t_sent, has_c),
            "tpot": span(last, first, tpot_ok, (n_out - 1).astype(np.float64)),
            "e2e": span(last, t_sent, has),
            "queue_delay": span(t_sent, t_int, np.ones(nreq, dtype=bool)),
            "ttft_from_schedule": span(first, t_int, has),
            "e2e_from_schedule": span(last, t_int, has),
        }

        # Gaps between consecutive events; the one into each request's first event is not a gap.
        keep = np.ones(max(total - 1, 0), dtype=bool)
        first_idx = starts[has]
        keep[first_idx[first_idx > 0] - 1] = False
        gap_ns = np.diff(t)[keep]
        itl = gap_ns / NS_PER_S
        if n is None:
            itl_per_token = itl
        else:
            # An event reported with 0 tokens still counts its gap once (GenAI-Perf does the
            # same) instead of dividing by zero.
            later_n = np.maximum(n[1:][keep], 1).astype(np.float64)
            itl_per_token = gap_ns / (later_n * NS_PER_S)
        gaps = {"itl": itl, "itl_per_token": itl_per_token}

        gcount = np.maximum(n_ev - 1, 0)
        gstart = np.cumsum(gcount) - gcount
        with_gaps = gcount > 0
        worst_gap = {}
        for name, values in gaps.items():
            worst = np.full(nreq, np.nan)
            if values.size:
                # Segments are contiguous and non-empty once requests without gaps are skipped.
                worst[with_gaps] = np.maximum.reduceat(values, gstart[with_gaps])
            worst_gap[name] = worst
        return cls(per_request, gaps, worst_gap, n_out, usage, known, ev_sum, n_ev)

    def samples(self, metric: str) -> np.ndarray:
        if metric in GAP_METRICS:
            return self.gaps[metric]
        values = self.per_request[metric]
        return values[~np.isnan(values)]

    def meets_all(self, slos: Sequence[Slo]) -> np.ndarray:
        """Per succeeded request: at or under every SLO's threshold.

        A request is judged on its own sample, and on every one of its gaps for ITL. One without
        a sample of a metric (no second token, no content) is not judged on that metric; vLLM's
        goodput does the same by counting a missing TPOT as 0.
        """
        good = np.ones(self.n_out.size, dtype=bool)
        for slo in slos:
            own = (self.worst_gap if slo.metric in GAP_METRICS else self.per_request)[slo.metric]
            good &= ~(own > slo.threshold_s)  # NaN compares False: not judged
        return good

    def tokens(self, ok: Sequence[Record], pcts: Sequence[float]) -> Tokens:
        has_usage = self.usage >= 0
        known = self.ev_n_known
        max_tokens = np.fromiter(
            (-1 if r.max_tokens is None else r.max_tokens for r in ok),
            dtype=np.int64,
            count=len(ok),
        )
        asked = max_tokens >= 0
        prompts = [r.usage_prompt_tokens for r in ok if r.usage_prompt_tokens is not None]
        n_out = self.n_out
        return Tokens(
            output_total=int(n_out.sum()),
            per_request=Stats.of(n_out.astype(np.float64), pcts),
            sources={
                "usage": int(has_usage.sum()),
                "ev_n": int((~has_usage & known).sum()),
                "events": int((~has_usage & ~known).sum()),
            },
            prompt_total=sum(prompts) if prompts else None,
            prompt_reported=len(prompts),
            requested=int(asked.sum()),
            received_fewer=int((asked & (n_out < max_tokens)).sum()),
            received_exact=int((asked & (n_out == max_tokens)).sum()),
            received_more=int((asked & (n_out > max_tokens)).sum()),
            disagreements={
                "usage_vs_ev_n": int((has_usage & known & (self.usage != self.ev_n_sum)).sum()),
                "usage_vs_events": int((has_usage & (self.usage != self.n_events)).sum()),
                "ev_n_vs_events": int((known & (self.ev_n_sum != self.n_events)).sum()),
            },
        )


def _slo_result(slo: Slo, samples: np.ndarray) -> SloResult:
    if samples.size == 0:
        return SloResult(slo, 0, None, None)
    return SloResult(
        slo,
        count=int(samples.size),
        value_s=float(np.percentile(samples, slo.percentile)),
        attainment=float(np.count_nonzero(samples <= slo.threshold_s) / samples.size),
    )


def _request_counts(
    measured: Sequence[Record], succeeded: int, outside: Counter[str]
) -> RequestCounts:
    kinds: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for r in measured:
        if r.error is None:
            continue
        kinds[str(r.error)] += 1
        if r.error == ErrorKind.HTTP_STATUS and r.status is not None:
            statuses[r.status] += 1
    return RequestCounts(
        measured=len(measured),
        succeeded=succeeded,
        failed=len(measured) - succeeded,
        warmup=outside["warmup"],
        cooldown=outside["cooldown"],
        errors_by_kind=dict(kinds.most_common()),
        errors_by_status=dict(sorted(statuses.items())),
    )


def _p50_p99_max(samples_s: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if samples_s.size == 0:
        return None, None, None
    p50, p99 = np.percentile(samples_s, [50, 99])
    return float(p50), float(p99), float(samples_s.max())


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _validity(
    measured: Sequence[Record], client: ClientStats | None, limits: ValidityLimits
) -> Validity:
    # Sending late is the client's doing whatever the server answered, so failed requests count.
    qd = np.fromiter((r.t_sent - r.t_intended for r in measured), dtype=np.int64) / NS_PER_S
    qd_p50, qd_p99, qd_max = _p50_p99_max(qd)
    if client is None:
        return Validity(
            known=False,
            open_loop=None,
            queue_delay_p50_s=qd_p50,
            queue_delay_p99_s=qd_p99,
            queue_delay_max_s=qd_max,
            loop_lag_p50_s=None,
            loop_lag_p99_s=None,
            loop_lag_max_s=None,
            client_cpu=None,
            unsent=None,
            client_bound=None,
            reasons=(),
            limits=limits,
        )
    lag = np.asarray(client.loop_lag_ns, dtype=np.int64) / NS_PER_S
    lag_p50, lag_p99, lag_max = _p50_p99_max(lag)
    cpu = client.cpu_s / client.wall_s if client.wall_s > 0 else None
    reasons: list[str] = []
    if lag_p99 is not None and lag_p99 > limits.loop_lag_p99_s:
        reasons.append(
            f"event-loop lag p99 is {_ms(lag_p99)}, above the {_ms(limits.loop_lag_p99_s)} limit: "
            "the client woke up late: its sends trail the server, and events that queued while "
            "it was not reading are stamped together"
        )
    if client.open_loop and qd_p99 is not None and qd_p99 > limits.queue_delay_p99_s:
        reasons.append(
            f"queue delay p99 is {_ms(qd_p99)}, above the {_ms(limits.queue_delay_p99_s)} limit: "
            "requests left later than the schedule said"
        )
    if client.open_loop and client.unsent > 0:
        reasons.append(
            f"{client.unsent} scheduled requests were never sent (limit 0): "
            "the client fell behind the schedule"
        )
    if cpu is not None and cpu > limits.client_cpu:
        reasons.append(
            f"client CPU use is {cpu:.0%} of one core, above the {limits.client_cpu:.0%} limit: "
            "the client had no time to spare"
        )
    return Validity(
        known=True,
        open_loop=client.open_loop,
        queue_delay_p50_s=qd_p50,
        queue_delay_p99_s=qd_p99,
        queue_delay_max_s=qd_max,
        loop_lag_p50_s=lag_p50,
        loop_lag_p99_s=lag_p99,
        loop_lag_max_s=lag_max,
        client_cpu=cpu,
        unsent=client.unsent,
        client_bound=bool(reasons),
        reasons=tuple(reasons),
        limits=limits,
    )
