"""Sweeps: one workload over several loads, and the search for the highest load that meets the SLOs.

A step is one `run_benchmark` (its own warm-up, records file and results file) at one concurrency
or one request rate. A sweep writes `sweep.json` beside its steps' directories after every step,
so a killed sweep keeps every step it finished; the file lists each step's spec, summary, verdict
and records path, and every figure in it can be recomputed from those records
(`latbench report` does).

Plans:
  list      the given values, in the given order;
  auto      a synchronous baseline (one user), a saturating throughput step (a closed loop of
            `max_concurrency` users), then constant-shape rates spread evenly between the two
            request rates measured (GuideLLM's sweep);
  find-max  the SLO capacity search (`CapacitySearch`): grow by 2x from a start until a step
            fails, then narrow the bracket [highest pass, lowest fail] at its geometric middle
            until it is within `resolution`. A failing step is run a second time, and the value
            fails only when both tries fail: noise on a busy machine only ever adds latency.

A step passes when it kept up (not client-bound), every SLO held and at most `max_error_rate`
of its measured requests failed. A client-bound step is never read as a server limit: the search
stops there and reports the capacity as "at least" the last pass.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from rich.console import Console

from latbench.records.record import read_records
from latbench.run.benchmark import BenchResult, public_spec
from latbench.shared.errors import SpecError
from latbench.spec.spec import RunSpec, load_spec
from latbench.summary.compare import RunSamples, percentile_ci
from latbench.summary.summary import Summary

Variable = Literal["concurrency", "rate"]
Role = Literal["baseline", "throughput", "step"]
Outcome = Literal["pass", "fail", "client-bound"]
SWEEP_FILE = "sweep.json"
SWEEP_SCHEMA = 1
DEFAULT_RESOLUTION = 0.05
DEFAULT_MAX_STEPS = 12
DEFAULT_AUTO_STEPS = 5
DEFAULT_SATURATION = 64  # users in the automatic sweep's throughput step
DEFAULT_MAX_ERROR_RATE = 0.01
GROWTH = 2.0
EVIDENCE_RESAMPLES = 1000

StepRunner = Callable[[RunSpec, str], Awaitable[BenchResult]]


# --------------------------------------------------------------------------------------------
# Plans and the values they step through


def parse_values(text: str, variable: Variable) -> list[float]:
    """`1,2,4,8`; `START:STOP:STEP` (linear, STOP included when hit); `START:STOP:xF`
    (geometric)."""
    integer = variable == "concurrency"
    form = "e.g. 1,2,4,8 or 5:40:5 or 1:64:x2"

    def num(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise SpecError(
                f"sweep --{variable} {text!r}: {s!r} is not a number ({form})"
            ) from None
        if not (math.isfinite(v) and v > 0) or (integer and v != int(v)):
            kind = "a whole number of 1 or more" if integer else "a number above 0"
            raise SpecError(f"sweep --{variable} {text!r}: {s!r} is not {kind}")
        return v

    text = text.strip()
    if ":" not in text:
        values = [num(s) for s in text.split(",") if s.strip()]
    else:
        parts = text.split(":")
        if len(parts) != 3:
            raise SpecError(f"sweep --{variable} {text!r}: a range is START:STOP:STEP ({form})")
        start, stop = num(parts[0]), num(parts[1])
        geometric = parts[2].strip().startswith("x")
        step = num(parts[2].strip().removeprefix("x")) if geometric else num(parts[2])
        if stop < start or (geometric and step <= 1):
            raise SpecError(
                f"sweep --{variable} {text!r}: STOP must be at least START, and a factor above 1"
            )
        values, v = [], start
        while v <= stop * (1 + 1e-9) and len(values) <= 1000:
            values.append(round(v, 9))
            v = v * step if geometric else start + len(values) * step
        if integer:
            values = sorted({float(round(v)) for v in values})
    if not values:
        raise SpecError(f"sweep --{variable} {text!r}: no values ({form})")
    return values


@dataclass(frozen=True)
class ListPlan:
    variable: Variable
    values: tuple[float, ...]


@dataclass(frozen=True)
class AutoPlan:
    steps: int = DEFAULT_AUTO_STEPS
    saturation: int = DEFAULT_SATURATION


@dataclass(frozen=True)
class FindMaxPlan:
    variable: Variable = "rate"
    start: float | None = None  # None: the synchronous baseline's request rate (rate), or 1
    limit: float | None = None  # never step above this
    resolution: float = DEFAULT_RESOLUTION
    max_steps: int = DEFAULT_MAX_STEPS


Plan = ListPlan | AutoPlan | FindMaxPlan


def plan_name(plan: Plan) -> str:
    return {ListPlan: "list", AutoPlan: "auto", FindMaxPlan: "find-max"}[type(plan)]


def step_data(
    base: dict[str, Any], variable: Variable, value: float, cap: int | None
) -> dict[str, Any]:
    """Spec data for one step: the base spec with its load set to this step's."""
    data = {**base, "load": dict(base.get("load", {}))}
    load = data["load"]
    load.pop("rate", None)
    load.pop("concurrency", None)
    if variable == "concurrency":
        load["mode"] = "closed"
        load["concurrency"] = int(value)
    else:
        if load.get("mode", "closed") == "closed":
            load["mode"] = "poisson"
        load["rate"] = float(value)
        if cap is not None:
            load["concurrency"] = cap
    return data


