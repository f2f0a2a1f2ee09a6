"""The spec's `load` section: closed or open loop, how hard, for how long, and which part of
the run is measured.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from latbench.spec.fields import Span, StrictModel, UpToADay
from latbench.spec.ramp import MAX_RATE, SHAPED_MODES, Arrivals, RampSpec, StepSpec, check_shape
from latbench.spec.saturation import OversaturationSpec

MAX_CONCURRENCY = 65_536
MAX_REQUESTS = 10**9


class LoadSpec(StrictModel):
    mode: Literal["closed", "constant", "poisson", "ramp", "steps", "trace"] = "closed"
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CONCURRENCY,
        description="closed: users (default 8); open loop: optional cap",
    )
    rate: float | None = Field(
        default=None, gt=0, le=MAX_RATE, description="open loop: requests per second"
    )
    burstiness: float = Field(
        default=1.0, ge=1e-3, le=1e3, description="poisson: gamma shape; 1 = Poisson"
    )
    duration: Span | None = None
    requests: int | None = Field(default=None, ge=1, le=MAX_REQUESTS)
    warmup: Span = 0.0
    cooldown: Span = 0.0
    warmup_requests: int = Field(default=0, ge=0, le=MAX_REQUESTS)
    cooldown_requests: int = Field(default=0, ge=0, le=MAX_REQUESTS)
    oversaturation: OversaturationSpec = Field(default_factory=OversaturationSpec)
    workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="sending processes, one event loop each (default: docs/performance.md)",
    )
    overtime: UpToADay = Field(
        default=60.0,
        description="with a duration: how long requests still in flight when it ends may go on; "
        "then they are cut and recorded as `overtime`, a failure in the failed share",
    )
    ramp: RampSpec | None = Field(default=None, description="mode ramp: docs/workloads.md")
    steps: list[StepSpec] | None = Field(default=None, description="mode steps: the stairs")
    arrivals: Arrivals = Field(
        default="even", description="ramp, steps: even gaps, or poisson (gamma with burstiness)"
    )

    @model_validator(mode="after")
    def _check(self) -> LoadSpec:
        check_shape(self)
        if self.mode == "closed":
            if self.rate is not None:
                raise ValueError("rate is for open-loop modes (constant, poisson), not closed")
            if self.concurrency is None:
                self.concurrency = 8
        elif self.mode == "trace":  # the trace's own instants (workload.trace), to its end
            if self.rate is not None:
                raise ValueError(
                    "rate: mode 'trace' sends at the trace's own instants; leave rate out "
                    "(workload.trace.speed scales them)"
                )
        elif self.rate is None and self.mode not in SHAPED_MODES:
            raise ValueError(f"mode {self.mode!r} needs a rate (requests per second)")
        if self.duration is None and self.requests is None and self.mode != "trace":
            raise ValueError("give a duration or a number of requests to stop the run")
        if self.duration is not None and self.warmup + self.cooldown >= self.duration:
            raise ValueError(
                f"warmup ({self.warmup:g} s) + cooldown ({self.cooldown:g} s) leave nothing of "
                f"the {self.duration:g} s duration to measure"
            )
        if self.requests is not None and (
            self.warmup_requests + self.cooldown_requests >= self.requests
        ):
            raise ValueError(
                f"warmup_requests + cooldown_requests leave none of the {self.requests} requests "
                "to measure"
            )
        self.oversaturation.check(self.open_loop)
        return self

    @property
    def open_loop(self) -> bool:
        return self.mode != "closed"
