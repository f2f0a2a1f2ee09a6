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

A run on agents (docs/distributed.md) is judged twice: once over the union of the records, as
any run, and once per agent, by the same `judge_validity` over that agent's records and its own
workers' loop lag, CPU and unsent count (`AgentStats`, in the footer). One agent whose client
fell behind misplaces its own requests whatever the others did, and in a union its error hides
under theirs, so the run is client-bound when any agent is. An agent whose clock offset is
uncertain (`flagged`) and the share of the planned load that lost workers never offered
(`Shortfall`) are caveats stated with the verdict: neither makes a latency wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from latbench.records.record import Record
from latbench.shared.errors import RecordsError
from latbench.shared.units import ms
from latbench.spec.slo import DEFAULT_LIMITS, ValidityLimits
from latbench.summary.bound import ErrorBounds, MetricBound, error_bounds
from latbench.summary.samples import NS_PER_S, Samples, spans_ns


def rounded(x: float | None, digits: int) -> float | None:
    """`round`, passing None through: the figures of a distribution without samples."""
    return None if x is None else round(x, digits)


def _int_or_none(x: Any) -> int | None:
    return None if x is None else int(x)


def _number(x: Any) -> float:
    """A count stays an int (as it was written), anything else a float; a string raises."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"{x!r:.40} is not a number")
    return x


@dataclass(frozen=True)
class AgentStats:
    """One agent's part of the run's `ClientStats`: what the runner measured of the agent's own
    workers (their loop lag inside the window, the busiest one's CPU, the requests they never
    sent), how it ended (`lost`: the reason it was lost mid-run, None when it finished), and
    what the coordinator knows of its clock (filled in by `run.benchmark` once the run is
    over: `drift_ns` and `flagged` are measured after it)."""

    index: int
    location: str | None = None
    host: str | None = None
    workers: int = 0  # its worker slots the run used
    loop_lag_ns: Sequence[int] = ()
    cpu_s: float = 0.0  # of its busiest worker; 0 when none of them reported (it was lost)
    wall_s: float = 0.0
    unsent: int = 0
    uncertainty_ns: int | None = None  # the clock offset's bound the run used
    drift_ns: int | None = None  # its offset measured after the run minus the one used
    flagged: bool = False  # uncertainty or drift over the run's --max-clock-uncertainty
    lost: str | None = None  # why it was lost mid-run (its connection closed, ...)
    lost_ns: int | None = None  # when, on the coordinator's clock

    def name(self) -> str:
        """How reports name it: "agent 2 (host h, location eu)"."""
        where = [f"host {self.host}"] if self.host is not None else []
        if self.location is not None:
            where.append(f"location {self.location}")
        return f"agent {self.index}" + (f" ({', '.join(where)})" if where else "")

    def client(self, open_loop: bool) -> ClientStats:
        """Its workers' figures as the `ClientStats` a single-host run of them would have."""
        return ClientStats(
            loop_lag_ns=self.loop_lag_ns,
            cpu_s=self.cpu_s,
            wall_s=self.wall_s,
            open_loop=open_loop,
            unsent=self.unsent,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "location": self.location,
            "host": self.host,
            "workers": self.workers,
            "loop_lag_ns": [int(x) for x in self.loop_lag_ns],
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "unsent": self.unsent,
            "uncertainty_ns": self.uncertainty_ns,
            "drift_ns": self.drift_ns,
            "flagged": self.flagged,
            "lost": self.lost,
            "lost_ns": self.lost_ns,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentStats:
        location, host, lost = d.get("location"), d.get("host"), d.get("lost")
        for name, value in (("location", location), ("host", host), ("lost", lost)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"agent {name} is {value!r:.40}, not a string")
        return cls(
            index=int(d["index"]),
            location=location,
            host=host,
            workers=int(d.get("workers", 0)),
            loop_lag_ns=tuple(int(x) for x in d.get("loop_lag_ns", ())),
            cpu_s=float(d.get("cpu_s", 0.0)),
            wall_s=float(d.get("wall_s", 0.0)),
            unsent=int(d.get("unsent", 0)),
            uncertainty_ns=_int_or_none(d.get("uncertainty_ns")),
            drift_ns=_int_or_none(d.get("drift_ns")),
            flagged=bool(d.get("flagged", False)),
            lost=lost,
            lost_ns=_int_or_none(d.get("lost_ns")),
        )


@dataclass(frozen=True)
class Shortfall:
    """The share of the run's planned load that was never offered because workers (an agent's,
    or a local process) were lost mid-run: what the lost shards' schedules still planned after
    their loss, and, when the loss stopped the run (`--on-agent-loss stop`), what every shard
    planned after the stop; over what the whole run planned. `load.shortfall` computes it once,
    from the schedule, when the run ends; every report reads it from here."""

    share: float  # not_offered / planned
    not_offered: float
    planned: float
    # What it is counted in: requests an open loop planned (or a closed loop's request budget);
    # with only a time to go by, users x seconds (closed loop) or shards x seconds (an open loop
    # of sessions, whose requests per session the replies decide)
    unit: str  # "requests", "user-seconds" or "shard-seconds"
    lost: tuple[str, ...]  # who was lost: "agent 2 (host h)" or "worker 1"
    stopped: bool = False  # the loss stopped the run, so the shards left did not go on

    def describe(self) -> str:
        """One sentence: "12.5% of the planned load was not offered (125 of 1,000 planned
        requests): agent 2 (host h) was lost"."""
        if self.unit == "requests":
            what = f"{self.not_offered:,.0f} of {self.planned:,.0f} planned requests"
        else:
            what = f"{self.not_offered:,.1f} of {self.planned:,.1f} planned {self.unit}"
        who = ", ".join(self.lost)
        verb = "was" if len(self.lost) == 1 else "were"
        then = "; the run then stopped (--on-agent-loss stop)" if self.stopped else ""
        return (
            f"{_pct(self.share)} of the planned load was not offered ({what}): "
            f"{who} {verb} lost{then}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": round(self.share, 6),
            "not_offered": self.not_offered,
            "planned": self.planned,
            "unit": self.unit,
            "lost": list(self.lost),
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Shortfall:
        return cls(
            share=float(d["share"]),
            not_offered=_number(d["not_offered"]),
            planned=_number(d["planned"]),
            unit=str(d["unit"]),
            lost=tuple(str(x) for x in d["lost"]),
            stopped=bool(d.get("stopped", False)),
        )


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
    # A run on agents: each one's own figures, to judge it by (empty for a local run)
    agents: tuple[AgentStats, ...] = ()
    # Workers lost mid-run: the planned load they never offered (None: none was lost)
    shortfall: Shortfall | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "loop_lag_ns": [int(x) for x in self.loop_lag_ns],
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "open_loop": self.open_loop,
            "unsent": self.unsent,
        }
        # Only when there is something to say: a local run's footer reads as it always did.
        if self.agents:
            d["agents"] = [a.to_dict() for a in self.agents]
        if self.shortfall is not None:
            d["shortfall"] = self.shortfall.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClientStats:
        try:
            shortfall = d.get("shortfall")
            return cls(
                loop_lag_ns=tuple(int(x) for x in d["loop_lag_ns"]),
                cpu_s=float(d["cpu_s"]),
                wall_s=float(d["wall_s"]),
                open_loop=bool(d["open_loop"]),
                unsent=int(d["unsent"]),
                agents=tuple(AgentStats.from_dict(a) for a in d.get("agents") or ()),
                shortfall=None if shortfall is None else Shortfall.from_dict(shortfall),
            )
        except KeyError as e:
            raise RecordsError(f"client stats: missing field {e.args[0]!r}") from e
        except (TypeError, ValueError, AttributeError) as e:
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
    # A run on agents: each one judged on its own records (`judge_agents`)
    agents: tuple[AgentValidity, ...] = ()
    # Workers lost mid-run: the planned load they never offered
    shortfall: Shortfall | None = None
    # Caveats said with the verdict that do not make the run client-bound: agents whose clock
    # is flagged, load not offered
    notes: tuple[str, ...] = ()

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
            "agents": [a.to_dict() for a in self.agents],
            "not_offered": None if self.shortfall is None else self.shortfall.to_dict(),
            "notes": list(self.notes),
        }
        return d


