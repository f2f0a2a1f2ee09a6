"""Whether a run measured the server or the client: the client-bound and failed-share verdicts.

A benchmark client that falls behind stamps its own delays into the server's figures. How much,
each record states (`sent_late`, `ev_late`), and `summary.bound` turns that into a rigorous
bound of the TTFT and ITL percentiles. The verdict is that bound against a tolerance (the spec's
`validity` section; 5 ms for TTFT p99, 1 ms for ITL p99): issue 15 showed the old proxy, event-loop
lag, both flag accurate runs (an idle worker that wakes late from sleep: lag p99 1.67 ms, TTFT
exact to 0.3 ms) and miss inaccurate ones (10 ms of send-side error with no lag). An open-loop run
that kept its schedule late or not at all is client-bound too: queue delay is measured, not a
proxy. Loop lag and client CPU (`ClientStats`, in the records file's footer) are diagnostics that
explain a bound; they judge only a run whose bound is unknown (no kernel stamps), and the verdict
then says it is a proxy.
`Failures` judges the failed share apart, as a run can be clean yet fail most of its requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latbench.records.record import Record
from latbench.shared.errors import RecordsError
from latbench.shared.units import ms
from latbench.spec.slo import DEFAULT_LIMITS, ValidityLimits
from latbench.summary.bound import ErrorBounds, MetricBound
from latbench.summary.samples import NS_PER_S, spans_ns


def rounded(x: float | None, digits: int) -> float | None:
    """`round`, passing None through: the figures of a distribution without samples."""
    return None if x is None else round(x, digits)


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


@dataclass(frozen=True)
class Validity:
    """How far the run can be trusted to measure the server rather than the client."""

    known: bool  # False when neither a bound nor ClientStats were measured: nothing is judged
    open_loop: bool | None
    # Send lag (queue delay): every measure-phase request, failed or not
    queue_delay_p50_s: float | None
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
    bounds: ErrorBounds | None = None  # None: not computed (no records given)
    # The verdict came from loop lag and CPU, because some record had no bound
    proxy: bool = False
    # The headline of a client-bound run, built from the checks that fired (`judge_validity`),
    # so a run flagged only for its open-loop schedule does not read as an error-bound verdict
    headline: str = ""

    @property
    def bound_known(self) -> bool:
        return self.bounds is not None and self.bounds.known

    def verdict_line(self) -> str:
        """The verdict in one sentence, for every report; the reasons follow it when bound."""
        if not self.known:
            return "validity: unknown (no error bound and no client statistics were recorded)"
        if self.client_bound:
            return self.headline
        if not self.proxy:
            assert self.bounds is not None
            return "measured within tolerance: " + ", ".join(
                f"{name} p99 off by at most {ms_bound(b)} (tolerance {ms(tol, unit=True)})"
                for b, name, tol in (
                    (self.bounds.ttft, "TTFT", self.limits.ttft_tolerance_s),
                    (self.bounds.itl, "ITL", self.limits.itl_tolerance_s),
                )
                if b.p99 is not None
            )
        return f"client kept up by proxies, loop lag and CPU ({unbounded(self.bounds)})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"known": self.known, "open_loop": self.open_loop}
        for name in ("queue_delay", "loop_lag"):
            for stat in ("p50", "p99", "max"):
                key = f"{name}_{stat}_s"
                d[key] = rounded(getattr(self, key), 9)
        d |= {
            "client_cpu": rounded(self.client_cpu, 4),
            "unsent": self.unsent,
            "client_bound": self.client_bound,
            "judged_by": None if not self.known else "proxy" if self.proxy else "error_bound",
            "reasons": list(self.reasons),
            "error_bound": None if self.bounds is None else self.bounds.to_dict(),
            "limits": asdict(self.limits),
        }
        return d


def ms_bound(b: MetricBound, p: str = "p99") -> str:
    """A metric's bound at `p` ("p50", "p99") in ms, the dash when there is none."""
    q = getattr(b, p)
    return ms(None if q is None else q.bound_ns / NS_PER_S, unit=True)


def unbounded(bounds: ErrorBounds | None) -> str:
    """Why a run has no error bound, in plain words: requests that carried none (no kernel
    stamps, a records file older than the bound), or no first token to bound at all."""
    if bounds is None:
        return "no error bound was computed"
    if bounds.missing:
        n = bounds.missing
        return f"{n:,} request{'' if n == 1 else 's'} carried no error bound"
    return "no request received a first token, so there is no error bound"


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
            "fraction": rounded(self.fraction, 6),
            "max_failed_fraction": self.limit,
            "passed": self.passed,
        }