# --------------------------------------------------------------------------------------------
# One step's verdict


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
    req = summary.requests
    if req.succeeded == 0:
        reasons.append("no request succeeded")
    elif req.measured and req.failed / req.measured > max_error_rate:
        reasons.append(
            f"{req.failed} of {req.measured} requests failed (limit {max_error_rate:.1%})"
        )
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
        return self.run_dir / "records.jsonl"

    def label(self) -> str:
        return f"{self.variable} {format_value(self.variable, self.value)}"

    def to_dict(self, root: Path) -> dict[str, Any]:
        rel = self.run_dir.relative_to(root) if self.run_dir.is_relative_to(root) else self.run_dir
        return {
            "index": self.index,
            "role": self.role,
            "variable": self.variable,
            "value": self.value,
            "run_id": self.run_id,
            "dir": str(rel),
            "records": str(rel / "records.jsonl"),
            "results": str(rel / "results.json"),
            "ended": self.ended,
            "outcome": self.verdict.outcome,
            "reasons": list(self.verdict.reasons),
            "spec": self.spec,
            "summary": self.summary.to_dict(),
        }


def format_value(variable: Variable, value: float) -> str:
    return f"{int(value)}" if variable == "concurrency" else f"{value:.3g}/s"


# --------------------------------------------------------------------------------------------
# The capacity search


