"""What the subcommands share: the exit-code table, the event loop and signals, the run flags and
the spec they build, error lines. It sits below every subcommand module (.importlinter), so a
subcommand needs no other to run, and none imports `cli.main`.

Exit codes (one table; CI gates on them):
    0   the run completed; few enough requests failed; no SLO given with --slo was missed
    1   error: the benchmark could not run (target unreachable, bad records file, ...), or it
        is incomplete (a worker process died: its in-flight requests are recorded as lost)
    2   usage: invalid flags or spec
    3   an SLO given with --slo was missed
    4   client-bound: the TTFT or ITL error bound exceeds its tolerance, or (open loop) the
        send lag or unsent requests exceed their limits; loop lag and CPU only without a bound
    5   compare --fail-on-regression: a metric got worse by more than the limit
    6   too many requests failed: over validity.max_failed_fraction of the measured ones
        (default 1%; requests cut at the overtime count, a stop's cancelled ones do not), or
        none succeeded; with or without --slo
    130 interrupted (Ctrl-C, SIGTERM), in any phase before the results are written; a signal
        after them (the metrics linger) ends the linger and the verdict's code stands
Priority: 130, then 1, then 4 > 6 > 3. A client-bound run exits 4 even when requests failed or
an SLO was missed: its latencies cannot be trusted; a run with too many failures exits 6 before
its SLOs are looked at, since they were measured on the requests that got through.
`sweep` exits 1 when a step is incomplete, 4 when a step was client-bound, and `sweep --find-max`
3 when no step met the SLOs; a step's failures are judged by --max-error-rate (a step past
saturation may fail requests by design), never exit 6.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from rich.console import Console

from latbench.agents.protocol import parse_listen as parse_agent_listen
from latbench.agents.protocol import read_token
from latbench.exporter import DEFAULT_LINGER_S
from latbench.load.runner import OnLoss
from latbench.render.reconciliation import render_reconciliation
from latbench.render.spans import render_spans
from latbench.render.terminal import render_summary
from latbench.shared.errors import SpecError
from latbench.shared.yamlfile import load_yaml
from latbench.spec import RunSpec, read_spec_file
from latbench.spec.fields import DAY_S, parse_seconds
from latbench.spec.ramp import parse_steps
from latbench.summary.energy import Energy
from latbench.summary.server_metrics import Reconciliation
from latbench.summary.spans import SpanJoin
from latbench.summary.summary import Summary
from latbench.vllm.interop import add_vllm_arguments, apply_vllm_flags


class Exit(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    SLO_MISSED = 3
    CLIENT_BOUND = 4
    REGRESSION = 5
    FAILED = 6
    OVERSATURATED = 7
    INTERRUPTED = 130


def verdict_exit(summary: Summary, gate_slos: bool) -> Exit:
    """The exit status a run's verdict gives: client-bound first (its latencies cannot be
    trusted), then over-saturated (stopped early: its figures are of a growing queue, cut short,
    and its failures that queue's; the summary's panel and JSON say why), then too many failed
    requests, then SLOs."""
    if summary.client_bound:
        return Exit.CLIENT_BOUND
    if summary.oversaturation is not None:
        return Exit.OVERSATURATED
    if not summary.failures.passed:
        return Exit.FAILED
    if gate_slos and not summary.slo_passed:
        return Exit.SLO_MISSED
    return Exit.OK


def print_error(err: Console, message: object) -> None:
    err.print(f"[red]error:[/] {message}", highlight=False)


def show_summary(
    summary: Summary,
    recon: Reconciliation | None,
    console: Console,
    as_json: bool,
    energy: Energy | None = None,
    spans: SpanJoin | None = None,
) -> None:
    """A run's or a records file's summary: the tables, or the JSON on stdout. `energy`: the
    GPU samples' energy figures, when there were any (docs/gpu.md); `spans`: its requests
    joined with the server's spans, when it received any."""
    if as_json:
        doc = summary.to_dict()
        if recon is not None:
            doc["reconciliation"] = recon.to_dict()
        if energy is not None:
            doc["energy"] = energy.to_dict()
        if spans is not None:
            doc["server_spans"] = spans.to_dict()
        sys.stdout.write(
            orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
            + "\n"
        )
    else:
        render_summary(summary, console, energy)
        if spans is not None:
            render_spans(spans, console)
        if recon is not None:
            render_reconciliation(recon, console)


