"""Running a sweep: one workload over several loads, one `run_benchmark` per step.

A step is one `run_benchmark` (its own warm-up, records file and results file) at one concurrency
or one request rate. The plan (sweep/plans.py) says which; for find-max, the capacity search
(sweep/search.py) picks each next value from the verdicts so far. sweep.json is rewritten after
every step (sweep/file.py).

A step stopped as over-saturated (`ended: oversaturated`) failed: its server could not keep up
with the rate. The search takes it as any failure and looks lower; a list or automatic plan runs
no later step at that rate or above, which could only over-saturate too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from latbench.run.benchmark import BenchResult, public_spec
from latbench.spec import RunSpec, load_spec
from latbench.sweep.capacity import find_capacity
from latbench.sweep.file import SweepResult, write_sweep
from latbench.sweep.plans import AutoPlan, ListPlan, Plan, Variable, format_value, step_data
from latbench.sweep.printing import print_step
from latbench.sweep.search import CapacitySearch
from latbench.sweep.steps import DEFAULT_MAX_ERROR_RATE, Role, Step, judge_step

StepRunner = Callable[[RunSpec, str], Awaitable[BenchResult]]
# How a step may end and still be read: an over-saturated one stopped early on its own verdict.
RAN_THROUGH = ("completed", "oversaturated")


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
        print_step(console, s)
        if bench.ended not in RAN_THROUGH:
            result.ended = "stopped"
        write_sweep(result, started, settings)
        return s

    def stopping() -> bool:
        return result.ended != "completed" or should_stop()

    def over(var: Variable, v: float) -> bool:
        """An earlier step at this rate or below over-saturated: this one would too."""
        return var == "rate" and any(
            s.ended == "oversaturated" and s.variable == "rate" and s.value <= v
            for s in result.steps
        )

    def skip(var: Variable, v: float) -> bool:
        if not over(var, v):
            return False
        console.print(
            f"[yellow]skipping {var} {format_value(var, v)}: a lower rate already "
            "over-saturated the server[/]",
            highlight=False,
        )
        return True

    if isinstance(plan, ListPlan):
        for v in plan.values:
            if stopping():
                break
            if not skip(plan.variable, v):
                await step("step", plan.variable, v)
    elif isinstance(plan, AutoPlan):
        base_step = await step("baseline", "concurrency", 1)
        sat = None if stopping() else await step("throughput", "concurrency", plan.saturation)
        r0 = base_step.summary.rates.requests_per_s
        r1 = None if sat is None else sat.summary.rates.requests_per_s
        if r0 and r1 and r1 > r0:
            for v in np.linspace(r0, r1, plan.steps + 2)[1:-1]:
                if stopping() or skip("rate", float(round(v, 6))):
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
                if s.ended in RAN_THROUGH:
                    search.record(v, s.verdict.outcome)
    result.capacity = find_capacity(result.steps, variable)
    write_sweep(result, started, settings)
    return result