def _p50_p99_max(samples_s: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if samples_s.size == 0:
        return None, None, None
    p50, p99 = np.percentile(samples_s, [50, 99])
    return float(p50), float(p99), float(samples_s.max())


def _bound_reason(b: MetricBound, name: str, tolerance_s: float) -> str | None:
    """The sentence for a p99 bound over its tolerance, None within it: it states the bound,
    since the run may still be right."""
    p99 = b.p99
    tolerance_ns = round(tolerance_s * NS_PER_S)
    if p99 is None or p99.bound_ns <= tolerance_ns:
        return None
    sides = [
        f"{word} by up to {ms(ns / NS_PER_S, unit=True)}"
        for word, ns in (("overstated", p99.over_ns), ("understated", p99.under_ns))
        if ns > tolerance_ns
    ]
    return f"{name} may be {' or '.join(sides)} at p99 (tolerance {ms(tolerance_s, unit=True)})"


def _diagnostics(lag_p99: float | None, qd_p99: float | None, cpu: float | None) -> str:
    """What explains a bound: the send side (send lag) and the read side (loop lag, CPU)."""
    parts = []
    if qd_p99 is not None:
        parts.append(f"send lag p99 {ms(qd_p99, unit=True)}")
    if lag_p99 is not None:
        parts.append(f"event-loop lag p99 {ms(lag_p99, unit=True)}")
    if cpu is not None:
        parts.append(f"busiest worker {cpu:.0%} of a core")
    return f" ({', '.join(parts)})" if parts else ""


def judge_validity(
    measured: Sequence[Record],
    client: ClientStats | None,
    limits: ValidityLimits,
    bounds: ErrorBounds | None = None,
) -> Validity:
    """The verdict: `bounds` (from `summary.bound`, over the summary's own samples) against the
    tolerances when every sample has one, else loop lag and CPU as proxies; plus, in open loop,
    the schedule kept. Without a bound and without `client`, nothing is judged."""
    # Sending late is the client's doing whatever the server answered, so failed requests count.
    qd = spans_ns(measured, "queue_delay") / NS_PER_S
    qd_p50, qd_p99, qd_max = _p50_p99_max(qd)
    by_bound = bounds is not None and bounds.known
    figures: dict[str, Any] = {
        "queue_delay_p50_s": qd_p50,
        "queue_delay_p99_s": qd_p99,
        "queue_delay_max_s": qd_max,
        "limits": limits,
        "bounds": bounds,
    }
    if client is None and not by_bound:
        return Validity(
            known=False,
            open_loop=None,
            loop_lag_p50_s=None,
            loop_lag_p99_s=None,
            loop_lag_max_s=None,
            client_cpu=None,
            unsent=None,
            client_bound=None,
            reasons=(),
            **figures,
        )
    lag_p50 = lag_p99 = lag_max = cpu = None
    if client is not None:
        lag = np.asarray(client.loop_lag_ns, dtype=np.int64) / NS_PER_S
        lag_p50, lag_p99, lag_max = _p50_p99_max(lag)
        cpu = client.cpu_s / client.wall_s if client.wall_s > 0 else None
    # (cause, reason): the cause is the headline's short clause, the reason its full sentence
    fired: list[tuple[str, str]] = []
    if by_bound:
        assert bounds is not None
        why = _diagnostics(lag_p99, qd_p99, cpu)
        for b, name, tol in (
            (bounds.ttft, "TTFT", limits.ttft_tolerance_s),
            (bounds.itl, "ITL", limits.itl_tolerance_s),
        ):
            reason = _bound_reason(b, name, tol)
            if reason is not None:
                cause = (
                    f"the {name} error bound, {ms_bound(b)} at p99, exceeds its "
                    f"{ms(tol, unit=True)} tolerance"
                )
                fired.append((cause, reason + why))
    else:
        assert client is not None
        proxy = f"a proxy for the error ({unbounded(bounds)})"
        if lag_p99 is not None and lag_p99 > limits.loop_lag_p99_s:
            fired.append(
                (
                    f"event-loop lag p99 {ms(lag_p99, unit=True)} exceeds its "
                    f"{ms(limits.loop_lag_p99_s, unit=True)} limit",
                    f"event-loop lag p99 is {ms(lag_p99, unit=True)}, "
                    f"above the {ms(limits.loop_lag_p99_s, unit=True)} limit, {proxy}: "
                    "the client woke up late, so its sends may trail the schedule and events "
                    "that queued while it was not reading may be stamped together",
                )
            )
        if cpu is not None and cpu > limits.client_cpu:
            fired.append(
                (
                    f"client CPU {cpu:.0%} of one core exceeds its {limits.client_cpu:.0%} limit",
                    f"client CPU use is {cpu:.0%} of one core, above the "
                    f"{limits.client_cpu:.0%} limit, {proxy}: the client had no time to spare",
                )
            )
    # A proxy judged only when one of the two checks above fired; the schedule's are measured.
    by_proxy = bool(fired) and not by_bound
    open_loop = client is not None and client.open_loop
    if open_loop and qd_p99 is not None and qd_p99 > limits.queue_delay_p99_s:
        fired.append(
            (
                f"open-loop send lag p99 {ms(qd_p99, unit=True)} exceeds its "
                f"{ms(limits.queue_delay_p99_s, unit=True)} limit",
                f"send lag: queue delay p99 is {ms(qd_p99, unit=True)}, "
                f"above the {ms(limits.queue_delay_p99_s, unit=True)} limit: "
                "requests left later than the schedule said",
            )
        )
    if open_loop and client is not None and client.unsent > 0:
        fired.append(
            (
                f"{client.unsent:,} scheduled requests were never sent",
                f"{client.unsent:,} scheduled requests were never sent (limit 0): "
                "the client fell behind the schedule",
            )
        )
    head = f"client-bound by proxies ({unbounded(bounds)})" if by_proxy else "client-bound"
    headline = f"{head}: {'; '.join(c for c, _ in fired)}" if fired else ""
    reasons = [r for _, r in fired]
    return Validity(
        known=True,
        open_loop=None if client is None else client.open_loop,
        loop_lag_p50_s=lag_p50,
        loop_lag_p99_s=lag_p99,
        loop_lag_max_s=lag_max,
        client_cpu=cpu,
        unsent=None if client is None else client.unsent,
        client_bound=bool(reasons),
        reasons=tuple(reasons),
        proxy=not by_bound,
        headline=headline,
        **figures,
    )