# -- the event loop and signals -----------------------------------------------------------------

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # optional: faster when installed
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_in_loop(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    with asyncio.Runner(loop_factory=new_loop) as r:
        return r.run(coro_fn())


def on_loop_signals(callback: Callable[[], None]) -> None:
    """Inside the running loop: SIGINT and SIGTERM call `callback` (a stop, not a raise)."""
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, callback)


@contextlib.contextmanager
def signals_handled_by(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Outside the loop: SIGINT and SIGTERM go to `handler` until the block ends, then to
    whatever handled them before."""
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


# -- flags shared by several subcommands --------------------------------------------------------


def parse_fraction(text: str, flag: str) -> float:
    """`5%` or `0.05` -> 0.05. A bare number of 1 or more is refused: 5 could mean either."""
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        v = -1.0
    if not 0 <= v < 1 or (not t.endswith("%") and v >= 1):
        raise SpecError(f"{flag} {text!r}: write a percentage like 5% (or a fraction like 0.05)")
    return v


def parse_percentiles(text: str | None, default: list[float] | None) -> list[float] | None:
    if text is None:
        return default
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or not all(0 < p < 100 for p in out):
        raise SpecError(f"--metric-percentiles {text!r}: give numbers in (0, 100), e.g. 50,99")
    return out


def add_output_arguments(p: argparse.ArgumentParser, default_all: bool = True) -> None:
    when = " (default: all three beside the results)" if default_all else ""
    p.add_argument("--html", type=Path, metavar="PATH", help="write the HTML report here" + when)
    p.add_argument("--md", type=Path, metavar="PATH", help="write Markdown here")
    p.add_argument("--csv", type=Path, metavar="PATH", help="write CSV here")


# -- the run flags (run, sweep) and the spec they build -----------------------------------------

# flag dest -> (spec path, converter). One place maps flags onto the spec schema, so the file and
# the flags cannot drift apart.
FLAG_PATHS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "target": ("target", "base_url"),
    "api": ("target", "api"),
    "model": ("target", "model"),
    "api_key_env": ("target", "api_key_env"),
    "api_key_file": ("target", "api_key_file"),
    "vllm_extensions": ("target", "vllm_extensions"),
    "server_metrics": ("target", "server_metrics"),
    "gpu_metrics": ("target", "gpu_metrics"),
    "otlp_receiver": ("target", "otlp_receiver"),
    "span_wait": ("target", "span_wait"),
    "connect_timeout": ("target", "timeouts", "connect"),
    "first_token_timeout": ("target", "timeouts", "first_token"),
    "idle_timeout": ("target", "timeouts", "idle"),
    "total_timeout": ("target", "timeouts", "total"),
    "retries": ("target", "retry", "max_retries"),
    "retry_max_wait": ("target", "retry", "max_wait"),
    "mode": ("load", "mode"),
    "concurrency": ("load", "concurrency"),
    "rate": ("load", "rate"),
    "burstiness": ("load", "burstiness"),
    "arrivals": ("load", "arrivals"),
    "duration": ("load", "duration"),
    "requests": ("load", "requests"),
    "warmup": ("load", "warmup"),
    "cooldown": ("load", "cooldown"),
    "warmup_requests": ("load", "warmup_requests"),
    "cooldown_requests": ("load", "cooldown_requests"),
    "workers": ("load", "workers"),
    "input_tokens": ("workload", "input_tokens"),
    "output_tokens": ("workload", "output_tokens"),
    "ignore_eos": ("workload", "ignore_eos"),
    "seed": ("workload", "seed"),
    "tokenizer": ("workload", "tokenizer"),
    "trace_format": ("workload", "trace", "format"),
    "trace_speed": ("workload", "trace", "speed"),
    "trace_start": ("workload", "trace", "start"),
    "trace_end": ("workload", "trace", "end"),
    "out": ("output_dir",),
}


# Sampling flags, sent as request fields of the same name (vLLM's, OpenAI's, Anthropic's).
SAMPLING = ("temperature", "top_p", "top_k")


def parse_extra_body(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise SpecError(f"--extra-body: not JSON ({e})") from None
    if not isinstance(body, dict):
        raise SpecError(f"--extra-body {text[:80]!r}: give a JSON object, e.g. '{{\"top_k\": 1}}'")
    return body


def image_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """--images, --image-size, --image-format into workload.images (over the spec's)."""
    if ns.images is None and ns.image_size is None and ns.image_format is None:
        return
    images = dict(data.get("workload", {}).get("images") or {})
    if ns.images is not None:
        images["count"] = ns.images
    if ns.image_size is not None:
        w, sep, h = ns.image_size.lower().partition("x")
        if not (sep and w.strip().isdigit() and h.strip().isdigit()):
            raise SpecError(
                f"--image-size {ns.image_size!r}: write it as WIDTHxHEIGHT, e.g. 512x512"
            )
        images["width"], images["height"] = int(w), int(h)
    if ns.image_format is not None:
        images["format"] = ns.image_format
    set_path(data, ("workload", "images"), images)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=Path, help="run spec file (YAML or JSON); flags override it")
    p.add_argument("--name", "--label", help="scenario name (a label in results and metrics)")
    g = p.add_argument_group("target (omit --target to benchmark the built-in simulator)")
    g.add_argument(
        "--target", "--base-url", metavar="URL", help="server root, e.g. http://127.0.0.1:8000"
    )
    g.add_argument(
        "--api",
        choices=["chat", "completions", "anthropic", "responses"],
        help="chat and completions: OpenAI-compatible; anthropic: Messages API; responses: "
        "OpenAI Responses API (docs/hosted-apis.md)",
    )
    g.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    g.add_argument("--api-key-env", metavar="VAR", help="env var holding the API key")
    g.add_argument("--api-key-file", metavar="PATH", help="file holding the API key")
    g.add_argument(
        "--header",
        nargs="+",
        action="extend",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header; NAME=VALUE (vllm bench serve's form) works too",
    )
    g.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    g.add_argument(
        "--vllm-extensions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send ignore_eos/min_tokens/continuous_usage_stats "
        "(default: on, off for OpenAI and Anthropic)",
    )
    g.add_argument(
        "--launch-vllm",
        metavar="'VLLM ARGS'",
        help='start vLLM with these arguments (e.g. "--model M --max-model-len 4096"), '
        "benchmark it, stop it; its log is kept as vllm.log next to the records "
        "(docs/vllm.md). Needs vLLM installed: pip install 'latbench[vllm]'",
    )
    g.add_argument(
        "--vllm-python",
        metavar="PATH",
        help="with --launch-vllm: the Python that has vLLM installed (default: this one)",
    )
    g.add_argument(
        "--server-metrics",
        metavar="URL|auto|off",
        help="the server's Prometheus page to reconcile client and server latency with "
        "(default auto: the target's /metrics, read as vLLM's, SGLang's, TGI's, "
        "TensorRT-LLM's or Dynamo's, whichever it holds; docs/servers.md)",
    )
    g.add_argument(
        "--gpu-metrics",
        metavar="URL|auto|nvml|off",
        help="sample GPU utilisation, power and energy during the run for J per output token "
        "(default auto: NVML when this host has an NVIDIA GPU and the target is on this host; "
        "nvml: NVML whatever the target; or a DCGM exporter's or node exporter's page URL; "
        "docs/gpu.md)",
    )
    g.add_argument(
        "--otlp-receiver",
        metavar="HOST:PORT|off",
        help="receive the server's per-request OTLP/HTTP spans here (vLLM: "
        "--otlp-traces-endpoint http://HOST:PORT/v1/traces) and join each with its request: "
        "queue, prefill and the time outside the server, exactly (docs/vllm.md); on by "
        "default with --launch-vllm (off: not there either)",
    )
    g.add_argument(
        "--span-wait",
        metavar="SECONDS",
        help="with spans: how long after the last request to wait for the ones still missing "
        "(default 8: vLLM sends its spans every 5 s)",
    )
    for phase in ("connect", "first-token", "idle", "total"):
        g.add_argument(f"--{phase}-timeout", metavar="SECONDS")
    g.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="retry a request refused for load (429, 529, 503 with Retry-After) up to N times; "
        "its latencies still count from the first send (default 0)",
    )
    g.add_argument(
        "--retry-max-wait",
        metavar="SECONDS",
        help="give up rather than wait longer than this for a retry (default 60)",
    )
    g.add_argument(
        "--sim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="built-in simulator setting, e.g. --sim ttft=0.05 --sim itl=normal:0.01,0.002",
    )
    g = p.add_argument_group("load")
    g.add_argument(
        "--mode",
        choices=["closed", "constant", "poisson", "ramp", "steps", "trace"],
        help="default: closed, or poisson when --rate is given (steps: --staircase sets it; "
        "trace: --trace)",
    )
    g.add_argument("--concurrency", type=int, help="closed loop: users; open loop: a cap")
    g.add_argument("--rate", "--request-rate", type=float, help="open loop: requests per second")
    g.add_argument("--burstiness", type=float, help="poisson: gamma shape (1 = Poisson)")
    g.add_argument(
        "--staircase",
        metavar="RATE:DURATION,..",
        help="a staircase in one run, e.g. 10:30s,20:30s,40:30s (mode steps; "
        "docs/workloads.md); ramps: --ramp-up-strategy",
    )
    g.add_argument(
        "--arrivals",
        choices=["even", "poisson"],
        help="ramp, steps: even gaps (default) or poisson (gamma with --burstiness)",
    )
    g.add_argument("--duration", metavar="DURATION", help="e.g. 30s, 2m")
    g.add_argument("--requests", "--num-prompts", type=int, help="stop after this many requests")
    g.add_argument("--warmup", metavar="DURATION")
    g.add_argument("--cooldown", metavar="DURATION")
    g.add_argument("--warmup-requests", type=int)
    g.add_argument("--cooldown-requests", type=int)
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="sending processes, one event loop each (default: one per 64 streams, at most "
        "one fewer than the cores; docs/performance.md)",
    )
    g = p.add_argument_group("workload")
    g.add_argument("--input-tokens", "--input-len", metavar="DIST", help="e.g. 128, normal:512,64")
    g.add_argument(
        "--output-tokens", "--output-len", metavar="DIST", help="e.g. 128, uniform:64,256"
    )
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompts", type=Path, metavar="FILE.jsonl", help="prompts, one per line")
    src.add_argument("--sharegpt", type=Path, metavar="FILE.json", help="ShareGPT conversations")
    src.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="replay a Mooncake (JSONL), Azure or BurstGPT (CSV) trace at its own instants "
        "(load mode trace; docs/workloads.md)",
    )
    g.add_argument(
        "--trace-format", choices=["auto", "mooncake", "azure", "burstgpt"], help="default: auto"
    )
    g.add_argument("--trace-speed", type=float, metavar="X", help="2: twice as fast (default 1)")
    g.add_argument("--trace-start", metavar="DURATION", help="replay from this far into the trace")
    g.add_argument("--trace-end", metavar="DURATION", help="replay up to this far into it")
    g.add_argument(
        "--prefix-groups",
        type=int,
        metavar="G",
        help="shared-prefix prompts: G groups, each repeating one prefix before each request's "
        "own suffix (any --prefix-*/--suffix-tokens flag selects them; docs/workloads.md)",
    )
    g.add_argument("--prefix-tokens", type=int, metavar="N", help="each prefix (default 256)")
    g.add_argument("--suffix-tokens", metavar="DIST", help="each request's suffix (default 256)")
    g.add_argument(
        "--prefix-share", type=float, metavar="F", help="fraction of requests sharing (default 1)"
    )
    g.add_argument(
        "--prefix-as",
        choices=["system", "user"],
        help="the prefix as a system message (default) or the start of the user message",
    )
    g.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--seed", type=int)
    g.add_argument(
        "--tokenizer",
        metavar="PATH_OR_NAME",
        help="count synthetic prompts with this tokenizer.json (or folder, or Hugging Face name) "
        "where the server has no /tokenize; 'words': a word is a token (docs/spec.md)",
    )
    g.add_argument(
        "--images",
        metavar="DIST",
        help="generated images per chat request, e.g. 2 or uniform:0,4 (docs/workloads.md)",
    )
    g.add_argument("--image-size", metavar="WxH", help="their resolution (default 512x512)")
    g.add_argument("--image-format", choices=["png", "jpeg"], help="default png; jpeg needs Pillow")
    g.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    g.add_argument("--top-p", type=float, help="nucleus sampling (default: the server's)")
    g.add_argument("--top-k", type=int, help="top-k sampling (default: the server's)")
    g.add_argument(
        "--extra-body",
        metavar="JSON",
        help='fields added to every request body, e.g. \'{"chat_template_kwargs": '
        '{"enable_thinking": false}}\'; they win over --temperature/--top-p/--top-k',
    )
    g.add_argument(
        "--tools",
        metavar="N|FILE.json",
        help="each request carries N built-in tool definitions, or those of a JSON file; with "
        "sessions, agent sessions answer each tool call (docs/workloads.md)",
    )
    g.add_argument("--tool-latency", metavar="DIST", help="seconds a tool runs, e.g. 0.2")
    g.add_argument("--tool-steps", type=int, metavar="N", help="tool calls answered per turn")
    g.add_argument("--tool-result-tokens", type=int, metavar="N", help="canned result length")
    g.add_argument(
        "--sessions",
        action="store_true",
        default=None,
        help="multi-turn sessions, each turn resending the conversation: synthetic ones "
        "(--turns), or with --sharegpt its conversations whole (docs/workloads.md)",
    )
    g.add_argument("--turns", metavar="DIST", help="user turns a synthetic session (default 4)")
    g.add_argument("--think-time", metavar="DIST", help="seconds from a reply to the next turn")
    g.add_argument("--system-tokens", type=int, metavar="N", help="a synthetic system prompt")
    g = p.add_argument_group("verdict and output")
    g.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="SLO",
        help="e.g. ttft:p99<=100ms; makes the exit status 3 when missed. "
        "'default' = p99 TTFT, ITL, TPOT <= 100 ms",
    )
    g.add_argument(
        "--percentiles", "--metric-percentiles", metavar="P,P,..", help="default 50,90,95,99,99.9"
    )
    g.add_argument("--out", type=Path, metavar="DIR", help="results directory")
    g.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="do it N times, one after another, under one new directory (DIR/repeat-<id>/) "
        "that latbench compare takes as one side (docs/sweeps.md)",
    )
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g = p.add_argument_group("Prometheus (docs/prometheus.md)")
    g.add_argument(
        "--metrics-port",
        metavar="[HOST:]PORT",
        help="serve /metrics during the run (HOST default 127.0.0.1; 0.0.0.0 for all interfaces)",
    )
    g.add_argument(
        "--metrics-linger",
        type=float,
        default=DEFAULT_LINGER_S,
        metavar="SECONDS",
        help="after the run, serve until a scrape has read the final values, at most this long "
        f"(default {DEFAULT_LINGER_S:g})",
    )
    g.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push to this Pushgateway at the start, every few seconds and at the end "
        "(group: job=latbench, target, model, api, scenario, location)",
    )
    g = p.add_argument_group("OpenTelemetry metrics out (docs/otel.md)")
    g.add_argument(
        "--otlp-metrics",
        metavar="URL",
        help="also send the metrics (the series /metrics serves) to this OTLP/HTTP collector "
        "(e.g. http://127.0.0.1:4318; /v1/metrics is added to a bare URL), GenAI "
        "semantic-convention names; needs pip install 'latbench[otel]'",
    )
    g.add_argument(
        "--otlp-header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header on every export (auth); NAME=@FILE reads the value from a file, and "
        "OTEL_EXPORTER_OTLP_HEADERS works too",
    )
    g.add_argument(
        "--otlp-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="export every SECONDS during the run (default 10), and once at its end",
    )
    g.add_argument(
        "--otlp-temporality",
        choices=("cumulative", "delta"),
        help="the sums' temporality (default cumulative, or "
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE)",
    )
    add_vllm_arguments(p)


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    """`latbench run`'s agent flags (docs/distributed.md)."""
    g = p.add_argument_group("agents: load sent from other machines (docs/distributed.md)")
    g.add_argument(
        "--agents",
        type=int,
        metavar="N",
        help="wait for N agents (latbench agent --coordinator ws://THIS_HOST:8790) and send the "
        "load from their worker processes instead of local ones",
    )
    g.add_argument(
        "--agent-listen",
        default="0.0.0.0:8790",
        metavar="HOST:PORT",
        help="where agents connect (default 0.0.0.0:8790, path /v1/agents)",
    )
    g.add_argument(
        "--agent-token-file",
        type=Path,
        metavar="FILE",
        help="the token agents must present (default: the environment variable "
        "LATBENCH_AGENT_TOKEN)",
    )
    g.add_argument(
        "--agent-wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the agents to register (default 120)",
    )
    g.add_argument(
        "--max-clock-uncertainty",
        default="5ms",
        metavar="DURATION",
        help="flag an agent whose clock offset is uncertain beyond this (default 5ms)",
    )
    g.add_argument(
        "--on-agent-loss",
        choices=["continue", "stop"],
        default="continue",
        help="when an agent is lost mid-run: the others go on (default), or the run stops",
    )


