"""One finished step of a sweep and its verdict.

A step passes when it kept up (not client-bound), every SLO held, at most `max_error_rate`
of its measured requests failed, and it was not stopped as over-saturated (an open loop whose
server's queue grew without bound, `summary.saturation`: above capacity whatever its SLOs say,
and its figures are of a queue cut short). A client-bound step is never read as a server limit:
the search stops there and reports the capacity as "at least" the last pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from latbench.records.rundir import RunDir
from latbench.summary.summary import Summary
from latbench.sweep.plans import Variable, format_value

Role = Literal["baseline", "throughput", "step"]
Outcome = Literal["pass", "fail", "client-bound"]
DEFAULT_MAX_ERROR_RATE = 0.01


@dataclass(frozen=True)
class StepVerdict:
    outcome: Outcome
    reasons: tuple[str, ...]


def judge_step(summary: Summary, max_error_rate: float = DEFAULT_MAX_ERROR_RATE) -> StepVerdict:
    if summary.client_bound:
        return StepVerdict("client-bound", tuple(summary.validity.reasons))
    reasons = []
    for r in summary.slos:
        if r.passed is False:
            reasons.append(f"{r.slo} missed: {r.value_s * 1e3:.1f} ms")  # type: ignore[operator]
    if summary.oversaturation is not None:
        reasons.append(summary.oversaturation.describe())
    req = summary.requests
    # Requests latbench cut when it stopped the step (over-saturated) are cancelled, not failed.
    failed = summary.failures.failed
    if req.succeeded == 0:
        reasons.append("no request succeeded")
    elif req.measured and failed / req.measured > max_error_rate:
        reasons.append(f"{failed} of {req.measured} requests failed (limit {max_error_rate:.1%})")
    return StepVerdict("fail" if reasons else "pass", tuple(reasons))


@dataclass
class Step:
    """One finished step: where its records are, and what they say."""

    index: int
    role: Role
    variable: Variable
    value: float
    run_id: str
    run_dir: Path
    spec: dict[str, Any]
    summary: Summary
    verdict: StepVerdict
    ended: str = "completed"

    @property
    def records_path(self) -> Path:
        return RunDir(self.run_dir).records

    def label(self) -> str:
        return f"{self.variable} {format_value(self.variable, self.value)}"

    def to_dict(self, root: Path) -> dict[str, Any]:
        rel = self.run_dir.relative_to(root) if self.run_dir.is_relative_to(root) else self.run_dir
        files = RunDir(rel)
        return {
            "index": self.index,
            "role": self.role,
            "variable": self.variable,
            "value": self.value,
            "run_id": self.run_id,
            "dir": str(rel),
            "records": str(files.records),
            "results": str(files.results),
            "ended": self.ended,
            "outcome": self.verdict.outcome,
            "reasons": list(self.verdict.reasons),
            "spec": self.spec,
            "summary": self.summary.to_dict(),
        }
