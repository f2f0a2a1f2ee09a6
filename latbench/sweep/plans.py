"""What a sweep steps through: its plans (list, auto, find-max), the values they name, and each
step's spec.

Plans:
  list      the given values, in the given order;
  auto      a synchronous baseline (one user), a saturating throughput step (a closed loop of
            `max_concurrency` users), then constant-shape rates spread evenly between the two
            request rates measured (GuideLLM's sweep);
  find-max  the SLO capacity search (sweep/search.py): grow by 2x from a start until a step
            fails, then narrow the bracket [highest pass, lowest fail] at its geometric middle
            until it is within `resolution`. A failing step is run a second time, and the value
            fails only when both tries fail: noise on a busy machine only ever adds latency.

Pure data and parsing, so the command line can refuse a bad plan before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from latbench.shared.errors import SpecError

Variable = Literal["concurrency", "rate"]
DEFAULT_RESOLUTION = 0.05
DEFAULT_MAX_STEPS = 12
DEFAULT_AUTO_STEPS = 5
DEFAULT_SATURATION = 64  # users in the automatic sweep's throughput step


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
        over = load.get("oversaturation")
        if isinstance(over, dict) and "enabled" in over:
            # A base spec's `enabled: true` is for its open-loop steps; a closed loop cannot
            # over-saturate, and the spec refuses to be asked to watch one.
            load["oversaturation"] = {k: v for k, v in over.items() if k != "enabled"}
    else:
        if load.get("mode", "closed") == "closed":
            load["mode"] = "poisson"
        load["rate"] = float(value)
        if cap is not None:
            load["concurrency"] = cap
    return data


def plan_dict(plan: Plan) -> dict[str, Any]:
    """The plan as sweep.json records it."""
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


def format_value(variable: Variable, value: float) -> str:
    return f"{int(value)}" if variable == "concurrency" else f"{value:.3g}/s"