@dataclass(frozen=True)
class AgentFlags:
    """`latbench run --agents N` and its company, checked."""

    count: int
    host: str
    port: int
    token: str
    wait_s: float
    max_uncertainty_ns: int
    on_loss: OnLoss


def agent_flags(ns: argparse.Namespace) -> AgentFlags | None:
    """The agent flags, or None without --agents; SpecError naming the first bad one."""
    if ns.agents is None:
        return None
    if ns.agents < 1:
        raise SpecError(f"--agents {ns.agents}: give 1 or more")
    if ns.workers is not None:
        raise SpecError(
            "--workers counts local worker processes; with --agents each agent's own --workers "
            "sets its share"
        )
    if ns.repeat != 1:
        raise SpecError("--repeat with --agents: agents exit when a run is done; run it again")
    try:
        host, port = parse_agent_listen(ns.agent_listen)
    except ValueError as e:
        raise SpecError(f"--agent-listen {e}") from None
    token = read_token(ns.agent_token_file, "--agent-token-file")
    if not 0 <= ns.agent_wait <= DAY_S:
        raise SpecError(f"--agent-wait {ns.agent_wait:g}: give 0 to {DAY_S:g} seconds")
    try:
        limit = float(parse_seconds(ns.max_clock_uncertainty))  # type: ignore[arg-type]
    except ValueError as e:
        raise SpecError(f"--max-clock-uncertainty: {e}") from None
    return AgentFlags(
        ns.agents, host, port, token, ns.agent_wait, round(limit * 1e9), ns.on_agent_loss
    )


