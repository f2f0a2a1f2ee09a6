"""Summaries of a run: every figure is a pure function of the records (METRICS.md).

`summarize(records)` reads only what the records hold, so the summary of a replayed records file
equals the live one. The measurement is the `measure` phase; latency distributions use the
requests in it that succeeded, while failed ones count in the errors and in the goodput
denominator. Rates are what the server delivered inside the measurement window, whatever the
phase of the request it went to (`samples.delivered`; why, with the numbers, in
docs/metrics.md "Rates"), over the window the runner's footer records or, in a file without one,
the same window derived from the records and the load. The samples themselves, and what each
metric is, come from `summary.samples`; this module turns them into statistics, rates, token
accounting and SLO verdicts.

Percentiles are `np.percentile` with its default linear method over the raw samples, the same
computation as vLLM's `vllm bench serve`, so figures compare one to one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.records.record import CONTENT, REASONING, TOOL_CALL, Record, RecordsFile
from latbench.shared.errors import ErrorKind
from latbench.spec.slo import (
    DEFAULT_LIMITS,
    DEFAULT_SLOS,
    METRICS,
    Slo,
    ValidityLimits,
)
from latbench.summary.bound import error_bounds
from latbench.summary.images import ImageCounts, image_counts
from latbench.summary.samples import (
    NS_PER_S,
    Delivered,
    Samples,
    delivered,
    delivered_by,
    derived_window,
    event_kinds,
)
from latbench.summary.saturation import Oversaturation
from latbench.summary.stairs import Stair, stair_stats
from latbench.summary.turns import SessionStats, session_stats
from latbench.summary.validity import (
    ClientStats,
    Failures,
    Validity,
    judge_agents,
    judge_validity,
    rounded,
)

if TYPE_CHECKING:
    from latbench.spec import LoadSpec, RunSpec

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)


def pct_key(p: float) -> str:
    """`50.0` -> `p50`, `99.9` -> `p99.9`: the key of a percentile in dicts and tables."""
    return f"p{p:g}"


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
            "mean": rounded(self.mean, digits),
            "std": rounded(self.std, digits),
            "min": rounded(self.min, digits),
            "max": rounded(self.max, digits),
        }
        for p, v in self.percentiles.items():
            d[pct_key(p)] = rounded(v, digits)
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
    # The events' tokens by kind (reasoning, content, tool_call): their reported counts, else one
    # an event. Tool-call arguments are generated (in N_out) but are not the answer (METRICS.md).
    by_kind: Mapping[str, int]
    tool_call_requests: int  # requests with a tool-call event
    ttft_tool_call: Stats  # time to first tool-call token, seconds
    prompt: PromptTokens  # prompt tokens asked for against those the server reported

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
            "by_kind": dict(self.by_kind),
            "tool_calls": {
                "requests": self.tool_call_requests,
                "tokens": self.by_kind["tool_call"],
                "ttft": self.ttft_tool_call.to_dict(),
            },
            "prompt": self.prompt.to_dict(),
        }


# How far the mean of reported/asked prompt tokens may stray before a run is warned about: TTFT
# grows with the prompt (prefill is linear in its tokens once past the fixed costs), so a 5 %
# longer prompt answers a question up to 5 % away from the one asked, which is about the
# run-to-run spread of TTFT on a quiet server; a chat template that a local tokenizer cannot
# count (~5-10 tokens) crosses it at 128-token prompts, which is meant.
PROMPT_TOLERANCE = 0.05


@dataclass(frozen=True)
class PromptTokens:
    """Prompt tokens asked for (the workload's lengths, in the target's tokens) against those the
    server's usage reported, over the succeeded measure-phase requests; METRICS.md "Requested vs
    measured workload". A prompt file asks for none: `requested` is 0, "not requested"."""

    requested: int  # requests that asked for a prompt length
    reported: int  # of those, the ones whose usage gave prompt tokens: the rest are compared
    exact: int
    fewer: int
    more: int
    mean_ratio: float | None  # mean of reported / asked over the compared requests

    @property
    def warning(self) -> str | None:
        r = self.mean_ratio
        if r is None or abs(r - 1) <= PROMPT_TOLERANCE:
            return None
        return (
            f"prompts held {r:.2f}x the prompt tokens asked for (server usage, mean over "
            f"{self.reported} requests; {self.fewer} fewer, {self.more} more): the latencies "
            "answer for other prompt lengths than asked (docs/metrics.md)"
        )

    def describe(self) -> str:
        """One line for people (the terminal's table and the HTML report's)."""
        if not self.requested:
            return "not requested"
        if not self.reported or self.mean_ratio is None:
            return f"{self.requested:,} asked, none in the server's usage"
        return (
            f"{self.exact:,} exact, {self.fewer:,} fewer, {self.more:,} more; mean got/asked "
            f"{self.mean_ratio:.3f} over {self.reported:,}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "reported": self.reported,
            "exact": self.exact,
            "fewer": self.fewer,
            "more": self.more,
            "mean_ratio": rounded(self.mean_ratio, 6),
            "tolerance": PROMPT_TOLERANCE,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class Rates:
    """Throughput over the window: what the server delivered inside it to succeeded requests of
    any phase (`samples.delivered`, docs/metrics.md "Rates"); None when there is no window of
    positive length. `good` and `goodput_fraction` are of the measure-phase requests."""

    requests_per_s: float | None
    output_tokens_per_s: float | None
    goodput_per_s: float | None  # requests/s of those that met every SLO
    good: int  # measure-phase requests that met every SLO
    goodput_fraction: float | None  # good / measured (failed requests included)
    requests_in_window: float  # each counted for the share of its output inside the window
    output_tokens_in_window: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests_per_s": rounded(self.requests_per_s, 6),
            "output_tokens_per_s": rounded(self.output_tokens_per_s, 6),
            "goodput_per_s": rounded(self.goodput_per_s, 6),
            "good": self.good,
            "goodput_fraction": rounded(self.goodput_fraction, 6),
            "requests_in_window": rounded(self.requests_in_window, 6),
            "output_tokens_in_window": rounded(self.output_tokens_in_window, 6),
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
            "value_s": rounded(self.value_s, 9),
            "attainment": rounded(self.attainment, 6),
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
    stairs: tuple[Stair, ...] | None = None  # a `steps` or `ramp` run's stairs
    images: ImageCounts | None = None  # what the requests carried; None: no images
    # The verdict that stopped an over-saturated open-loop run, with its evidence (the footer's).
    oversaturation: Oversaturation | None = None
    sessions: SessionStats | None = None  # TTFT by turn index; None: no multi-turn sessions

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
            "images": None if self.images is None else self.images.to_dict(),
            "rates": self.rates.to_dict(),
            "slo": {"passed": self.slo_passed, "results": [r.to_dict() for r in self.slos]},
            "validity": self.validity.to_dict(),
            "client_bound": self.client_bound,
            "failures": self.failures.to_dict(),
            "stairs": None if self.stairs is None else [st.to_dict() for st in self.stairs],
            "oversaturation": self.oversaturation and self.oversaturation.to_dict(),
            "sessions": None if self.sessions is None else self.sessions.to_dict(),
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
    load: LoadSpec | None = None,
    oversaturation: Oversaturation | None = None,
    stopped_ns: int | None = None,
) -> Summary:
    """Summarize a run.

    `window` is [start, end) in monotonic ns, as the runner's footer gives it. When None it is
    derived from the records and the run's `load` as the runner derives it
    (`samples.derived_window`). Which requests are measured (the latency distributions, the
    counts) is decided by their `phase`; the rates are what the window held, whatever the phase.
    `stopped_ns` is the footer's: when a stop ended the sending (the stairs after it did not run).
    """
    pcts = _check_percentiles(percentiles)
    measured: list[Record] = []
    others: list[Record] = []
    outside: Counter[str] = Counter()
    for r in records:
        if r.phase == "measure":
            measured.append(r)
        else:
            others.append(r)
            outside[r.phase] += 1
    ok = [r for r in measured if r.error is None]
    win = _window([*measured, *others], window, load)
    duration = win.duration_s if win is not None and win.end_ns > win.start_ns else None

    s = Samples.build(ok)
    latency = {name: Stats.of(s.samples(name), pcts) for name in METRICS}
    tpot = s.samples("tpot")
    decode_rate = Stats.of(1.0 / tpot[tpot > 0], pcts)  # a zero TPOT has no finite rate

    slo_results = tuple(_slo_result(slo, s.samples(slo.metric)) for slo in slos)
    meets = s.meets_all(slos)
    good = int(meets.sum())

    def per_s(n: float) -> float | None:
        return None if duration is None else n / duration

    span = None if win is None or duration is None else (win.start_ns, win.end_ns)
    inside = (
        Delivered()
        if span is None
        else delivered(s, ok, span, meets) + delivered_by(others, span, slos)
    )
    rates = Rates(
        requests_per_s=per_s(inside.requests),
        output_tokens_per_s=per_s(inside.tokens),
        goodput_per_s=per_s(inside.good),
        good=good,
        goodput_fraction=good / len(measured) if measured else None,
        requests_in_window=inside.requests,
        output_tokens_in_window=inside.tokens,
    )
    return Summary(
        window=win,
        percentiles=pcts,
        requests=_request_counts(measured, len(ok), outside),
        latency=latency,
        decode_rate=decode_rate,
        tokens=_tokens(s, ok, pcts),
        images=image_counts(measured),
        rates=rates,
        slos=slo_results,
        validity=judge_agents(
            measured, client, limits, judge_validity(measured, client, limits, error_bounds(ok, s))
        ),
        stairs=stair_stats([*measured, *others], load, stopped_ns),
        oversaturation=oversaturation,
        sessions=session_stats(measured, ok, s),
    )


