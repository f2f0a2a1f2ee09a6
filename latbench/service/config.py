"""The service's configuration (`latbench serve --config service.yaml`): one pydantic model.

It holds what API callers cannot choose: the catalogue of targets (URL, API kind, model and where
their keys come from), the bearer token's source, per-run caps, schedules, retention, where runs
are stored, and whether the service is a coordinator of agents (`agents`: long-lived
`latbench agent`s in other places that its runs and per-location probes send load from).
deploy/service.example.yaml documents every field.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from latbench.agents.protocol import DEFAULT_PORT, TOKEN_ENV, read_token
from latbench.agents.protocol import parse_listen as parse_agent_listen
from latbench.exporter import OtlpConfig, OtlpError, otlp_config, parse_listen
from latbench.exporter.otlp_config import parse_endpoint, require_binding
from latbench.exporter.series import MAX_LOCATIONS
from latbench.records.record import location_problem
from latbench.shared.errors import SpecError
from latbench.shared.secrets import read_secret_file
from latbench.shared.yamlfile import load_yaml
from latbench.sim.config import SimConfig
from latbench.spec import PositiveSeconds, Seconds, TargetSpec, load_spec
from latbench.workload import MAX_TOKENS

# Names end up as Prometheus label values and in URLs: short, and from a small alphabet.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME)]
MIN_TOKEN_CHARS = 16
DAY_S = 86_400.0

# A scheduled probe unless its `spec` says otherwise: one user, a handful of requests, so the
# 100 ms SLO is sampled all day without loading the target.
DEFAULT_PROBE: dict[str, Any] = {"load": {"concurrency": 1, "requests": 10, "warmup_requests": 1}}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_location(value: object) -> str:
    """An agent location as a config names it (the label agents register with); ValueError."""
    problem = location_problem(value)
    if problem is not None:
        raise ValueError(f"location {value!r:.80} {problem} (what agents give as --location)")
    assert isinstance(value, str)  # location_problem found it a label
    return value


Location = Annotated[str, BeforeValidator(check_location)]


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        # The URL is shown in results and logs; keys belong in api_key_env/api_key_file.
        raise ValueError("base_url must not hold credentials; use api_key_env or api_key_file")
    normal = TargetSpec(base_url=url).base_url  # a trailing /v1 dropped, as for runs
    assert normal is not None
    return normal


class TargetEntry(TargetSpec):
    """One catalogue target: a run spec's `target` section (URL, API kind, model, where the key
    comes from, headers, TLS, timeouts, retries), plus how many runs it takes at once. Give
    `base_url`, or `builtin_sim` for a simulator the service runs in a child process (a demo, or
    a smoke test of a deployment)."""

    builtin_sim: SimConfig | None = None
    max_concurrent_runs: int = Field(
        default=1, ge=1, description="runs against this target at once; more wait in its queue"
    )
    location_urls: dict[Location, str] = Field(
        default_factory=dict,
        description="the target's base URL as agents of a location reach it (a regional "
        "endpoint, a public address), where it is not base_url; the service's own preflight "
        "uses it too, so the service must reach it as well",
    )

    @field_validator("location_urls")
    @classmethod
    def _location_urls(cls, v: dict[str, str]) -> dict[str, str]:
        return {loc: _base_url(url) for loc, url in v.items()}

    @model_validator(mode="after")
    def _one_server(self) -> TargetEntry:
        if (self.base_url is None) == (self.builtin_sim is None):
            raise ValueError("give exactly one of base_url and builtin_sim")
        if self.base_url is not None:
            _base_url(self.base_url)
        return self

    def target_spec(self) -> dict[str, Any]:
        """As a run spec's `target` section (without the base URL, which the service knows)."""
        return self.model_dump(
            mode="json",
            exclude={"builtin_sim", "max_concurrent_runs", "base_url", "location_urls"},
        )


class AuthConfig(_Model):
    """Where the bearer token for mutating endpoints comes from: a file (a mounted secret) if
    given, else an environment variable."""

    token_env: str = "LATBENCH_TOKEN"
    token_file: Path | None = None

    def read_token(self) -> str:
        if self.token_file is not None:
            token = read_secret_file(self.token_file, "auth.token_file")
            where = f"auth.token_file {self.token_file}"
        else:
            token = os.environ.get(self.token_env, "").strip()
            where = f"environment variable {self.token_env} (auth.token_env)"
        if not token:
            raise SpecError(
                f"no API token: set {where}; mutating endpoints need one, and the service does "
                "not run without it"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise SpecError(
                f"the API token from {where} has {len(token)} characters; use at least "
                f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)"
            )
        return token


