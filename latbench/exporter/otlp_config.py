"""Where and how latbench's metrics go over OTLP/HTTP: the collector's URL, headers, interval,
timeout and temporality, checked once where the user gave them (`--otlp-*` flags, the service's
`otlp_metrics`), so a mistake is a usage error naming the flag rather than a failed export later.

Kept apart from `exporter.otlp`, which needs the protobuf binding (the `otel` extra): parsing the
settings does not, and `require_binding` turns the binding's absence into the same kind of error.
The OTEL_EXPORTER_OTLP_* variables that the OpenTelemetry exporters read are honoured for headers
and temporality (the OTLP exporter specification, protocol/exporter.md), under the flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from latbench.shared.secrets import read_secret_file

Temporality = Literal["cumulative", "delta"]
TEMPORALITIES: tuple[Temporality, ...] = ("cumulative", "delta")
DEFAULT_INTERVAL_S = 10.0
# Under OTLP's own default (10 s): the final export happens while the user waits for the prompt.
DEFAULT_TIMEOUT_S = 5.0
INSTALL_HINT = "pip install 'latbench[otel]'"

HEADERS_ENV = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS")
TEMPORALITY_ENV = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"


class OtlpError(ValueError):
    """OTLP export cannot be set up (a bad URL, header or setting): the caller names the flag."""


def require_binding() -> None:
    """The protobuf binding `exporter.otlp` writes with, or an OtlpError saying how to get it."""
    try:
        import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2  # noqa: F401
    except ImportError as e:
        raise OtlpError(
            f"needs the OpenTelemetry protobuf binding ({e.name} is missing): {INSTALL_HINT}"
        ) from None


def parse_endpoint(url: str) -> str:
    """The collector's metrics URL. OTLP/HTTP's metrics path is /v1/metrics; a bare base URL
    (`http://collector:4318`) gets it appended, as the SDKs do for OTEL_EXPORTER_OTLP_ENDPOINT."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OtlpError(f"{url!r}: expected an http(s) URL, e.g. http://127.0.0.1:4318/v1/metrics")
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number or out of range
    except ValueError as e:
        raise OtlpError(f"{url!r}: {e}") from None
    if parts.path in ("", "/"):
        return url.rstrip("/") + "/v1/metrics"
    return url


def parse_headers(items: Sequence[str]) -> dict[str, str]:
    """`NAME=VALUE` pairs (the CLI's `--otlp-header`); `NAME=@PATH` reads the value from a file,
    so a token need not sit in the process list or the shell's history."""
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise OtlpError(f"--otlp-header {item!r}: write it as NAME=VALUE or NAME=@FILE")
        value = value.strip()
        if value.startswith("@"):
            value = read_secret_file(Path(value[1:]), f"--otlp-header {name}")
        headers[name] = value
    return headers


def env_headers(environ: Mapping[str, str]) -> dict[str, str]:
    """Headers from OTEL_EXPORTER_OTLP_HEADERS, then OTEL_EXPORTER_OTLP_METRICS_HEADERS over
    them: `name=value` pairs split by commas, values percent-decoded, as the exporter spec says."""
    headers: dict[str, str] = {}
    for var in HEADERS_ENV:
        for pair in environ.get(var, "").split(","):
            if not pair.strip():
                continue
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise OtlpError(f"{var}: {pair.strip()!r} is not name=value")
            headers[unquote(name.strip())] = unquote(value.strip())
    return headers


def env_temporality(environ: Mapping[str, str]) -> Temporality:
    """OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, cumulative when unset. `lowmemory`
    asks delta of synchronous counters and histograms, which is every sum latbench sends."""
    value = environ.get(TEMPORALITY_ENV, "").strip().lower()
    if value in ("", "cumulative"):
        return "cumulative"
    if value in ("delta", "lowmemory"):
        return "delta"
    raise OtlpError(f"{TEMPORALITY_ENV}={value!r}: expected cumulative, delta or lowmemory")


@dataclass(frozen=True)
class OtlpConfig:
    """One collector: where, with which headers, how often, how long an export may take."""

    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)
    interval_s: float = DEFAULT_INTERVAL_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    temporality: Temporality = "cumulative"


def otlp_config(
    url: str,
    header_items: Sequence[str] = (),
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    temporality: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> OtlpConfig:
    """The settings checked, the environment's OTEL_ variables under the given ones, and the
    binding present; anything wrong is an OtlpError saying what."""
    env = os.environ if environ is None else environ
    endpoint = parse_endpoint(url)
    if not interval_s > 0:
        raise OtlpError(f"export interval {interval_s:g}: give more than 0 seconds")
    if not timeout_s > 0:
        raise OtlpError(f"export timeout {timeout_s:g}: give more than 0 seconds")
    if temporality is None:
        chosen = env_temporality(env)
    elif temporality in TEMPORALITIES:
        chosen = "delta" if temporality == "delta" else "cumulative"
    else:
        raise OtlpError(f"temporality {temporality!r}: expected cumulative or delta")
    headers = {**env_headers(env), **parse_headers(header_items)}
    require_binding()
    return OtlpConfig(endpoint, headers, interval_s, timeout_s, chosen)
