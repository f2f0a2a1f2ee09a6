"""The whole run spec: its sections put together, checked as one (`load_spec`), and read from
a file (`read_spec_file`).

The same schema is read from a YAML/JSON file, built from CLI flags, or posted to the service.
Errors name the field and the allowed values (`SpecError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from latbench.shared.errors import SpecError
from latbench.shared.yamlfile import MAX_BYTES, MAX_DEPTH, load_yaml
from latbench.sim.config import SimConfig
from latbench.spec.fields import StrictModel, UpToADay
from latbench.spec.load import LoadSpec
from latbench.spec.slo import DEFAULT_SLOS, Slo, ValidityLimits, parse_slo
from latbench.spec.target import SIM_API, TargetSpec
from latbench.spec.workload import WorkloadSpec


class ValiditySpec(StrictModel):
    """How the run's measurement is judged (see docs/metrics.md, "Validity of the measurement"):
    client-bound when the measured error bound of TTFT or ITL p99 exceeds its tolerance.
    `loop_lag_p99` and `client_cpu` judge only a run without a bound (no kernel stamps)."""

    ttft_tolerance: UpToADay = ValidityLimits.ttft_tolerance_s
    itl_tolerance: UpToADay = ValidityLimits.itl_tolerance_s
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
            loop_lag_p99_s=self.loop_lag_p99,
            queue_delay_p99_s=self.queue_delay_p99,
            client_cpu=self.client_cpu,
            max_failed_fraction=self.max_failed_fraction,
            ttft_tolerance_s=self.ttft_tolerance,
            itl_tolerance_s=self.itl_tolerance,
        )


def _parse_slos(v: object) -> object:
    if isinstance(v, list):
        return [parse_slo(x) if isinstance(x, str) else x for x in v]
    return v


class RunSpec(StrictModel):
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
    metadata: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="free-form notes kept with the run (vllm bench serve's --metadata)",
    )

    @model_validator(mode="after")
    def _tools_need_chat(self) -> RunSpec:
        if self.workload.tools is not None and self.target.api == "completions":
            raise ValueError(
                "workload.tools: target.api 'completions' sends one prompt string, which "
                "carries no tool definitions; use chat, anthropic or responses"
            )
        if self.workload.tools is not None and "tools" in self.workload.extra_body:
            raise ValueError(
                "workload.extra_body: 'tools' would replace the definitions workload.tools "
                "sends; give them in one place (workload.tools.path takes a JSON file of them)"
            )
        return self

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

    @model_validator(mode="after")
    def _trace_both_ways(self) -> RunSpec:
        # A trace's instants are its load, and its rows its requests: neither without the other.
        if (self.load.mode == "trace") != (self.workload.source == "trace"):
            raise ValueError(
                "load.mode 'trace' and workload.source 'trace' go together: a trace replay "
                "sends its rows at their own instants"
            )
        return self

    @model_validator(mode="after")
    def _images_need_chat(self) -> RunSpec:
        if self.workload.images is not None and self.target.api == "completions":
            raise ValueError(
                "workload.images: target.api 'completions' sends one prompt string, which "
                "carries no images; use chat, anthropic or responses"
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


def read_spec_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # a FIFO or /dev/zero has no size to check first
    except OSError as e:
        raise SpecError(f"cannot read spec file {p}: {e.strerror}") from None
    except ValueError as e:  # a NUL in the path
        raise SpecError(f"cannot read spec file {p!s:.200}: {e}") from None
    if len(raw) > MAX_BYTES:
        raise SpecError(
            f"spec file {p} is over {MAX_BYTES // 1024} KiB; a spec is a small document"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"spec file {p} is not UTF-8 text: {e}") from None
    data = load_yaml(text, f"spec file {p}")
    if not isinstance(data, dict):
        raise SpecError(f"spec file {p} must hold a mapping at the top level")
    return data