class AgentsConfig(_Model):
    """The service as a coordinator (docs/distributed.md, "Probes from many places"): it listens
    for `latbench agent`s on `listen` (a WebSocket at /v1/agents, apart from the API) for its
    whole life; they register with their location and stay, idle between runs. A submission
    with `agents: N` (and `location`) or a schedule with `locations` sends its load from them."""

    listen: str = Field(
        default=f"0.0.0.0:{DEFAULT_PORT}", description="HOST:PORT agents connect to"
    )
    token_file: Path | None = Field(
        default=None, description="the agents' shared token (a mounted secret); else token_env"
    )
    token_env: str = TOKEN_ENV
    max_clock_uncertainty: PositiveSeconds = Field(
        default=0.005,
        description="an agent whose clock offset is known less well than this is flagged",
    )
    wait: PositiveSeconds = Field(
        default=30.0,
        description="how long a run waits for its agents to be free (or to connect again) "
        "before it fails",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_agent_listen(v)  # a ValueError naming it
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_agent_listen(self.listen)

    def read_token(self) -> str:
        """The agents' token (SpecError naming where it should have come from)."""
        return read_token(self.token_file, "agents.token_file", self.token_env)


class Limits(_Model):
    """Per-run caps, checked on every submission; a spec over a cap is refused (400)."""

    max_concurrency: int = Field(default=64, ge=1, description="users, or the open-loop cap")
    max_rate: float = Field(default=100.0, gt=0, description="open loop: requests per second")
    max_duration: PositiveSeconds = Field(default=600.0, description="a run's load duration")
    max_requests: int = Field(default=100_000, ge=1)
    max_workers: int = Field(default=4, ge=1, description="client worker processes of a run")
    max_input_tokens: int = Field(
        default=131_072,
        ge=1,
        le=MAX_TOKENS,
        description="a request's prompt length: workload.input_tokens' mean, std and bounds; an "
        "unbounded distribution is clamped to it",
    )
    max_output_tokens: int = Field(
        default=32_768,
        ge=1,
        le=MAX_TOKENS,
        description="a request's max_tokens, as max_input_tokens for workload.output_tokens",
    )
    max_agents: int = Field(default=16, ge=1, description="agents one run may ask for")
    max_queued_runs: int = Field(default=100, ge=1, description="beyond it, submissions get 429")
    max_running_runs: int = Field(default=2, ge=1, description="runs at once, all targets")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)


class Retention(_Model):
    """Finished runs older than `max_age`, or beyond the newest `max_runs`, are deleted (their
    metadata and records). Checked at start and after each run."""

    max_age: Seconds | None = 30 * DAY_S
    max_runs: int | None = Field(default=10_000, ge=1)


class ScheduleConfig(_Model):
    """A probe that runs on its own: every `every` seconds, or on a `cron` line (UTC), each
    firing delayed by a random 0..`jitter` so a fleet of services does not probe in step."""

    name: Name
    target: Name
    every: PositiveSeconds | None = None
    cron: str | None = None
    jitter: Seconds = 0.0
    spec: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_PROBE),
        description="a run spec without target; default: 1 user, 10 requests",
    )
    locations: list[Location] | None = Field(
        default=None,
        description="agent locations: each firing runs one probe from each, on that location's "
        "agents (needs the agents section)",
    )
    agents: int | None = Field(
        default=None,
        ge=1,
        description="agents each probe runs on (default 1 with locations; none: the service's "
        "own workers)",
    )

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every and cron")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"cron {self.cron!r} is not a cron line, e.g. '*/5 * * * *'")
        if self.locations is not None:
            if not self.locations:
                raise ValueError("locations: name one or more, or leave it out")
            if len(set(self.locations)) != len(self.locations):
                raise ValueError("locations: a location is named twice")
            if len(self.locations) > MAX_LOCATIONS:
                raise ValueError(
                    f"locations: {len(self.locations)} named; the location label keeps at "
                    f"most {MAX_LOCATIONS}"
                )
        for key in ("agents", "location", "locations"):
            if key in self.spec:
                raise ValueError(f"spec.{key}: give it as the schedule's own field")
        return self

    def placements(self) -> list[tuple[int | None, str | None]]:
        """(agents, location) of each probe a firing runs: one per location, or one."""
        if self.locations is not None:
            return [(self.agents or 1, loc) for loc in self.locations]
        return [(self.agents, None)]


