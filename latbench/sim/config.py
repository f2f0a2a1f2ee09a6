"""The simulator's configuration: one pydantic model, loadable from YAML, JSON or flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from latbench.shared.dist import Dist
from latbench.sim.formats import Personality

FaultKind = Literal[
    "http_status", "malformed", "truncate", "stall_first", "stall_mid", "error_event"
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
# A tool call's tokens when a request offers tools and `tool_call_tokens` is 0: a short call,
# the name's event and a few words of arguments.
TOOL_CALL_TOKENS = 8


class FaultSpec(BaseModel):
    """Every `every`-th generation request (counted per process, from 1) gets this fault.

    `after` is the number of token events sent before a mid-stream fault strikes; `status` is the
    HTTP status of an `http_status` fault; `stall_s` is how long a stall holds the connection;
    `retry_after` is the Retry-After, in whole seconds, sent with a 429, 503 or 529 (`none`: no
    header).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: FaultKind
    every: int = Field(default=1, ge=1)
    after: int = Field(default=0, ge=0)
    status: int = Field(default=500, ge=400, le=599)
    stall_s: float = Field(default=3600.0, gt=0)
    retry_after: int | None = Field(default=1, ge=0)

    @field_validator("retry_after", mode="before")
    @classmethod
    def _none(cls, v: object) -> object:
        return None if isinstance(v, str) and v.strip().lower() == "none" else v

    def applies_to(self, request_number: int) -> bool:
        return request_number % self.every == 0

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """`KIND[,every=N][,after=K][,status=C][,stall_s=S]`, as given to `--fault`."""
        kind, *options = (p.strip() for p in text.split(","))
        fields: dict[str, object] = {"kind": kind}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or not value:
                raise ValueError(f"expected KEY=VALUE, got {option!r} in {text!r}")
            fields[key.strip().replace("-", "_")] = value.strip()
        return cls.model_validate(fields)


class SimConfig(BaseModel):
    """What the simulated server serves and how slowly. Latencies are in seconds."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # nan/inf mean nothing here

    api: Personality = Field(
        default="openai",
        description="what the server is: openai (vLLM's completions and chat), anthropic "
        "(Messages API) or responses (OpenAI Responses API)",
    )
    api_key: str | None = Field(
        default=None,
        description="when set, requests must carry it (Authorization: Bearer, or x-api-key for "
        "anthropic)",
    )
    replay: list[Path] = Field(
        default_factory=list,
        description="transcripts (*.sse files or directories of them) to replay instead of "
        "generating; see latbench.sim.replay. Read when the server starts",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks any free port")
    model: str = "sim-model"
    max_model_len: int = Field(default=4096, ge=1)
    default_max_tokens: int = Field(default=128, ge=1)

    ttft: Dist = Field(default_factory=lambda: Dist(mean=0.05))
    itl: Dist = Field(default_factory=lambda: Dist(mean=0.01), description="time between events")
    tokens_per_event: int = Field(default=1, ge=1, description="> 1 mimics speculative decoding")
    reasoning_tokens: int = Field(
        default=0, ge=0, description="chat, anthropic, responses: part of max_tokens"
    )
    tool_call_tokens: int = Field(
        default=0,
        ge=0,
        description="chat, anthropic, responses: the last of max_tokens, after the answer, are "
        "one tool call (its name in the first event, then its JSON arguments)",
    )
    tool_steps: int = Field(
        default=1,
        ge=0,
        description="a request that offers tools gets a reply ending with a call of the first "
        "tool, unless this many tool results follow its last user message; then a text answer",
    )
    eos_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None

    # What a prompt costs; see `latbench.sim.engine` and `latbench.sim.prefix`.
    prefix_cache: bool = Field(
        default=True,
        description="cache prompt blocks as vLLM's automatic prefix caching does (on by "
        "default, as in vLLM); hits cost no prefill_per_token",
    )
    block_tokens: int = Field(default=16, ge=1, description="tokens per cached block (vLLM's 16)")
    prefix_cache_blocks: int = Field(
        default=32768, ge=1, description="blocks the prefix cache holds; the LRU is evicted"
    )
    prefill_per_token: float = Field(
        default=0.0, ge=0.0, description="TTFT added per prompt token not found in the cache, s"
    )
    itl_per_context_token: float = Field(
        default=0.0,
        ge=0.0,
        description="time added to each step per token of context (prompt and generated so far), s",
    )
    image_tokens: int = Field(
        default=0, ge=0, description="prompt tokens each image counts for (and caches as)"
    )
    ttft_per_image: float = Field(
        default=0.0,
        ge=0.0,
        description="TTFT added per image encoded (one the prefix cache does not hold), s",
    )

    # The load model; see `latbench.sim.engine` for the formula.
    max_batch: int | None = Field(default=None, ge=1, description="None: no limit, no queue")
    ttft_per_stream: float = Field(default=0.0, ge=0.0)
    itl_per_stream: float = Field(default=0.0, ge=0.0)

    rate_limit: float | None = Field(
        default=None,
        gt=0,
        description="requests/s admitted (a token bucket holding one second's worth); the rest "
        "get HTTP 429 with Retry-After, as a hosted API's rate limit answers",
    )
    faults: list[FaultSpec] = Field(default_factory=list)

    # A tracing server, as vLLM with --otlp-traces-endpoint; see `latbench.sim.spans`.
    otlp_traces_endpoint: str | None = Field(
        default=None,
        description="an OTLP/HTTP traces URL (ending /v1/traces): each request that finishes "
        "is exported there as vLLM's `llm_request` span, in OTLP JSON",
    )
    span_clock_offset_s: float = Field(
        default=0.0,
        description="added to the spans' wall-clock times: the skew of another host's clock, s",
    )
    span_drop: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of spans never sent (seeded draw)"
    )
    span_duplicate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of spans sent twice (seeded draw)"
    )
    span_delay_s: float = Field(
        default=0.2,
        ge=0.0,
        description="how long a finished span waits to be exported with others (vLLM's batch "
        "processor waits OTEL_BSP_SCHEDULE_DELAY, 5 s)",
    )
    truth_capacity: int = Field(default=200_000, ge=1, description="requests kept for /sim/truth")

    @field_validator("otlp_traces_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if self.default_max_tokens > self.max_model_len:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds "
                f"max_model_len ({self.max_model_len})"
            )
        return self
