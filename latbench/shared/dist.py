"""Distributions of a number (a latency in seconds, a token count), for specs and the simulator.

Written in specs as a bare number (fixed), or as `{kind, mean, std, min, max}`, or on the command
line as `KIND:MEAN[,STD]` (for example `normal:128,32`, `lognormal:0.05,0.01`).
For `lognormal`, `mean` and `std` are those of the distribution itself (not of its logarithm), so
that `lognormal:0.05,0.01` has mean 50 ms like `fixed:0.05`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

DistKind = Literal["fixed", "normal", "lognormal", "uniform"]


class Dist(BaseModel):
    # nan and inf mean nothing as a length or a latency; refused like any other bad number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: DistKind = "fixed"
    mean: float = Field(ge=0)
    std: float = Field(default=0.0, ge=0)
    min: float | None = Field(
        default=None, ge=0, description="samples are clamped to at least this"
    )
    max: float | None = Field(default=None, ge=0, description="samples are clamped to at most this")

    @model_validator(mode="before")
    @classmethod
    def _from_number_or_text(cls, v: object) -> object:
        if isinstance(v, int | float) and not isinstance(v, bool):
            return {"kind": "fixed", "mean": v}
        if isinstance(v, str):
            return parse_dist_text(v)
        if isinstance(v, dict) and v.get("kind") == "uniform" and "mean" not in v:
            lo, hi = v.get("min"), v.get("max")
            if isinstance(lo, int | float) and isinstance(hi, int | float):
                return {**v, "mean": (lo + hi) / 2}
        return v

    @model_validator(mode="after")
    def _check(self) -> Dist:
        if self.kind == "uniform" and (self.min is None or self.max is None):
            raise ValueError("a uniform distribution needs min and max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "fixed" or (self.std == 0 and self.kind != "uniform"):
            out = np.full(size, self.mean, dtype=float)
        elif self.kind == "normal":
            out = rng.normal(self.mean, self.std, size)
        elif self.kind == "lognormal":
            # Choose the log-space parameters that give the requested mean and std.
            sigma2 = math.log1p((self.std / self.mean) ** 2) if self.mean > 0 else 0.0
            mu = math.log(self.mean) - sigma2 / 2 if self.mean > 0 else -math.inf
            out = rng.lognormal(mu, math.sqrt(sigma2), size)
        else:  # uniform
            assert self.min is not None and self.max is not None
            out = rng.uniform(self.min, self.max, size)
        lo = 0.0 if self.min is None else self.min
        return np.clip(out, lo, self.max if self.max is not None else None)

    def sample_one(self, rng: np.random.Generator) -> float:
        return float(self.sample(rng, 1)[0])

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"{self.mean:g}"
        if self.kind == "uniform":
            return f"uniform:{self.min:g}..{self.max:g}"
        return f"{self.kind}:{self.mean:g},{self.std:g}"


def parse_dist_text(text: str) -> dict[str, object]:
    """`128` | `normal:128,32` | `lognormal:0.05,0.01` | `uniform:10,20` -> Dist fields."""
    t = text.strip()
    if ":" not in t:
        return {"kind": "fixed", "mean": _num(t, text)}
    kind, _, rest = t.partition(":")
    parts = [p for p in rest.split(",") if p.strip()]
    if kind not in ("fixed", "normal", "lognormal", "uniform"):
        raise ValueError(
            f"unknown distribution {kind!r} in {text!r}; use fixed, normal, lognormal or uniform"
        )
    nums = [_num(p, text) for p in parts]
    if kind == "uniform":
        if len(nums) != 2:
            raise ValueError(f"uniform needs two numbers, MIN,MAX: {text!r}")
        return {"kind": "uniform", "mean": (nums[0] + nums[1]) / 2, "min": nums[0], "max": nums[1]}
    if not 1 <= len(nums) <= 2:
        raise ValueError(f"{kind} needs MEAN[,STD]: {text!r}")
    return {"kind": kind, "mean": nums[0], "std": nums[1] if len(nums) == 2 else 0.0}


def _num(part: str, whole: str) -> float:
    try:
        return float(part)
    except ValueError:
        raise ValueError(f"{part.strip()!r} is not a number in {whole!r}") from None
