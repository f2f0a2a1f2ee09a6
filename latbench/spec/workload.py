"""The spec's `workload` section: where prompts come from, how long inputs and outputs are,
and what else each request body carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator, model_validator

from latbench.shared.dist import Dist
from latbench.spec.fields import StrictModel
from latbench.spec.images import ImagesSpec, check_session_images
from latbench.spec.prefix import SharedPrefixSpec
from latbench.spec.sessions import SessionsSpec, check_sessions
from latbench.spec.tools import ToolsSpec
from latbench.spec.trace import TraceSpec
from latbench.workload import MAX_TOKENS

MAX_SEED = 2**63  # exclusive: numpy's SeedSequence takes any int, but a seed must fit int64
MAX_EXTRA_BODY_BYTES = 64 * 1024
# The request fields each API kind's body sets (latbench/client/apis): the model, streaming, the
# prompt and the output length are what the benchmark measures, so extra_body cannot change
# them. `system` holds the Messages API's system prompt (part of the input); `store` (Responses)
# and every other field (temperature, top_p, ...) stay the caller's.
CONTROLLED_BODY_KEYS = (
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "messages",
    "prompt",
    "input",
    "system",
    "ignore_eos",
    "min_tokens",
)


class WorkloadSpec(StrictModel):
    source: Literal["synthetic", "jsonl", "sharegpt", "shared_prefix", "trace"] = "synthetic"
    path: Path | None = Field(default=None, description="prompt file, for jsonl and sharegpt")
    input_tokens: Dist = Field(default_factory=lambda: Dist(mean=128))
    # None: from the file (jsonl max_tokens, sharegpt reply length); synthetic uses 128.
    output_tokens: Dist | None = None
    ignore_eos: bool = True
    # With source shared_prefix (unset: its defaults, vLLM's prefix_repetition lengths).
    shared_prefix: SharedPrefixSpec | None = None
    # With source trace: the trace file's format, replay speed and window (unset: defaults).
    trace: TraceSpec | None = None
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="fields added to every request body; not those latbench sets "
        "(CONTROLLED_BODY_KEYS), at most 64 KiB as JSON",
    )
    seed: int = Field(default=0, ge=0, lt=MAX_SEED)
    # Generated images in each chat request (each turn of a session); None: text only.
    images: ImagesSpec | None = None
    # Synthetic prompt lengths are in the target's tokens (latbench/client/tokenize.py).
    tokenizer: str | None = Field(
        default=None,
        description="how synthetic prompts are counted: unset, the server's /tokenize, else the "
        "usage of two probe requests; a tokenizer.json, a folder holding one or a Hugging Face "
        "name, for servers without /tokenize; 'words' for a word as a token (no calibration)",
        min_length=1,
        max_length=4096,
    )
    # Tool definitions in every request; with sessions, agent sessions answering tool calls.
    tools: ToolsSpec | None = None
    # Multi-turn sessions (spec/sessions.py); None: single requests.
    sessions: SessionsSpec | None = None

    @field_validator("input_tokens", "output_tokens")
    @classmethod
    def _token_counts(cls, d: Dist | None) -> Dist | None:
        if d is not None:
            check_token_dist(d, MAX_TOKENS, "the most latbench sends")
        return d

    @field_validator("extra_body")
    @classmethod
    def _extra_body(cls, body: dict[str, Any]) -> dict[str, Any]:
        taken = [k for k in body if k in CONTROLLED_BODY_KEYS]
        if taken:
            raise ValueError(
                f"{', '.join(map(repr, taken))}: latbench sets these request fields itself (from "
                "target.model, the workload and its lengths); extra_body cannot override them "
                f"(set by latbench: {', '.join(CONTROLLED_BODY_KEYS)})"
            )
        try:
            size = len(orjson.dumps(body))
        except TypeError as e:  # a YAML date, set or binary: not something JSON can send
            raise ValueError(f"holds a value JSON cannot carry ({e})") from None
        if size > MAX_EXTRA_BODY_BYTES:
            raise ValueError(f"is {size} bytes as JSON, over the cap of {MAX_EXTRA_BODY_BYTES}")
        return body

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        if self.source not in ("synthetic", "shared_prefix") and self.path is None:
            raise ValueError(f"source {self.source!r} needs a path to the prompt file")
        if self.source in ("synthetic", "shared_prefix") and self.path is not None:
            raise ValueError(f"path is not for source {self.source!r}: its prompts are generated")
        if self.path is not None and "\x00" in str(self.path):
            raise ValueError("path holds a NUL character")
        if self.tokenizer is not None and self.source in ("jsonl", "sharegpt"):
            raise ValueError("tokenizer is for synthetic prompts; a prompt file is sent as it is")
        if self.source == "shared_prefix":
            # Compared with the default, not "was it set": a stored spec (the records header)
            # spells every field out.
            if self.input_tokens != Dist(mean=128):
                raise ValueError(
                    "input_tokens is not for source shared_prefix: its prompts are "
                    "shared_prefix.prefix_tokens + suffix_tokens"
                )
            self.shared_prefix = self.shared_prefix or SharedPrefixSpec()
        elif self.shared_prefix is not None:
            raise ValueError("shared_prefix is for source shared_prefix")
        if self.source == "trace":
            if self.output_tokens is not None:
                raise ValueError(
                    "output_tokens is not for source trace: each request asks for its row's"
                )
            self.trace = self.trace or TraceSpec()
        elif self.trace is not None:
            raise ValueError("trace is for source trace")
        if self.tokenizer is not None and "\x00" in self.tokenizer:
            raise ValueError("tokenizer holds a NUL character")
        check_sessions(self)
        check_session_images(self)
        return self


def check_token_dist(d: Dist, cap: float, whose: str) -> None:
    """A token-count distribution within `cap`: its mean, std and bounds (draws beyond the cap
    are clamped to it, see latbench.workload.item)."""
    for part in ("mean", "std", "min", "max"):
        v = getattr(d, part)
        if v is not None and v > cap:
            raise ValueError(f"{part} {v:g} is over {cap:.0f} tokens, {whose}")
