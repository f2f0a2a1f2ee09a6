"""The capacity a sweep found: the highest passing value below the lowest failing one, with the
evidence for it (each SLO's percentile and its bootstrap interval on both sides of the bracket,
and, when the failing step was stopped as over-saturated, a note that says so).

A pure function of the steps, so of their records: `latbench report` recomputes it from the
records files alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from latbench.records.record import read_records
from latbench.spec import RunSpec, load_spec
from latbench.summary.compare import RunSamples, percentile_ci
from latbench.sweep.plans import Variable, format_value
from latbench.sweep.steps import Step

EVIDENCE_RESAMPLES = 1000


@dataclass(frozen=True)
class SloEvidence:
    """One SLO's percentile at the passing and the failing step around the capacity, each with
    its 95 % bootstrap interval over requests (seconds)."""

    slo: str
    threshold_s: float
    passing: tuple[float, float, float] | None  # estimate, low, high
    failing: tuple[float, float, float] | None

    @property
    def pass_clear(self) -> bool | None:
        """The passing step's whole interval is at or under the threshold."""
        return None if self.passing is None else self.passing[2] <= self.threshold_s

    @property
    def fail_clear(self) -> bool | None:
        """The failing step's whole interval is over the threshold."""
        return None if self.failing is None else self.failing[1] > self.threshold_s

    def to_dict(self) -> dict[str, Any]:
        def tri(t: tuple[float, float, float] | None) -> dict[str, float] | None:
            return None if t is None else {"value_s": t[0], "ci_low_s": t[1], "ci_high_s": t[2]}

        return {
            "slo": self.slo,
            "threshold_s": self.threshold_s,
            "passing": tri(self.passing),
            "failing": tri(self.failing),
            "pass_clear": self.pass_clear,
            "fail_clear": self.fail_clear,
        }


@dataclass(frozen=True)
class Capacity:
    variable: Variable
    value: float | None  # the highest passing value; None when no step passed
    ceiling: float | None  # the lowest failing value above it; None when none failed
    limited_by: str  # slo | client | never-failed | none-passed
    passing_index: int | None
    failing_index: int | None
    requests_per_s: float | None  # what the passing step achieved
    output_tokens_per_s: float | None
    confidence: str  # high | low
    notes: tuple[str, ...]
    evidence: tuple[SloEvidence, ...] = field(default=())

    @property
    def resolution(self) -> float | None:
        if self.value is None or self.ceiling is None:
            return None
        return self.ceiling / self.value - 1

    def headline(self) -> str:
        v = self.variable
        if self.value is None and self.limited_by == "client":
            return (
                f"no capacity measured: the client could not measure the first {v} tried "
                "within its error tolerance"
            )
        if self.value is None:
            return f"no {v} met the SLOs: even the lowest step tried failed"
        text = f"capacity: {format_value(v, self.value)}"
        if self.limited_by == "client":
            text = f"capacity: at least {format_value(v, self.value)} (client-bound above)"
        elif self.limited_by == "never-failed":
            text = f"capacity: at least {format_value(v, self.value)} (no step failed)"
        if self.ceiling is not None:
            text += f"; fails at {format_value(v, self.ceiling)} (bracket {self.resolution:.1%})"
        if self.requests_per_s is not None:
            tok = self.output_tokens_per_s or 0.0
            text += f"; {self.requests_per_s:.3g} req/s, {tok:.4g} output tok/s"
        return text + f"; confidence {self.confidence}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "variable": self.variable,
            "value": self.value,
            "ceiling": self.ceiling,
            "resolution": self.resolution,
            "limited_by": self.limited_by,
            "passing_step": self.passing_index,
            "failing_step": self.failing_index,
            "requests_per_s": self.requests_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "confidence": self.confidence,
            "notes": list(self.notes),
            "evidence": [e.to_dict() for e in self.evidence],
            "headline": self.headline(),
        }


