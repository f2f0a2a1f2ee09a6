"""The run spec: target, workload, load profile and SLOs, validated in one place.

One module per section, as the YAML has them: `target` (server, API, timeouts, stream limits,
retries), `workload` (prompts and lengths), `load` (the load profile), `slo` (what a run is
judged by), put together in `run` (RunSpec, `load_spec`, `read_spec_file`); `fields` holds the
types they share (durations). Callers import the names below from `latbench.spec`; the
section modules hold the rest (limits, helpers) for the few callers that need them.
"""

from latbench.spec.fields import PositiveSeconds, Seconds
from latbench.spec.load import LoadSpec
from latbench.spec.run import RunSpec, ValiditySpec, load_spec, read_spec_file
from latbench.spec.slo import DEFAULT_LIMITS, DEFAULT_SLOS, METRICS, Slo, ValidityLimits, parse_slo
from latbench.spec.target import RetrySpec, StreamLimitsSpec, TargetSpec, TimeoutsSpec
from latbench.spec.workload import WorkloadSpec

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_SLOS",
    "METRICS",
    "LoadSpec",
    "PositiveSeconds",
    "RetrySpec",
    "RunSpec",
    "Seconds",
    "Slo",
    "StreamLimitsSpec",
    "TargetSpec",
    "TimeoutsSpec",
    "ValidityLimits",
    "ValiditySpec",
    "WorkloadSpec",
    "load_spec",
    "parse_slo",
    "read_spec_file",
]
