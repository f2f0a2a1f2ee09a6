"""The spec's `load.oversaturation`: when an open-loop run stops early because the server cannot
keep up (`summary.saturation` judges it, `load.runner` stops the run).

On by default for open loop, where the offered rate is fixed whatever the server does, so a
server below that rate builds a queue without bound and the rest of the run measures only how
long the queue has grown. Off for closed loop, which cannot over-saturate: its in-flight count is
its user count. The defaults are conservative, since a false stop costs as much trust as a miss:
a 30 s window, growth of three standard deviations of a critically loaded queue's random walk,
and TTFT past 2.5 s (GuideLLM's over-saturation detector found that floor separated the two
regimes in its evaluation; it is the `minimum_ttft` of its OSD algorithm).
"""

from __future__ import annotations

from pydantic import Field

from latbench.spec.fields import Seconds, Span, StrictModel

__all__ = ["OversaturationSpec"]


class OversaturationSpec(StrictModel):
    enabled: bool | None = Field(
        default=None,
        description="stop an open-loop run that over-saturates the server (default: on for "
        "open-loop modes; a closed loop cannot over-saturate)",
    )
    window: Span = Field(
        default=30.0,
        ge=1.0,
        description="the last stretch of the run judged: in-flight and TTFT must both grow "
        "steadily across it",
    )
    hold: Span = Field(
        default=5.0,
        description="how long the verdict must hold, judged each second, before the run stops",
    )
    min_requests: int = Field(
        default=30,
        ge=6,
        le=10**6,
        description="first tokens inside the window needed before it may fire",
    )
    min_ttft: Seconds = Field(
        default=2.5, description="TTFT (the fitted value at the window's end) it must reach"
    )
    sigmas: float = Field(
        default=3.0,
        gt=0,
        le=100,
        description="how significant both growths must be, in standard deviations",
    )

    def applies(self, open_loop: bool) -> bool:
        """Whether a run of this loop is watched: as set, else open loop only."""
        return open_loop if self.enabled is None else self.enabled

    def check(self, open_loop: bool) -> None:
        """ValueError naming the field when it asks for what cannot happen."""
        if self.enabled and not open_loop:
            raise ValueError(
                "oversaturation.enabled: a closed loop cannot over-saturate (its in-flight "
                "count is its users); it is for open-loop modes"
            )