@dataclass(frozen=True)
class AgentValidity:
    """One agent judged alone: `judge_validity` over the measured requests it sent, with its own
    workers' figures (`AgentStats.client`) and the error bound of its own records."""

    agent: AgentStats
    measured: int  # its measure-phase requests, failed or not
    validity: Validity

    def to_dict(self) -> dict[str, Any]:
        a = self.agent
        return {
            "index": a.index,
            "location": a.location,
            "host": a.host,
            "workers": a.workers,
            "measured": self.measured,
            "lost": a.lost,
            "uncertainty_ns": a.uncertainty_ns,
            "drift_ns": a.drift_ns,
            "flagged": a.flagged,
            "client_bound": self.validity.client_bound,
            "validity": self.validity.to_dict(),
        }


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


def _cause(headline: str) -> str:
    """A client-bound headline without its "client-bound: " lead, to quote it inside another."""
    return headline.partition(": ")[2] or headline


def clock_note(a: AgentStats) -> str:
    """Why a flagged agent's clock is a caveat, in one sentence."""
    how = []
    if a.uncertainty_ns is not None:
        how.append(f"its clock offset was uncertain by {ms(a.uncertainty_ns / NS_PER_S)} ms")
    if a.drift_ns is not None:
        how.append(f"moved {a.drift_ns / 1e6:+.3g} ms during the run")
    said = " and ".join(how) or "its clock offset was uncertain"
    return (
        f"{a.name()}: {said}, over the run's --max-clock-uncertainty: its requests' place in "
        "the schedule and the window may be off by that much (its latencies are not)"
    )


