"""The run spec: target, workload, load profile and SLOs, validated in one place.

The same schema is read from a YAML/JSON file, built from CLI flags, or (later) posted to the
service. Errors name the field and the allowed values (`SpecError`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from latbench._dist import Dist
from latbench._errors import SpecError
from latbench._retry import RetryPolicy
from latbench._summary import DEFAULT_SLOS, Slo, ValidityLimits, parse_slo
from latbench.sim import SimConfig
from latbench.sim._formats import Personality

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


Seconds = Annotated[float, BeforeValidator(parse_seconds), Field(ge=0)]
PositiveSeconds = Annotated[float, BeforeValidator(parse_seconds), Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeoutsSpec(_Model):
    connect: PositiveSeconds = 10.0
    first_token: PositiveSeconds = 60.0
    idle: PositiveSeconds = 30.0
    total: PositiveSeconds = 600.0


class StreamLimitsSpec(_Model):
    """Caps on what one response may make the parser hold: a line (bytes before a line end) and
    an event (bytes before the blank line that ends it). A stream over a cap ends its request as
    `oversized_event`; memory stays bounded by the cap whatever the server sends."""

    max_line_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    max_event_bytes: int = Field(default=4 << 20, ge=1024, le=1 << 30)


class RetrySpec(_Model):
    """Opt-in retries of refusals for load (429, 529, 503 with Retry-After). A retried request
    keeps its first send as `t_sent`, so its latencies include every wait (docs/metrics.md)."""

    max_retries: int = Field(default=0, ge=0, le=100, description="0: never retry")
    backoff: PositiveSeconds = Field(
        default=1.0, description="first wait when the server gives no Retry-After; doubles"
    )
    max_wait: Seconds = Field(
        default=60.0, description="longest wait accepted; a longer Retry-After ends the request"
    )

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.backoff, self.max_wait)


# API kind -> the simulator personality that serves it (see latbench.sim._formats).
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
    extra_body: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> WorkloadSpec:
        if self.source != "synthetic" and self.path is None:
            raise ValueError(f"source {self.source!r} needs a path to the prompt file")
        if self.source == "synthetic" and self.path is not None:
            raise ValueError("path is only for source jsonl or sharegpt")
        return self


class LoadSpec(_Model):
    mode: Literal["closed", "constant", "poisson"] = "closed"
    concurrency: int | None = Field(
        default=None, ge=1, description="closed: users (default 8); open loop: optional cap"
    )
    rate: float | None = Field(default=None, gt=0, description="open loop: requests per second")
    burstiness: float = Field(default=1.0, gt=0, description="poisson: gamma shape; 1 = Poisson")
    duration: Seconds | None = None
    requests: int | None = Field(default=None, ge=1)
    warmup: Seconds = 0.0
    cooldown: Seconds = 0.0
    warmup_requests: int = Field(default=0, ge=0)
    cooldown_requests: int = Field(default=0, ge=0)
    workers: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="sending processes, one event loop each (default: docs/performance.md)",
    )
    overtime: Seconds = Field(
        default=60.0,
        description="with a duration: how long requests still in flight when it ends may go on; "
        "then they are cancelled and recorded as such",
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

    loop_lag_p99: Seconds = ValidityLimits.loop_lag_p99_s
    queue_delay_p99: Seconds = ValidityLimits.queue_delay_p99_s
    client_cpu: float = Field(default=ValidityLimits.client_cpu, gt=0, description="cores")
    max_failed_fraction: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="a run whose measured requests failed in a larger share (cancelled ones, "
        "which latbench itself cut, aside) fails its verdict, with or without SLOs",
    )

    def limits(self) -> ValidityLimits:
        return ValidityLimits(self.loop_lag_p99, self.queue_delay_p99, self.client_cpu)


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
        default_factory=lambda: list(DEFAULT_SLOS)
    )
    validity: ValiditySpec = Field(default_factory=ValiditySpec)
    percentiles: list[Annotated[float, Field(gt=0, lt=100)]] = Field(
        default_factory=lambda: [50.0, 90.0, 95.0, 99.0, 99.9]
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
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_spec(data: dict[str, Any], source: str = "spec") -> RunSpec:
    try:
        return RunSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None


def read_spec_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecError(f"cannot read spec file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON: one reader for both
    except yaml.YAMLError as e:
        raise SpecError(f"spec file {p} is not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec file {p} must hold a mapping at the top level")
    return data