def find_capacity(steps: Sequence[Step], variable: Variable) -> Capacity | None:
    """The highest passing value below the lowest failing one, with its evidence: a pure function
    of the steps (so of their records). None when no step varied `variable`."""
    tried = [s for s in steps if s.variable == variable and s.role == "step"]
    points = _per_value(tried)
    if not points:
        baseline = [s for s in steps if s.role == "baseline" and s.verdict.outcome != "pass"]
        if not baseline:
            return None
        b = baseline[0]
        why = "was client-bound" if b.verdict.outcome == "client-bound" else "missed the SLOs"
        return Capacity(
            variable,
            None,
            None,
            "client" if b.verdict.outcome == "client-bound" else "none-passed",
            None,
            b.index,
            None,
            None,
            "high" if b.verdict.outcome == "fail" else "low",
            (
                f"the synchronous baseline (one request at a time) {why}: "
                + "; ".join(b.verdict.reasons),
            ),
        )
    fails = [s for s in points if s.verdict.outcome == "fail"]
    bound = [s for s in points if s.verdict.outcome == "client-bound"]
    lowest_fail = min(fails, key=lambda s: s.value) if fails else None
    passes = [
        s
        for s in points
        if s.verdict.outcome == "pass" and (lowest_fail is None or s.value < lowest_fail.value)
    ]
    best = max(passes, key=lambda s: s.value) if passes else None
    notes = []
    above = [
        s
        for s in points
        if s.verdict.outcome == "pass" and lowest_fail is not None and s.value > lowest_fail.value
    ]
    if above:
        notes.append(
            f"{len(above)} step(s) above the lowest failing one passed: the outcome is not "
            "monotonic in load, so noise (or a server that recovers) is at play"
        )
    first_bound = min(bound, key=lambda s: s.value) if bound else None
    limited_by = "slo"
    if best is None:
        limited_by = "none-passed" if first_bound is None or fails else "client"
    elif first_bound is not None and (lowest_fail is None or first_bound.value < lowest_fail.value):
        limited_by = "client"
        notes.append(
            f"step at {format_value(variable, first_bound.value)} was client-bound (its "
            "validity verdict says which check fired), so the server's limit lies above what was "
            "measured"
        )
    elif lowest_fail is None:
        limited_by = "never-failed"
    ceiling = lowest_fail if limited_by == "slo" else None
    evidence = _evidence(best, ceiling)
    unclear_pass = [e.slo for e in evidence if e.pass_clear is False]
    if unclear_pass:
        notes.append(
            f"at the passing step the 95 % interval of {', '.join(unclear_pass)} reaches over "
            "its threshold: a rerun could fail there"
        )
    # The failing step is clear when some SLO it missed was missed beyond doubt, or when it
    # failed on errors rather than on a percentile, or its server's queue grew without bound.
    over = None if ceiling is None else ceiling.summary.oversaturation
    if over is not None:
        notes.append(
            f"the failing step was stopped as over-saturated after {over.after_s:.0f} s (its "
            "in-flight requests and TTFT grew without bound): the capacity lies below it"
        )
    fail_clear = (
        ceiling is None
        or over is not None
        or any(e.fail_clear for e in evidence)
        or not any("missed" in r for r in ceiling.verdict.reasons)
    )
    if not fail_clear:
        notes.append(
            "at the failing step every missed SLO's 95 % interval reaches under its threshold: "
            "a rerun could pass there"
        )
    confidence = "high"
    if limited_by != "slo" or above or unclear_pass or not fail_clear:
        confidence = "low"
    return Capacity(
        variable=variable,
        value=None if best is None else best.value,
        ceiling=None if ceiling is None else ceiling.value,
        limited_by=limited_by,
        passing_index=None if best is None else best.index,
        failing_index=None if ceiling is None else ceiling.index,
        requests_per_s=None if best is None else best.summary.rates.requests_per_s,
        output_tokens_per_s=None if best is None else best.summary.rates.output_tokens_per_s,
        confidence=confidence,
        notes=tuple(notes),
        evidence=evidence,
    )


def _per_value(steps: Sequence[Step]) -> list[Step]:
    """One step per value: a value passes when any try at it passed (a failure is confirmed by
    a second try, see `run_sweep`), is client-bound when a try was, and fails otherwise. The
    step kept is the latest try with that outcome."""
    rank = {"pass": 0, "client-bound": 1, "fail": 2}
    best: dict[float, Step] = {}
    for s in steps:
        cur = best.get(s.value)
        if cur is None or rank[s.verdict.outcome] <= rank[cur.verdict.outcome]:
            best[s.value] = s
    return list(best.values())


def _samples(step: Step) -> tuple[RunSamples, RunSpec]:
    f = read_records(step.records_path)
    spec = load_spec(f.header.spec if f.header else {}, source=str(step.records_path))
    return RunSamples.of_file(f, spec), spec


def _evidence(passing: Step | None, failing: Step | None) -> tuple[SloEvidence, ...]:
    loaded = {s.index: _samples(s) for s in (passing, failing) if s is not None}
    if not loaded:
        return ()
    spec = next(iter(loaded.values()))[1]
    out = []
    for slo in spec.slos:

        def ci(step: Step | None, slo: Any = slo) -> tuple[float, float, float] | None:
            if step is None:
                return None
            est, lo, hi = percentile_ci(
                loaded[step.index][0], slo.metric, slo.percentile, EVIDENCE_RESAMPLES
            )
            return None if not math.isfinite(est) else (est, lo, hi)

        out.append(SloEvidence(str(slo), slo.threshold_s, ci(passing), ci(failing)))
    return tuple(out)