def set_path(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d.setdefault(key, {})
    d[path[-1]] = value


def spec_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = read_spec_file(ns.spec) if ns.spec else {}
    for dest, path in FLAG_PATHS.items():
        value = getattr(ns, dest)
        if value is not None:
            set_path(data, path, value)
    if ns.rate is not None and ns.mode is None and "mode" not in data.get("load", {}):
        set_path(data, ("load", "mode"), "poisson")
    shape_flags(ns, data)
    if ns.insecure:
        set_path(data, ("target", "verify_tls"), False)
    for h in ns.header:
        # 'Name: value', or vLLM's Name=value: whichever comes first splits (a name has neither).
        colon, eq = h.find(":"), h.find("=")
        cut = colon if colon >= 0 and (eq < 0 or colon < eq) else eq
        name, value = h[:cut], h[cut + 1 :]
        if cut < 0 or not name.strip():
            raise SpecError(f"--header {h!r}: write it as 'Name: value' or Name=value")
        data.setdefault("target", {}).setdefault("headers", {})[name.strip()] = value.strip()
    sampling = {k: v for k in SAMPLING if (v := getattr(ns, k)) is not None}
    if sampling or ns.extra_body is not None:
        body = data.setdefault("workload", {}).setdefault("extra_body", {})
        body.update(sampling)  # as in vLLM, --extra-body wins over the sampling flags
        body.update(parse_extra_body(ns.extra_body))
    if ns.prompts:
        set_path(data, ("workload", "source"), "jsonl")
        set_path(data, ("workload", "path"), str(ns.prompts))
    if ns.sharegpt:
        set_path(data, ("workload", "source"), "sharegpt")
        set_path(data, ("workload", "path"), str(ns.sharegpt))
    if ns.trace:
        set_path(data, ("workload", "source"), "trace")
        set_path(data, ("workload", "path"), str(ns.trace))
    image_flags(ns, data)
    for kv in ns.sim:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SpecError(f"--sim {kv!r}: write it as KEY=VALUE, e.g. ttft=0.05")
        # YAML scalars: numbers stay numbers, `[...]`/`{...}` give lists and mappings (faults);
        # under the spec's limits (no aliases, bounded size and depth), as a spec file is.
        set_path(data, ("sim", key.strip()), load_yaml(value, f"--sim {kv!r:.80}"))
    if ns.slo:
        slos = [s for s in ns.slo if s != "default"]
        if "default" in ns.slo:
            slos = ["ttft:p99<=100ms", "itl:p99<=100ms", "tpot:p99<=100ms", *slos]
        data["slos"] = slos
    if ns.percentiles:
        try:
            data["percentiles"] = [float(x) for x in ns.percentiles.split(",") if x.strip()]
        except ValueError:
            raise SpecError(
                f"--percentiles {ns.percentiles!r}: give numbers, e.g. 50,90,99"
            ) from None
    tool_flags(ns, data)
    prefix_flags(ns, data)
    session_flags(ns, data)
    apply_vllm_flags(ns, data)
    # Durations given as flags stay strings; the spec parses units ("30s", "2m").
    return data


def shape_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """--staircase (mode steps) and --trace (mode trace: its rows are the requests, its instants
    the load) set the load's shape, as vLLM's --ramp-up-* flags do (vllm/interop.ramp_flags),
    one of them at a time; what a spec file says of another shape gives way to the flag (its
    rate, ramp or stairs; a staircase's duration is the sum of its stairs). Another --mode is
    left for the spec to refuse."""
    given = [
        flag
        for flag, value in (
            ("--staircase", ns.staircase),
            ("--trace", ns.trace),
            ("--ramp-up-strategy", getattr(ns, "ramp_up_strategy", None)),
        )
        if value
    ]
    if len(given) > 1:
        raise SpecError(f"{given[0]} and {given[1]} each set the load's shape: give one")
    if not (ns.staircase or ns.trace):
        return
    load = data.setdefault("load", {})
    file_keys = ("rate", "duration") if ns.staircase else ("rate", "arrivals")
    for key in file_keys:
        if getattr(ns, key) is None:
            load.pop(key, None)
    for key in ("ramp", "steps"):
        load.pop(key, None)
    if ns.staircase:
        load["steps"] = parse_steps(ns.staircase)
    load["mode"] = ns.mode or ("steps" if ns.staircase else "trace")


def tool_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """--tools N or FILE, and the --tool-* flags, which need tools (from --tools or the spec)."""
    tools = data.get("workload", {}).get("tools")
    if ns.tools is not None:
        # The flag's choice replaces the spec's; the spec's latency, steps and result stay.
        tools = {k: v for k, v in (tools or {}).items() if k not in ("count", "path")}
        if ns.tools.strip().isdigit():
            tools["count"] = int(ns.tools)
        else:
            tools["path"] = ns.tools
        set_path(data, ("workload", "tools"), tools)
    flags = {
        "--tool-latency": ("latency", ns.tool_latency),
        "--tool-steps": ("max_steps", ns.tool_steps),
        "--tool-result-tokens": ("result_tokens", ns.tool_result_tokens),
    }
    for flag, (key, value) in flags.items():
        if value is None:
            continue
        if not isinstance(tools, dict):
            raise SpecError(f"{flag} needs tools: add --tools N (or workload.tools in the spec)")
        tools[key] = value


def session_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """--sessions, --turns, --think-time, --system-tokens: multi-turn sessions, over the spec's
    workload.sessions; any of them turns sessions on."""
    given = {
        key: value
        for key, value in (
            ("turns", ns.turns),
            ("think_time", ns.think_time),
            ("system_tokens", ns.system_tokens),
        )
        if value is not None
    }
    if given or ns.sessions:
        w = data.setdefault("workload", {})
        w["sessions"] = {**(w.get("sessions") or {}), **given}


def prefix_flags(ns: argparse.Namespace, data: dict[str, Any]) -> None:
    """--prefix-groups, --prefix-tokens, --suffix-tokens, --prefix-share, --prefix-as: a
    shared-prefix workload, over the spec's workload.shared_prefix (a spec file's prompt file
    gives way to them, as its other fields do; another prompt flag is refused)."""
    flags = {
        "--prefix-groups": ("groups", ns.prefix_groups),
        "--prefix-tokens": ("prefix_tokens", ns.prefix_tokens),
        "--suffix-tokens": ("suffix_tokens", ns.suffix_tokens),
        "--prefix-share": ("share", ns.prefix_share),
        "--prefix-as": ("prefix_as", ns.prefix_as),
    }
    given = {flag: kv for flag, kv in flags.items() if kv[1] is not None}
    if not given:
        return
    others = (
        ("--prompts", ns.prompts),
        ("--sharegpt", ns.sharegpt),
        ("--trace", ns.trace),
        ("--dataset-name random", getattr(ns, "dataset_name", None) == "random"),
    )
    other = next((name for name, value in others if value), None)
    if other is not None:
        raise SpecError(
            f"{next(iter(given))} makes shared-prefix prompts and {other} another source of "
            "prompts: give one"
        )
    w = data.setdefault("workload", {})
    w.pop("path", None)
    w.pop("trace", None)
    w["source"] = "shared_prefix"
    w["shared_prefix"] = {**(w.get("shared_prefix") or {}), **dict(given.values())}


def repeated(
    ns: argparse.Namespace,
    once: Callable[[argparse.Namespace, Console, Console], int],
    console: Console,
    err: Console,
    what: str,
) -> int:
    """`--repeat N`: `once` N times, each writing its run (or sweep) directory under one new
    parent, so that `latbench compare PARENT OTHER` has several runs per side and counts
    run-to-run variation (summary/compare.py). The exit status is the first run's that was not
    0; an error or an interrupt stops the repeats."""
    if ns.repeat < 1:
        raise SpecError(f"--repeat {ns.repeat}: give 1 or more")
    if ns.repeat == 1:
        return once(ns, console, err)
    if ns.json:
        raise SpecError(
            "--json prints one summary: with --repeat, read each run's results.json, or "
            "latbench compare --json the repeats"
        )
    if ns.metrics_port is not None or ns.pushgateway is not None:
        raise SpecError(
            "--repeat does not export Prometheus metrics: drop --metrics-port/--pushgateway"
        )
    root = Path(spec_from_args(ns).get("output_dir", RunSpec.model_fields["output_dir"].default))
    parent = root / time.strftime(f"repeat-%Y%m%d-%H%M%S-{uuid.uuid4().hex[:6]}")
    code = int(Exit.OK)
    for i in range(ns.repeat):
        err.print(f"[bold]{what} {i + 1} of {ns.repeat}[/] in {parent}", highlight=False)
        each = copy.copy(ns)
        each.out = parent
        c = once(each, console, err)
        if c in (Exit.INTERRUPTED, Exit.ERROR):
            return c
        code = code or c
    # A sweep's steps are runs: one step of every repeat makes a side.
    side = f"--a '{parent}'/*/*-s01 --b ..." if what == "sweep" else f"{parent} OTHER"
    console.print(
        f"{ns.repeat} {what}s: {parent}\ncompare with another configuration: "
        f"latbench compare {side}",
        highlight=False,
    )
    return code
