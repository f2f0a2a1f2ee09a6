"""The run spec: target, workload, load profile and SLOs, validated in one place.

The same schema is read from a YAML/JSON file, built from CLI flags, or (later) posted to the
service. Errors name the field and the allowed values (`SpecError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError
from latbench.sim import SimConfig
from latbench.sim.formats import Personality
from latbench.spec.slo import DEFAULT_SLOS, Slo, ValidityLimits, parse_slo
from latbench.workload import MAX_TOKENS

# Limits at the edge: a spec is a small document written by a person, so anything far larger or
# deeper is a mistake or an attack (a 392-byte YAML alias bomb expanded to 208 MB), refused before
# it can cost memory. docs/spec.md lists them.
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32  # mappings and lists inside one another, the top level being 1
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
MAX_SEED = 2**63  # exclusive: numpy's SeedSequence takes any int, but a seed must fit int64
MAX_CONCURRENCY = 65_536
MAX_RATE = 1e6
MAX_REQUESTS = 10**9
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

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_seconds(v: object) -> object:
    """`30`, `30s`, `500ms`, `2m`, `1h` -> seconds. Other types pass through to pydantic."""
    if isinstance(v, str):
        m = _DURATION.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a duration; write e.g. 30, 30s, 500ms, 2m or 1h")
        return float(m.group(1)) * _UNIT_S[m.group(2)]
    return v


Seconds = Annotated[float, BeforeValidator(parse_seconds), Field(ge=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0, allow_inf_nan=False)]
# Bounded: a timeout of 1e300 s overflowed the event loop's timer and lost its requests whole.
Timeout = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0, le=DAY_S)]
UpToADay = Annotated[float, BeforeValidator(parse_seconds), Field(ge=0, le=DAY_S)]
Span = Annotated[float, BeforeValidator(parse_seconds), Field(ge=0, le=WEEK_S)]


class _Model(BaseModel):
    # nan and inf are refused in every float field: no field means anything by them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TimeoutsSpec(_Model):
    """Per-request timeouts, each over 0 and at most a day."""

    connect: Timeout = 10.0
    first_token: Timeout = 60.0
    idle: Timeout = 30.0
    total: Timeout = 600.0


# The parser's caps by default (`target.stream_limits`): far above any real event, low enough
# that a hostile stream cannot make a worker hold more than a few MiB per request.
MAX_LINE_BYTES = 1 << 20
MAX_EVENT_BYTES = 4 << 20


class StreamLimitsSpec(_Model):
    """Caps on what one response may make the parser hold: a line (bytes before a line end) and
    an event (bytes before the blank line that ends it). A stream over a cap ends its request as
    `oversized_event`; memory stays bounded by the cap whatever the server sends."""

    max_line_bytes: int = Field(default=MAX_LINE_BYTES, ge=1024, le=1 << 30)
    max_event_bytes: int = Field(default=MAX_EVENT_BYTES, ge=1024, le=1 << 30)


class RetrySpec(_Model):
    """Opt-in retries of refusals for load (429, 529, 503 with Retry-After). A retried request
    keeps its first send as `t_sent`, so its latencies include every wait (docs/metrics.md)."""

    max_retries: int = Field(default=0, ge=0, le=100, description="0: never retry")
    backoff: Timeout = Field(
        default=1.0, description="first wait when the server gives no Retry-After; doubles"
    )
    max_wait: UpToADay = Field(
        default=60.0, description="longest wait accepted; a longer Retry-After ends the request"
    )


# API kind -> the simulator personality that serves it (see latbench.sim.formats).
SIM_API: dict[str, Personality] = {
    "chat": "openai",
    "completions": "openai",
    "anthropic": "anthropic",
    "responses": "responses",
}
# Hosted APIs reject vLLM's extra request fields.
NO_EXTENSIONS_HOSTS = ("openai.com", "anthropic.com")


class TargetSpec(_Model):
    base_url: str | None = Field(
        default=None,
        description="server root, e.g. http://127.0.0.1:8000; omit to use the built-in simulator",
    )
    api: Literal["chat", "completions", "anthropic", "responses"] = "chat"
    model: str | None = Field(
        default=None, description="auto-detected from /v1/models when omitted"
    )
    api_key_env: str | None = Field(default=None, description="name of an env var holding the key")
    api_key_file: Path | None = Field(default=None, description="file holding the key")
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True
    timeouts: TimeoutsSpec = Field(default_factory=TimeoutsSpec)
    stream_limits: StreamLimitsSpec = Field(default_factory=StreamLimitsSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    vllm_extensions: bool | None = Field(
        default=None,
        description="send ignore_eos, min_tokens and continuous_usage_stats; default: on, except "
        "for api.openai.com and api.anthropic.com, which reject unknown fields",
    )
    server_metrics: str = Field(
        default="auto",
        description="the server's Prometheus page (vLLM's), scraped before, during and after the "
        "run and reconciled with the client's figures: a URL, 'off', or 'auto' (the target's "
        "/metrics for chat and completions targets, used when it holds vLLM's metrics)",
    )

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.server_metrics not in ("auto", "off"):
            sm = urlsplit(self.server_metrics)
            if sm.scheme not in ("http", "https") or not sm.hostname:
                raise ValueError(
                    f"server_metrics {self.server_metrics!r}: give 'auto', 'off' or an http(s) "
                    "URL, e.g. http://127.0.0.1:8000/metrics"
                )
        if self.base_url is None:
            if self.vllm_extensions is None:
                self.vllm_extensions = True
            return self
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"base_url {self.base_url!r} is not an http(s) URL with a host, "
                "e.g. http://127.0.0.1:8000"
            )
        if parts.path.rstrip("/").endswith("/v1"):
            # Users often paste the OpenAI-style base; the API paths already carry /v1.
            self.base_url = self.base_url.rstrip("/")[: -len("/v1")]
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        if self.vllm_extensions is None:
            self.vllm_extensions = not (parts.hostname or "").endswith(NO_EXTENSIONS_HOSTS)
        return self


class WorkloadSpec(_Model):
    source: Literal["synthetic", "jsonl", "sharegpt"] = "synthetic"
    path: Path | None = Field(default=None, description="prompt file, for jsonl and sharegpt")
    input_tokens: Dist = Field(default_factory=lambda: Dist(mean=128))
    # None: from the file (jsonl max_tokens, sharegpt reply length); synthetic uses 128.
    output_tokens: Dist | None = None
    ignore_eos: bool = True
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="fields added to every request body; not those latbench sets "
        "(CONTROLLED_BODY_KEYS), at most 64 KiB as JSON",
    )
    seed: int = Field(default=0, ge=0, lt=MAX_SEED)

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
        if self.source != "synthetic" and self.path is None:
            raise ValueError(f"source {self.source!r} needs a path to the prompt file")
        if self.source == "synthetic" and self.path is not None:
            raise ValueError("path is only for source jsonl or sharegpt")
        if self.path is not None and "\x00" in str(self.path):
            raise ValueError("path holds a NUL character")
        return self


def check_token_dist(d: Dist, cap: float, whose: str) -> None:
    """A token-count distribution within `cap`: its mean, std and bounds (draws beyond the cap
    are clamped to it, see latbench.workload.item)."""
    for part in ("mean", "std", "min", "max"):
        v = getattr(d, part)
        if v is not None and v > cap:
            raise ValueError(f"{part} {v:g} is over {cap:.0f} tokens, {whose}")


class LoadSpec(_Model):
    mode: Literal["closed", "constant", "poisson"] = "closed"
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

    @model_validator(mode="after")
    def _check(self) -> LoadSpec:
        if self.mode == "closed":
            if self.rate is not None:
                raise ValueError("rate is for open-loop modes (constant, poisson), not closed")
            if self.concurrency is None:
                self.concurrency = 8
        elif self.rate is None:
            raise ValueError(f"mode {self.mode!r} needs a rate (requests per second)")
        if self.duration is None and self.requests is None:
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
        return self

    @property
    def open_loop(self) -> bool:
        return self.mode != "closed"


class ValiditySpec(_Model):
    """Limits above which the run is flagged client-bound (see docs/metrics.md)."""

    loop_lag_p99: UpToADay = ValidityLimits.loop_lag_p99_s
    queue_delay_p99: UpToADay = ValidityLimits.queue_delay_p99_s
    client_cpu: float = Field(default=ValidityLimits.client_cpu, gt=0, le=4096, description="cores")
    max_failed_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="a run whose measured requests failed in a larger share (cancelled ones, "
        "which latbench itself cut, aside) fails its verdict, with or without SLOs",
    )

    def limits(self) -> ValidityLimits:
        return ValidityLimits(
            self.loop_lag_p99, self.queue_delay_p99, self.client_cpu, self.max_failed_fraction
        )


def _parse_slos(v: object) -> object:
    if isinstance(v, list):
        return [parse_slo(x) if isinstance(x, str) else x for x in v]
    return v


class RunSpec(_Model):
    name: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="scenario label (a bounded Prometheus label value)",
    )
    target: TargetSpec = Field(default_factory=TargetSpec)
    sim: SimConfig = Field(default_factory=SimConfig, description="the built-in simulator's config")
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    load: LoadSpec = Field(default_factory=lambda: LoadSpec(duration=15.0, warmup=2.0))
    slos: Annotated[list[Slo], BeforeValidator(_parse_slos)] = Field(
        default_factory=lambda: list(DEFAULT_SLOS), max_length=64
    )
    validity: ValiditySpec = Field(default_factory=ValiditySpec)
    percentiles: list[Annotated[float, Field(gt=0, lt=100)]] = Field(
        default_factory=lambda: [50.0, 90.0, 95.0, 99.0, 99.9], max_length=32
    )
    output_dir: Path = Path("latbench-results")

    @model_validator(mode="after")
    def _sim_speaks_the_api(self) -> RunSpec:
        if self.target.base_url is not None:
            return self
        api = self.target.api
        wanted = SIM_API[api]
        if "api" not in self.sim.model_fields_set:
            self.sim.api = wanted
        elif self.sim.api != wanted:
            raise ValueError(
                f"sim.api {self.sim.api!r} cannot serve target.api {api!r}; "
                f"use {wanted!r} or leave sim.api out"
            )
        return self


def format_validation_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid run spec ({source}):"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r:.80})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def nesting_depth_over(data: object, limit: int = MAX_DEPTH) -> bool:
    """Whether mappings and lists nest deeper than `limit` (the top level is 1). Iterative, so a
    document nested thousands deep costs no recursion, and it stops at the first too-deep one."""
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def load_spec(data: dict[str, Any], source: str = "spec") -> RunSpec:
    """The validated spec, or SpecError naming each bad field. Every caller (a file, flags, the
    service) comes through here, so the depth limit holds for all of them."""
    if nesting_depth_over(data):
        raise SpecError(
            f"invalid run spec ({source}): nested more than {MAX_DEPTH} levels deep "
            "(mappings and lists inside one another)"
        )
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None
    except RecursionError:  # not reachable within the depth limit; kept as a SpecError anyway
        raise SpecError(f"invalid run spec ({source}): nested too deep") from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (`*name`, and so `<<: *name` merges), and with a depth
    limit. An alias repeats a node without repeating its text, so a few hundred bytes of nested
    aliases expand to gigabytes once built; a spec never needs one."""

    def __init__(self, stream: str | bytes | IO[str] | IO[bytes]) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"found the alias *{event.anchor}: YAML aliases and anchors are not allowed in "
                "a spec (write the value out)",
                event.start_mark,
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested more than {MAX_DEPTH} levels deep (mappings and lists inside one another)",
                self.peek_event().start_mark,
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str | bytes, what: str) -> Any:
    """A YAML or JSON document (YAML is a superset of JSON: one reader for both) under the
    spec limits: at most MAX_SPEC_BYTES, MAX_DEPTH deep, no aliases; else SpecError."""
    size = len(text.encode(errors="replace")) if isinstance(text, str) else len(text)
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{what} is over {MAX_SPEC_BYTES // 1024} KiB; a spec is a small document")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError(f"{what} is not valid YAML/JSON: {e}") from None
    except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError) as e:
        # PyYAML's constructors raise plain exceptions on some malformed scalars (`!!int` with
        # no digits: IndexError; an integer of over 4300 digits: ValueError).
        raise SpecError(f"{what} is not valid YAML/JSON: {type(e).__name__}: {e}") from None


def read_spec_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)  # a FIFO or /dev/zero has no size to check first
    except OSError as e:
        raise SpecError(f"cannot read spec file {p}: {e.strerror}") from None
    except ValueError as e:  # a NUL in the path
        raise SpecError(f"cannot read spec file {p!s:.200}: {e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(
            f"spec file {p} is over {MAX_SPEC_BYTES // 1024} KiB; a spec is a small document"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"spec file {p} is not UTF-8 text: {e}") from None
    data = load_yaml(text, f"spec file {p}")
    if not isinstance(data, dict):
        raise SpecError(f"spec file {p} must hold a mapping at the top level")
    return data