def summarize_file(f: RecordsFile, spec: RunSpec) -> Summary:
    """The summary of a records file, judged by `spec` (its SLOs, percentiles and validity
    limits): the window and the client's own measurements come from the footer. A file
    without one (a run that was killed) has its window derived from the records and its
    validity unknown. Every reader of a records file (`latbench summary`, reports, the service,
    the vLLM-format results) summarizes it here, so they all print the same figures."""
    footer = f.footer
    return summarize(
        f.records,
        window=None if footer is None else (footer.window_start, footer.window_end),
        slos=spec.slos,
        percentiles=spec.percentiles,
        client=ClientStats.from_dict(footer.validity) if footer and footer.validity else None,
        limits=spec.validity.limits(),
        load=spec.load,
        oversaturation=Oversaturation.from_dict(footer.oversaturation) if footer else None,
        stopped_ns=footer.stopped_ns if footer else None,
    )


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    out: list[float] = []
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p!r} is outside 0..100")
        if float(p) not in out:
            out.append(float(p))
    return tuple(out)


def _window(
    records: Sequence[Record], given: tuple[int, int] | None, load: LoadSpec | None
) -> Window | None:
    if given is not None:
        return Window(int(given[0]), int(given[1]), derived=False)
    derived = derived_window(records, load)
    return None if derived is None else Window(*derived, derived=True)


