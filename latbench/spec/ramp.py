"""The spec's load shapes beyond one rate: a ramp (`load.ramp`, mode `ramp`) and a staircase
(`load.steps`, mode `steps`), and how requests arrive along them (`load.arrivals`).

Both are open loop on an absolute schedule (`load.pacers`), so every request keeps its own
`t_intended`. A ramp runs over the run's duration when it has one, else over its request count,
as `vllm bench serve --ramp-up-strategy` does (its rate follows the share of requests sent, not
the clock). A staircase's stairs last what they say, one after the other, and their sum is the
run's duration: a stair cut short would report a rate it never held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from latbench.shared.errors import SpecError
from latbench.spec.fields import Span, StrictModel

if TYPE_CHECKING:
    from latbench.spec.load import LoadSpec

# Requests per second, for every rate in `load` (rate, a ramp's, a stair's): defined here, below
# load.py, which imports this module.
MAX_RATE = 1e6
MAX_STEPS = 1000
SHAPED_MODES = ("ramp", "steps")
Arrivals = Literal["even", "poisson"]


class RampSpec(StrictModel):
    strategy: Literal["linear", "exponential"] = Field(
        description="linear: the rate grows by the same amount each second (or each request); "
        "exponential: by the same factor"
    )
    start_rate: float = Field(ge=0, le=MAX_RATE, description="requests per second at the start")
    end_rate: float = Field(gt=0, le=MAX_RATE, description="requests per second at the end")

    @model_validator(mode="after")
    def _check(self) -> RampSpec:
        if self.strategy == "exponential" and self.start_rate == 0:
            # vLLM's words: "For exponential ramp-up, the start RPS cannot be 0."
            raise ValueError("start_rate: an exponential ramp cannot start at 0 requests/s")
        return self


class StepSpec(StrictModel):
    rate: float = Field(gt=0, le=MAX_RATE, description="requests per second on this stair")
    duration: Span = Field(description="how long this stair lasts, e.g. 30s")

    @model_validator(mode="after")
    def _check(self) -> StepSpec:
        if self.duration <= 0:
            raise ValueError("duration: a stair must last more than 0 s")
        return self


def check_shape(load: LoadSpec) -> None:
    """The ramp and steps rules of a `LoadSpec`, each error naming its field; fills in a
    staircase's duration (the sum of its stairs)."""
    if load.ramp is not None and load.mode != "ramp":
        raise ValueError(f"ramp is for mode 'ramp', not {load.mode!r}")
    if load.steps is not None and load.mode != "steps":
        raise ValueError(f"steps is for mode 'steps', not {load.mode!r}")
    if load.mode not in SHAPED_MODES:
        if load.arrivals != "even":
            raise ValueError(
                f"arrivals: for modes ramp and steps, not {load.mode!r} (mode poisson draws "
                "gamma gaps itself)"
            )
        return
    if load.rate is not None:
        # vLLM's rule too: the ramp (or the stairs) sets the rate.
        raise ValueError(f"rate: mode {load.mode!r} sets the rate itself; leave rate out")
    if load.mode == "ramp" and load.ramp is None:
        raise ValueError(
            "ramp: mode 'ramp' needs ramp: {strategy, start_rate, end_rate} (flags: "
            "--ramp-up-strategy, --ramp-up-start-rps, --ramp-up-end-rps)"
        )
    if load.mode == "steps":
        if not load.steps:
            raise ValueError(
                "steps: mode 'steps' needs steps: [{rate, duration}, ...] (flag: --staircase)"
            )
        if len(load.steps) > MAX_STEPS:
            raise ValueError(f"steps: at most {MAX_STEPS} stairs, got {len(load.steps)}")
        total = sum(s.duration for s in load.steps)
        if load.duration is None:
            load.duration = total
        elif abs(load.duration - total) > 1e-9:
            raise ValueError(
                f"duration: the steps last {total:g} s, not {load.duration:g} s; leave duration "
                "out (it is their sum)"
            )


def stairs(load: LoadSpec) -> list[tuple[float, float]]:
    """(rate, duration s) of each stair, for the pacer and the per-stair summary."""
    return [(s.rate, s.duration) for s in load.steps or []]


def parse_steps(text: str) -> list[dict[str, object]]:
    """`--staircase 10:30s,20:30s` -> the `load.steps` list (rate:duration, comma-separated)."""
    out: list[dict[str, object]] = []
    for part in text.split(","):
        rate, sep, duration = part.strip().partition(":")
        try:
            value = float(rate)
        except ValueError:
            value = float("nan")
        if not sep or not duration.strip() or value != value:
            raise SpecError(
                f"--staircase {text!r}: write RATE:DURATION stairs separated by commas, "
                "e.g. 10:30s,20:30s"
            )
        out.append({"rate": value, "duration": duration.strip()})
    return out


def describe(load: LoadSpec) -> str:
    """The shape in a few words, for reports: `ramp linear 1 -> 20 req/s over 60 s`."""
    if load.mode == "ramp" and load.ramp is not None:
        r = load.ramp
        over = f"over {load.duration:g} s" if load.duration else f"over {load.requests} requests"
        return f"ramp {r.strategy} {r.start_rate:g} -> {r.end_rate:g} req/s {over}"
    if load.mode == "steps" and load.steps:
        rates = ", ".join(f"{s.rate:g}" for s in load.steps)
        return f"steps of {rates} req/s over {load.duration:g} s"
    return load.mode


def shaped_rates(load: LoadSpec) -> list[tuple[str, float]]:
    """Each rate a ramp or a staircase asks for, named by its field (caps check them as `rate`)."""
    if load.ramp is not None:
        return [
            ("load.ramp.start_rate", load.ramp.start_rate),
            ("load.ramp.end_rate", load.ramp.end_rate),
        ]
    return [(f"load.steps.{i}.rate", s.rate) for i, s in enumerate(load.steps or [])]
