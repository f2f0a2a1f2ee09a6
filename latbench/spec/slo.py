"""What a run is judged by: the metric names METRICS.md defines, SLOs over them (and their
`ttft:p99<=100ms` form), and the limits that make a run client-bound. Part of the spec, read
by the summary: a spec names what to judge, the summary computes it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The metrics METRICS.md defines, by the names specs, summaries and reports use.
METRICS: tuple[str, ...] = (
    "ttft",
    "ttfo",
    "itl",
    "itl_per_token",
    "tpot",
    "e2e",
    "queue_delay",
    "ttft_from_schedule",
    "e2e_from_schedule",
)


@dataclass(frozen=True)
class ValidityLimits:
    """What a run is judged by (METRICS.md, "Validity of the measurement").

    The verdict is the measured error bound against a tolerance: a run is client-bound when its
    TTFT p99 may be off by more than `ttft_tolerance_s`, or its ITL p99 by more than
    `itl_tolerance_s` (`summary.bound`). 5 ms is 5% of the default 100 ms SLO target; 1 ms is
    10% of a 10 ms gap, the finest ITL the simulator's default plays. An open-loop run that kept
    its schedule late (`queue_delay_p99_s`) or not at all is client-bound too: that is measured.
    Loop lag and client CPU (`loop_lag_p99_s`, `client_cpu`) only judge a run whose bound is
    unknown (no kernel stamps), as proxies; otherwise they are diagnostics. A spec can change
    them all (a noisy shared CI runner, say); the limits used are stored with every summary."""

    loop_lag_p99_s: float = 0.001  # proxy, only without a bound
    queue_delay_p99_s: float = 0.010  # open loop only
    client_cpu: float = 0.9  # proxy, only without a bound: busiest worker, share of one core
    # Not a client-bound limit but the run's other verdict: the share of measured requests that
    # may fail (cancelled ones aside; overtime cuts count) before the run fails, with or without
    # SLOs (spec: validity.max_failed_fraction). Kept here so every summary stores the limit it
    # was judged by.
    max_failed_fraction: float = 0.01
    ttft_tolerance_s: float = 0.005
    itl_tolerance_s: float = 0.001


DEFAULT_LIMITS = ValidityLimits()


# --------------------------------------------------------------------------------------------
# SLOs


@dataclass(frozen=True)
class Slo:
    """`metric`'s `percentile` must be at or under `threshold_s` seconds.

    Invalid values raise ValueError, so that the spec's pydantic model reports them under the
    field they came from (`slos.0: ...`) and turns them into a SpecError there.
    """

    metric: str
    percentile: float = 99.0
    threshold_s: float = 0.1

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown SLO metric {self.metric!r}; allowed: {', '.join(METRICS)}")
        if not 0 <= self.percentile <= 100:
            raise ValueError(f"SLO percentile {self.percentile:g} is outside 0..100")
        if not (math.isfinite(self.threshold_s) and self.threshold_s >= 0):
            raise ValueError(f"SLO threshold {self.threshold_s!r} s is not a duration of 0 or more")

    def __str__(self) -> str:
        return f"{self.metric}:p{self.percentile:g}<={format_duration(self.threshold_s)}"


DEFAULT_SLOS: tuple[Slo, ...] = (Slo("ttft"), Slo("itl"), Slo("tpot"))

_SLO_RE = re.compile(r"^(?P<metric>[^:<=]*?)\s*(?::\s*(?P<pct>[^<=]*?))?\s*<=\s*(?P<value>.*?)$")
_PCT_RE = re.compile(r"^p(?P<num>\d+(?:\.\d*)?|\.\d+)$")
_VALUE_RE = re.compile(r"^(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)\s*(?P<unit>s|ms|us|µs)?$")
# Divide rather than multiply by a fraction: "100ms" / 1000 rounds once, to exactly 0.1.
_UNIT_DIVISOR = {None: 1.0, "s": 1.0, "ms": 1e3, "us": 1e6, "µs": 1e6}
_SLO_FORM = "METRIC[:pNN]<=THRESHOLD, for example ttft:p99<=100ms or itl<=0.1"


def parse_slo(text: str) -> Slo:
    """Parse `ttft:p99<=100ms`, `itl<=0.1` (seconds, p99), `e2e:p50<=2s`, `tpot:p90<=80ms`."""
    m = _SLO_RE.match(text.strip().lower())
    if m is None:
        raise ValueError(f"SLO {text!r}: expected {_SLO_FORM}")
    metric, pct, value = m["metric"], m["pct"], m["value"]
    if metric not in METRICS:
        raise ValueError(f"SLO {text!r}: unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    percentile = 99.0
    if pct is not None:
        pm = _PCT_RE.match(pct)
        if pm is None or not 0 <= float(pm["num"]) <= 100:
            raise ValueError(
                f"SLO {text!r}: percentile {pct!r} is not pNN with NN in 0..100 "
                "(for example p50, p99, p99.9)"
            )
        percentile = float(pm["num"])
    vm = _VALUE_RE.match(value)
    if vm is None:
        raise ValueError(
            f"SLO {text!r}: threshold {value!r} is not a duration; "
            "use a number with unit s, ms or us (a bare number is seconds)"
        )
    return Slo(metric, percentile, float(vm["num"]) / _UNIT_DIVISOR[vm["unit"]])


def format_duration(seconds: float) -> str:
    """Short form used in SLO strings: `100ms`, `2s`."""
    return f"{seconds * 1e3:g}ms" if seconds < 1 else f"{seconds:g}s"