def _tokens(s: Samples, ok: Sequence[Record], pcts: Sequence[float]) -> Tokens:
    has_usage = s.usage >= 0
    known = s.ev_n_known
    max_tokens = np.fromiter(
        (-1 if r.max_tokens is None else r.max_tokens for r in ok),
        dtype=np.int64,
        count=len(ok),
    )
    asked = max_tokens >= 0
    prompts = [r.usage_prompt_tokens for r in ok if r.usage_prompt_tokens is not None]
    n_out = s.n_out
    kinds, ev_tokens = event_kinds(ok), s.event_tokens()
    by_kind = {
        name: int(ev_tokens[kinds == ord(letter)].sum())
        for name, letter in (
            ("reasoning", REASONING),
            ("content", CONTENT),
            ("tool_call", TOOL_CALL),
        )
    }
    ttft_tool_call = s.samples("ttft_tool_call")
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
            "usage_vs_ev_n": int((has_usage & known & (s.usage != s.ev_n_sum)).sum()),
            "usage_vs_events": int((has_usage & (s.usage != s.n_events)).sum()),
            "ev_n_vs_events": int((known & (s.ev_n_sum != s.n_events)).sum()),
        },
        by_kind=by_kind,
        tool_call_requests=int(ttft_tool_call.size),
        ttft_tool_call=Stats.of(ttft_tool_call, pcts),
        prompt=_prompt_tokens(ok),
    )


def _prompt_tokens(ok: Sequence[Record]) -> PromptTokens:
    pairs = [(r.prompt_tokens, r.usage_prompt_tokens) for r in ok if r.prompt_tokens is not None]
    both = np.array([p for p in pairs if p[1] is not None], dtype=np.int64).reshape(-1, 2)
    asked, got = both[:, 0], both[:, 1]
    return PromptTokens(
        requested=len(pairs),
        reported=len(both),
        exact=int((got == asked).sum()),
        fewer=int((got < asked).sum()),
        more=int((got > asked).sum()),
        # An asked length is at least 1 (workload.item.draw_count), so the ratio is defined.
        mean_ratio=float((got / np.maximum(asked, 1)).mean()) if len(both) else None,
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
