"""The spec's `workload.tools`: requests that carry tool definitions, and agent sessions.

Without `workload.sessions`, every request carries the definitions, and the summary reports how
many replies called a tool, their tool-call tokens apart from the answer's, and the time to the
first tool-call token. With sessions, each tool call a reply makes is answered with a canned
result `latency` seconds after the reply ended (the tool's run time), and the next request goes
with no new user message, up to `max_steps` times per user turn (latbench/workload/tools.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from latbench.shared.dist import Dist
from latbench.spec.fields import DAY_S, StrictModel
from latbench.workload.tools import (
    MAX_TOOLS,
    Tools,
    builtin_tools,
    canned_result,
    read_tools,
)

MAX_STEPS = 64  # tool steps per user turn: agents that loop longer are stuck, not working
MAX_RESULT_TOKENS = 1 << 16  # a canned result longer than 64 Ki words is a document, not a result


class ToolsSpec(StrictModel):
    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOOLS,
        description="how many of the built-in tool definitions each request carries "
        "(default 4; not with path)",
    )
    path: Path | None = Field(
        default=None,
        description="a JSON file holding a list of tool definitions in the Chat Completions "
        "format, sent instead of the built-in ones",
    )
    latency: Dist = Field(
        default_factory=lambda: Dist(mean=0.0),
        description="seconds each tool call takes before its result is sent (agent sessions)",
    )
    max_steps: int = Field(
        default=1,
        ge=0,
        le=MAX_STEPS,
        description="tool calls answered per user turn before the session moves on (sessions)",
    )
    result_tokens: int = Field(
        default=32,
        ge=0,
        le=MAX_RESULT_TOKENS,
        description="length of the canned result each tool call is answered with, in words",
    )

    @model_validator(mode="after")
    def _check(self) -> ToolsSpec:
        if self.count is not None and self.path is not None:
            raise ValueError("count and path: give one (count picks built-in tools)")
        if self.path is not None:
            if "\x00" in str(self.path):
                raise ValueError("path holds a NUL character")
            read_tools(self.path)  # a file that cannot be sent is refused here, naming why
        for part in ("mean", "std", "min", "max"):
            v = getattr(self.latency, part)
            if v is not None and v > DAY_S:
                raise ValueError(f"latency: {part} {v:g} s is over a day")
        return self

    def build(self, seed: int) -> Tools:
        """The definitions, the canned result and the latency the workload wrapper adds."""
        defs = read_tools(self.path) if self.path is not None else builtin_tools(self.count or 4)
        return Tools(
            definitions=defs,
            latency=self.latency,
            max_steps=self.max_steps,
            result=canned_result(self.result_tokens, seed),
            seed=seed,
        )