class OtlpMetricsConfig(_Model):
    """The service's series sent over OTLP/HTTP too, beside its /metrics (docs/otel.md): the same
    `LatbenchMetrics`, every `interval` for the service's life, under the GenAI
    semantic-convention names. Needs the `otel` extra."""

    endpoint: str = Field(description="the collector, e.g. http://otel-collector:4318")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="sent with every export; a value @PATH is read from a file",
    )
    interval: PositiveSeconds = Field(default=30.0, description="seconds between exports")
    timeout: PositiveSeconds = Field(default=5.0, description="seconds one export may take")
    temporality: Literal["cumulative", "delta"] | None = Field(
        default=None, description="default cumulative (or the OTEL_ environment's preference)"
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        require_binding()  # an OtlpError is a ValueError: pydantic names the field
        return parse_endpoint(v)

    def build(self) -> OtlpConfig:
        """The exporter's settings, header files read (at start-up, so a missing one stops it)."""
        items = [f"{k}={v}" for k, v in self.headers.items()]
        try:
            return otlp_config(
                self.endpoint,
                items,
                interval_s=self.interval,
                timeout_s=self.timeout,
                temporality=self.temporality,
            )
        except OtlpError as e:
            raise SpecError(f"otlp_metrics: {e}") from None


class ServiceConfig(_Model):
    listen: str = Field(default="127.0.0.1:8080", description="HOST:PORT; port 0 picks one")
    data_dir: Path = Path("latbench-data")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    targets: dict[Name, TargetEntry] = Field(
        default_factory=lambda: {"sim": TargetEntry(builtin_sim=SimConfig())}
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="spec fields every submission gets unless it sets them (slos, validity, ...)",
    )
    limits: Limits = Field(default_factory=Limits)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    retention: Retention = Field(default_factory=Retention)
    shutdown_grace: Seconds = Field(
        default=30.0, description="on SIGTERM, how long running runs may finish before cancelled"
    )
    metric_scenarios: list[Name] = Field(
        default_factory=list,
        description="spec names that API runs may export as the scenario label; others export "
        "as 'adhoc', so callers cannot grow the number of series",
    )
    otlp_metrics: OtlpMetricsConfig | None = None
    agents: AgentsConfig | None = Field(
        default=None, description="listen for latbench agents and run on them (probes per place)"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("target", "output_dir", "sim"):
            if key in v:
                raise ValueError(f"{key} cannot have a default: the service sets it")
        return v

    @model_validator(mode="after")
    def _check(self) -> ServiceConfig:
        # The defaults fail at start, naming the field, not at the first submission. They are
        # partial: stop conditions come from the caps, as at admission.
        data = copy.deepcopy(self.defaults)
        load = data.setdefault("load", {})
        if isinstance(load, dict):
            load.setdefault("duration", self.limits.max_duration)
            load.setdefault("requests", self.limits.max_requests)
        try:
            load_spec(data, source="defaults")
        except SpecError as e:
            raise ValueError(str(e)) from None
        names = [s.name for s in self.schedules]
        for s in self.schedules:
            if s.target not in self.targets:
                raise ValueError(
                    f"schedule {s.name!r}: target {s.target!r} is not in targets "
                    f"({', '.join(self.targets) or 'none'})"
                )
            if names.count(s.name) > 1:
                raise ValueError(f"schedule name {s.name!r} is used twice")
            if (s.locations is not None or s.agents is not None) and self.agents is None:
                raise ValueError(
                    f"schedule {s.name!r} runs on agents (locations, agents): give the service "
                    "an agents section (listen, token_file) for them to register with"
                )
        agent_port = None if self.agents is None else self.agents.host_port[1]
        if agent_port == self.host_port[1] != 0:
            assert self.agents is not None
            raise ValueError(
                f"agents.listen {self.agents.listen}: the API listens on that port; give "
                f"the agents their own (the default is {DEFAULT_PORT})"
            )
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"


def config_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid service config ({source}):"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> ServiceConfig:
    """The config in `path` (YAML or JSON), with top-level `overrides` (flags) applied; `path`
    None: the defaults (one builtin simulator target, `sim`)."""
    data: Any = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError(f"cannot read config {path}: {e.strerror}") from None
        # The spec's reader and limits: no YAML aliases, at most 1 MiB, 32 levels deep.
        data = load_yaml(text, f"config {path}") or {}
        if not isinstance(data, dict):
            raise SpecError(f"config {path} must hold a mapping at the top level")
    data = {**data, **(overrides or {})}
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as e:
        raise SpecError(config_error(e, source)) from None