class CapacitySearch:
    """Which value to try next, from the outcomes so far. No clock, no I/O.

    Grows by `GROWTH` from `start` until a step fails (or shrinks by it until one passes), then
    narrows [lo, hi] at its geometric middle until `hi / lo - 1 <= resolution` (for concurrency:
    until hi = lo + 1). Stops at a client-bound step, at `limit`, or after `max_steps` steps.
    """

    def __init__(
        self,
        variable: Variable,
        start: float,
        *,
        limit: float | None = None,
        resolution: float = DEFAULT_RESOLUTION,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        self.variable = variable
        self.integer = variable == "concurrency"
        self.limit = limit
        self.resolution = resolution
        self.max_steps = max_steps
        self.lo: float | None = None  # highest value that passed
        self.hi: float | None = None  # lowest value that failed
        self.steps = 0
        self.stopped_by: str | None = None
        self._next: float | None = self._round(start if limit is None else min(start, limit))

    def _round(self, v: float) -> float:
        return float(max(1, round(v))) if self.integer else v

    def next_value(self) -> float | None:
        if self.stopped_by is not None or self.steps >= self.max_steps:
            if self.stopped_by is None:
                self.stopped_by = "steps"
            return None
        return self._next

    def record(self, value: float, outcome: Outcome) -> None:
        self.steps += 1
        if outcome == "client-bound":
            self.stopped_by = "client"
            return
        if outcome == "pass":
            self.lo = value if self.lo is None else max(self.lo, value)
        else:
            self.hi = value if self.hi is None else min(self.hi, value)
        lo, hi = self.lo, self.hi
        if hi is None:  # nothing failed yet: grow
            assert lo is not None
            if self.limit is not None and lo >= self.limit:
                self.stopped_by = "limit"
                return
            nxt = lo * GROWTH
            self._next = self._round(nxt if self.limit is None else min(nxt, self.limit))
        elif lo is None:  # nothing passed yet: shrink
            nxt = self._round(hi / GROWTH)
            if nxt >= hi or (not self.integer and hi / GROWTH < 1e-3):
                self.stopped_by = "floor"
                return
            self._next = nxt
        else:
            if self._narrow_enough(lo, hi):
                self.stopped_by = "resolution"
                return
            mid = self._round(math.sqrt(lo * hi))
            if self.integer and not lo < mid < hi:
                mid = lo + 1
            self._next = mid

    def _narrow_enough(self, lo: float, hi: float) -> bool:
        if self.integer:
            return hi - lo <= 1
        return hi / lo - 1 <= self.resolution


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
            return f"no capacity measured: the client could not generate the first {v} tried"
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
            f"step at {format_value(variable, first_bound.value)} was client-bound: the client "
            "set the pace there, so the server's limit lies above what was measured"
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
    # failed on errors rather than on a percentile.
    fail_clear = (
        ceiling is None
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
    window = (f.footer.window_start, f.footer.window_end) if f.footer else None
    return RunSamples(f.records, window, spec.slos), spec


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


# --------------------------------------------------------------------------------------------
# Running a sweep


@dataclass
class SweepResult:
    sweep_id: str
    directory: Path
    plan: Plan
    steps: list[Step]
    capacity: Capacity | None
    ended: str  # completed | stopped

    @property
    def path(self) -> Path:
        return self.directory / SWEEP_FILE

    @property
    def any_client_bound(self) -> bool:
        return any(s.verdict.outcome == "client-bound" for s in self.steps)


def _plan_dict(plan: Plan) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": plan_name(plan)}
    if isinstance(plan, ListPlan):
        d |= {"variable": plan.variable, "values": list(plan.values)}
    elif isinstance(plan, AutoPlan):
        d |= {"steps": plan.steps, "saturation": plan.saturation}
    else:
        d |= {
            "variable": plan.variable,
            "start": plan.start,
            "limit": plan.limit,
            "resolution": plan.resolution,
            "max_steps": plan.max_steps,
        }
    return d


def write_sweep(result: SweepResult, started_wall_ns: int, settings: dict[str, Any]) -> None:
    doc = {
        "type": "latbench-sweep",
        "schema": SWEEP_SCHEMA,
        "sweep_id": result.sweep_id,
        "started_wall_ns": started_wall_ns,
        "ended": result.ended,
        "plan": _plan_dict(result.plan),
        "settings": settings,
        "steps": [s.to_dict(result.directory) for s in result.steps],
        "capacity": None if result.capacity is None else result.capacity.to_dict(),
    }
    tmp = result.path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(result.path)  # readers never see a half-written file


async def run_sweep(
    plan: Plan,
    base: dict[str, Any],
    run_step: StepRunner,
    console: Console,
    *,
    cap: int | None = None,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    should_stop: Callable[[], bool] = lambda: False,
) -> SweepResult:
    """Run the plan's steps one after another; `base` is spec data (see `step_data`)."""
    out_root = Path(base.get("output_dir", "latbench-results"))
    sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    directory = out_root / sweep_id
    directory.mkdir(parents=True, exist_ok=True)
    base = {**base, "output_dir": str(directory)}
    started = time.time_ns()
    settings = {"max_error_rate": max_error_rate, "cap": cap}
    result = SweepResult(sweep_id, directory, plan, [], None, "completed")
    variable: Variable = "rate" if isinstance(plan, AutoPlan) else plan.variable
    # Validate every step of a fixed plan before running any: a typo fails in a second, not
    # after an hour of steps.
    if isinstance(plan, ListPlan):
        for v in plan.values:
            load_spec(step_data(base, plan.variable, v, cap), source=f"sweep step {v:g}")

    async def step(role: Role, var: Variable, value: float) -> Step:
        spec = load_spec(step_data(base, var, value, cap), source=f"sweep step {value:g}")
        index = len(result.steps)
        run_id = f"{sweep_id}-s{index + 1:02d}"
        console.print(
            f"[bold]step {index + 1}[/] ({role}): {var} {format_value(var, value)}", highlight=False
        )
        bench = await run_step(spec, run_id)
        verdict = judge_step(bench.summary, max_error_rate)
        s = Step(
            index,
            role,
            var,
            value,
            run_id,
            bench.records_path.parent,
            public_spec(spec),
            bench.summary,
            verdict,
            bench.ended,
        )
        result.steps.append(s)
        _print_step(console, s)
        if bench.ended != "completed":
            result.ended = "stopped"
        write_sweep(result, started, settings)
        return s

    def stopping() -> bool:
        return result.ended != "completed" or should_stop()

    if isinstance(plan, ListPlan):
        for v in plan.values:
            if stopping():
                break
            await step("step", plan.variable, v)
    elif isinstance(plan, AutoPlan):
        base_step = await step("baseline", "concurrency", 1)
        sat = None if stopping() else await step("throughput", "concurrency", plan.saturation)
        r0 = base_step.summary.rates.requests_per_s
        r1 = None if sat is None else sat.summary.rates.requests_per_s
        if r0 and r1 and r1 > r0:
            for v in np.linspace(r0, r1, plan.steps + 2)[1:-1]:
                if stopping():
                    break
                await step("step", "rate", float(round(v, 6)))
        elif r0 and r1 and not stopping():
            console.print(
                "[yellow]the throughput step was no faster than the baseline: the server does "
                "not gain from concurrency, so no rates lie between[/]"
            )
    else:
        start = plan.start
        if start is None and plan.variable == "rate":
            base_step = await step("baseline", "concurrency", 1)
            start = base_step.summary.rates.requests_per_s
            if base_step.verdict.outcome != "pass" or not start:
                start = None  # one request at a time already fails: there is nothing to search
        elif start is None:
            start = 1.0
        if start is not None:
            search = CapacitySearch(
                plan.variable,
                start,
                limit=plan.limit,
                resolution=plan.resolution,
                max_steps=plan.max_steps,
            )
            while not stopping() and (v := search.next_value()) is not None:
                s = await step("step", plan.variable, v)
                if s.verdict.outcome == "fail" and not stopping():
                    # Noise on a shared machine only ever adds latency: one slow step is not
                    # taken as the server's limit until a second try at the same load fails too.
                    console.print("  confirming the failure with a second try", highlight=False)
                    s = await step("step", plan.variable, v)
                if s.ended == "completed":
                    search.record(v, s.verdict.outcome)
    result.capacity = find_capacity(result.steps, variable)
    write_sweep(result, started, settings)
    return result


def _print_step(console: Console, s: Step) -> None:
    sm = s.summary
    lat = sm.latency

    def ms(metric: str) -> str:
        v = lat[metric].p(99.0)
        return "–" if v is None else f"{v * 1e3:.1f} ms"

    style = {"pass": "green", "fail": "red", "client-bound": "bold red"}[s.verdict.outcome]
    rps = sm.rates.requests_per_s
    console.print(
        f"  [{style}]{s.verdict.outcome}[/]: {0 if rps is None else rps:.3g} req/s, p99 TTFT "
        f"{ms('ttft')}, ITL {ms('itl')}, TPOT {ms('tpot')}"
        + ("" if not s.verdict.reasons else f" ({'; '.join(s.verdict.reasons)})"),
        highlight=False,
    )
