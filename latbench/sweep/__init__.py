"""Sweeps: one workload over several loads, and the search for the highest load that meets the
SLOs.

plans.py says what to step through, search.py picks find-max's next value (pure), steps.py judges
each finished step, capacity.py reads the capacity off the steps, run.py runs them, file.py writes
sweep.json, printing.py the console lines.
"""

from latbench.sweep.capacity import Capacity, SloEvidence, find_capacity
from latbench.sweep.file import SWEEP_FILE, SWEEP_SCHEMA, SweepResult, write_sweep
from latbench.sweep.plans import (
    DEFAULT_AUTO_STEPS,
    DEFAULT_MAX_STEPS,
    DEFAULT_RESOLUTION,
    DEFAULT_SATURATION,
    AutoPlan,
    FindMaxPlan,
    ListPlan,
    Plan,
    Variable,
    format_value,
    parse_values,
    plan_name,
    step_data,
)
from latbench.sweep.run import StepRunner, run_sweep
from latbench.sweep.search import CapacitySearch
from latbench.sweep.steps import (
    DEFAULT_MAX_ERROR_RATE,
    Outcome,
    Role,
    Step,
    StepVerdict,
    judge_step,
)

__all__ = [
    "DEFAULT_AUTO_STEPS",
    "DEFAULT_MAX_ERROR_RATE",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_RESOLUTION",
    "DEFAULT_SATURATION",
    "SWEEP_FILE",
    "SWEEP_SCHEMA",
    "AutoPlan",
    "Capacity",
    "CapacitySearch",
    "FindMaxPlan",
    "ListPlan",
    "Outcome",
    "Plan",
    "Role",
    "SloEvidence",
    "Step",
    "StepRunner",
    "StepVerdict",
    "SweepResult",
    "Variable",
    "find_capacity",
    "format_value",
    "judge_step",
    "parse_values",
    "plan_name",
    "run_sweep",
    "step_data",
    "write_sweep",
]