def judge_agents(
    measured: Sequence[Record],
    client: ClientStats | None,
    limits: ValidityLimits,
    merged: Validity,
) -> Validity:
    """`merged` (the verdict over every record) with each agent judged on its own: the same
    `judge_validity` over the measured requests it sent, its workers' `AgentStats` (from the
    footer; without one, its records' error bound alone) and the error bound of its own
    records. The run is client-bound when any agent is; flagged clocks and the load lost
    workers never offered are added as notes. A local run's verdict comes back as it was."""
    stats = {a.index: a for a in (() if client is None else client.agents)}
    mine: dict[int, list[Record]] = {i: [] for i in stats}
    for r in measured:
        if r.agent is not None:
            mine.setdefault(r.agent, []).append(r)
    shortfall = None if client is None else client.shortfall
    if not mine and shortfall is None:
        return merged
    open_loop = bool(client.open_loop) if client is not None else bool(merged.open_loop)
    agents = []
    for i in sorted(mine):
        recs = mine[i]
        a = stats.get(i) or AgentStats(i, location=recs[0].location if recs else None)
        ok = [r for r in recs if r.error is None]
        bounds = error_bounds(ok, Samples.build(ok))
        own = None if i not in stats else a.client(open_loop)
        agents.append(AgentValidity(a, len(recs), judge_validity(recs, own, limits, bounds)))
    bound = [av for av in agents if av.validity.client_bound]
    reasons = list(merged.reasons)
    reasons += [f"{av.agent.name()}: {r}" for av in bound for r in av.validity.reasons]
    headline = merged.headline
    if bound:
        said = "; ".join(f"{av.agent.name()}, {_cause(av.validity.headline)}" for av in bound)
        headline = (
            f"{merged.headline}; on its own records, {said}"
            if merged.client_bound
            else f"client-bound on one agent's own records: {said}"
            if len(bound) == 1
            else f"client-bound on {len(bound)} agents' own records: {said}"
        )
    notes = [clock_note(av.agent) for av in agents if av.agent.flagged]
    if shortfall is not None:
        notes.append(shortfall.describe())
    return replace(
        merged,
        known=merged.known or any(av.validity.known for av in agents),
        client_bound=True if bound else merged.client_bound,
        reasons=tuple(reasons),
        headline=headline,
        agents=tuple(agents),
        shortfall=shortfall,
        notes=tuple(notes),
    )
