"""The spec's `workload.trace` section: which trace file format, how fast, which window.

The file is `workload.path` (source `trace`), replayed with `load.mode: trace`; the formats and
their columns are described in latbench/workload/trace.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from latbench.spec.fields import DAY_S, StrictModel, parse_seconds

# The public traces span days to months (BurstGPT: 121 days); a window is up to a year in.
TraceSeconds = Annotated[
    float, BeforeValidator(parse_seconds), Field(ge=0, le=366 * DAY_S, allow_inf_nan=False)
]


class TraceSpec(StrictModel):
    format: Literal["auto", "mooncake", "azure", "burstgpt"] = Field(
        default="auto",
        description="auto: from the file's first line (a JSON object is Mooncake's, a CSV "
        "header Azure's or BurstGPT's)",
    )
    speed: float = Field(
        default=1.0, ge=1e-3, le=1e4, description="replay speed: 2 sends the trace twice as fast"
    )
    start: TraceSeconds = Field(
        default=0.0,
        description="replay from this far into the trace (its own time, from its first row)",
    )
    end: TraceSeconds | None = Field(
        default=None, description="replay up to this far into the trace (unset: its end)"
    )
    block_tokens: int = Field(
        default=512,
        ge=1,
        le=1 << 16,
        description="Mooncake: tokens per hash id (the trace's KV block size, 512 in Mooncake's)",
    )

    @model_validator(mode="after")
    def _window(self) -> TraceSpec:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g} s) must be after start ({self.start:g} s)")
        return self
