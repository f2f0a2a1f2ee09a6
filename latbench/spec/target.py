"""The spec's `target` section: which server, which API, and how each request may fail
(timeouts, stream limits, retries of refusals).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from latbench.sim.formats import Personality
from latbench.spec.fields import StrictModel, Timeout, UpToADay


class TimeoutsSpec(StrictModel):
    """Per-request timeouts, each over 0 and at most a day."""

    connect: Timeout = 10.0
    first_token: Timeout = 60.0
    idle: Timeout = 30.0
    total: Timeout = 600.0


# The parser's caps by default (`target.stream_limits`): far above any real event, low enough
# that a hostile stream cannot make a worker hold more than a few MiB per request.
MAX_LINE_BYTES = 1 << 20
MAX_EVENT_BYTES = 4 << 20


class StreamLimitsSpec(StrictModel):
    """Caps on what one response may make the parser hold: a line (bytes before a line end) and
    an event (bytes before the blank line that ends it). A stream over a cap ends its request as
    `oversized_event`; memory stays bounded by the cap whatever the server sends."""

    max_line_bytes: int = Field(default=MAX_LINE_BYTES, ge=1024, le=1 << 30)
    max_event_bytes: int = Field(default=MAX_EVENT_BYTES, ge=1024, le=1 << 30)


class RetrySpec(StrictModel):
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
# vLLM's BatchSpanProcessor sends its spans every OTEL_BSP_SCHEDULE_DELAY (5 s by default), so
# the last requests' spans can come up to 5 s after them; 8 s covers that and the export itself.
DEFAULT_SPAN_WAIT_S = 8.0


def parse_host_port(text: str) -> tuple[str, int]:
    """`4318` -> ('127.0.0.1', 4318); `0.0.0.0:4318`; `[::]:4318` -> ('::', 4318). Port 0: a
    free one."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"{text!r} is not HOST:PORT with a port in 0..65535, e.g. 127.0.0.1:4318 or "
            "0.0.0.0:4318"
        )
    return host, int(port)


# Hosted APIs reject vLLM's extra request fields.
NO_EXTENSIONS_HOSTS = ("openai.com", "anthropic.com")


class TargetSpec(StrictModel):
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
        description="the server's Prometheus page (vLLM's, SGLang's, TGI's, TensorRT-LLM's or "
        "Dynamo's), scraped before, during and after the run and reconciled with the client's "
        "figures: a URL, 'off', or 'auto' (the target's /metrics for chat and completions "
        "targets, used when it holds one of those servers' metrics; docs/servers.md)",
    )
    gpu_metrics: str = Field(
        default="auto",
        description="GPU utilisation, memory, power and energy sampled during the run, for "
        "energy per output token: 'auto' (NVML on this host when it initialises and the target "
        "is on this host, else nothing), 'nvml' (NVML whatever the target, said when it "
        "cannot), 'off', or a DCGM exporter's or node "
        "exporter's page URL, e.g. http://gpu-host:9400/metrics",
    )

    otlp_receiver: str | None = Field(
        default=None,
        description="HOST:PORT where latbench receives the server's per-request OTLP/HTTP spans "
        "(POST /v1/traces; vLLM's --otlp-traces-endpoint) and joins each with its request; "
        "on by default with --launch-vllm, 'off' to turn it off there (docs/vllm.md)",
    )
    span_wait: UpToADay = Field(
        default=DEFAULT_SPAN_WAIT_S,
        description="with otlp_receiver: after the last request, how long to wait for the "
        "spans still missing (the server exports them in batches)",
    )

    def receiver_address(self) -> tuple[str, int] | None:
        """Where the span receiver listens, or None when there is none."""
        if self.otlp_receiver is None or self.otlp_receiver == "off":
            return None
        return parse_host_port(self.otlp_receiver)

    @model_validator(mode="after")
    def _check(self) -> TargetSpec:
        if self.otlp_receiver is not None and self.otlp_receiver != "off":
            try:
                host, port = parse_host_port(self.otlp_receiver)
            except ValueError as e:
                raise ValueError(f"otlp_receiver {e}") from None
            self.otlp_receiver = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.server_metrics not in ("auto", "off"):
            sm = urlsplit(self.server_metrics)
            if sm.scheme not in ("http", "https") or not sm.hostname:
                raise ValueError(
                    f"server_metrics {self.server_metrics!r}: give 'auto', 'off' or an http(s) "
                    "URL, e.g. http://127.0.0.1:8000/metrics"
                )
        if self.gpu_metrics not in ("auto", "nvml", "off"):
            gm = urlsplit(self.gpu_metrics)
            if gm.scheme not in ("http", "https") or not gm.hostname:
                raise ValueError(
                    f"gpu_metrics {self.gpu_metrics!r}: give 'auto', 'nvml', 'off' or an http(s) "
                    "URL of a DCGM exporter or node exporter page, e.g. http://127.0.0.1:9400/metrics"
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
