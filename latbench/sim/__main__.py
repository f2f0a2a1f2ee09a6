"""`python -m latbench.sim` (and `latbench sim`): run the simulated server until SIGTERM/SIGINT.

Settings are layered: `--config FILE`, then `--config-json`, then individual flags, each
overriding the one before; `--fault` flags add to the faults from the files. Once the socket is
bound, exactly one line, `latbench-sim listening on http://HOST:PORT`, goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import ValidationError

from latbench.shared import rxstamp
from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError
from latbench.shared.yamlfile import MAX_BYTES, parse_yaml
from latbench.sim.arrival import listen
from latbench.sim.config import FAULT_KINDS, FaultSpec, SimConfig
from latbench.sim.replay import check_replay
from latbench.sim.server import create_app

# SimConfig field -> the flag that sets it (fields whose flag is the field name, dashed).
_FLAG_FIELDS = (
    "api",
    "host",
    "port",
    "model",
    "max_model_len",
    "default_max_tokens",
    "ttft",
    "itl",
    "tokens_per_event",
    "reasoning_tokens",
    "tool_call_tokens",
    "tool_steps",
    "eos_probability",
    "seed",
    "max_batch",
    "ttft_per_stream",
    "itl_per_stream",
    "prefix_cache",
    "block_tokens",
    "prefix_cache_blocks",
    "prefill_per_token",
    "itl_per_context_token",
    "image_tokens",
    "ttft_per_image",
    "rate_limit",
    "truth_capacity",
    "otlp_traces_endpoint",
    "span_clock_offset_s",
    "span_drop",
    "span_duplicate",
    "span_delay_s",
)


def _dist(text: str) -> Dist:
    try:
        return Dist.model_validate(text)
    except ValidationError as e:
        raise argparse.ArgumentTypeError(_first_message(e)) from None


def _fault(text: str) -> FaultSpec:
    try:
        return FaultSpec.parse(text)
    except ValidationError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {_explain(e, {})}") from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _first_message(e: ValidationError) -> str:
    msg = e.errors()[0]["msg"]
    return msg.removeprefix("Value error, ")


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to `parser` (so the main CLI can mount it as `latbench sim`)."""
    a = parser.add_argument
    a("--config", metavar="FILE", help="settings from a YAML or JSON file")
    a("--config-json", metavar="JSON", help="settings as one JSON object")
    a(
        "--api",
        choices=["openai", "anthropic", "responses"],
        help="the API served: openai (vLLM's /v1/completions and /v1/chat/completions), "
        "anthropic (/v1/messages) or responses (/v1/responses) (default openai)",
    )
    a(
        "--replay",
        action="append",
        metavar="FILE|DIR",
        help="replay these transcripts (*.sse) byte for byte at their recorded offsets instead "
        "of generating (repeatable; a directory means its *.sse files)",
    )
    a("--host", help="address to bind (default 127.0.0.1)")
    a("--port", type=int, help="port to bind; 0 picks a free one (default 0)")
    a("--model", help="the one model served (default sim-model)")
    a("--max-model-len", type=int, metavar="N", help="context length (default 4096)")
    a("--default-max-tokens", type=int, metavar="N", help="when a request sets none (default 128)")
    a("--ttft", type=_dist, metavar="DIST", help="time to first token, s: 0.05, normal:0.05,0.005")
    a("--itl", type=_dist, metavar="DIST", help="time between events, s (default 0.01)")
    a("--tokens-per-event", type=int, metavar="K", help="tokens per SSE event (default 1)")
    a("--reasoning-tokens", type=int, metavar="N", help="chat: reasoning tokens before content")
    a("--tool-call-tokens", type=int, metavar="N", help="tokens of a tool call after content")
    a(
        "--tool-steps",
        type=int,
        metavar="N",
        help="a request offering tools gets a tool call until N tool results follow its last "
        "user message (default 1)",
    )
    a("--eos-probability", type=float, metavar="P", help="chance each token is the last")
    a("--seed", type=int, help="RNG seed for latency and length draws")
    a("--max-batch", type=int, metavar="B", help="streams decoding at once; more wait FIFO")
    a("--ttft-per-stream", type=float, metavar="S", help="TTFT added per active stream, s")
    a("--itl-per-stream", type=float, metavar="S", help="step time added per other stream, s")
    a(
        "--prefix-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cache prompt blocks as vLLM does (default on)",
    )
    a("--block-tokens", type=int, metavar="N", help="tokens per cached block (default 16)")
    a("--prefix-cache-blocks", type=int, metavar="N", help="blocks cached (default 32768)")
    a("--prefill-per-token", type=float, metavar="S", help="TTFT per uncached prompt token, s")
    a(
        "--itl-per-context-token",
        type=float,
        metavar="S",
        help="step time added per token of context (prompt and generated), s",
    )
    a("--image-tokens", type=int, metavar="N", help="prompt tokens per image (default 0)")
    a("--ttft-per-image", type=float, metavar="S", help="TTFT added per image encoded, s")
    a(
        "--rate-limit",
        type=float,
        metavar="RPS",
        help="admit this many requests per second; the rest get 429 with Retry-After",
    )
    a("--truth-capacity", type=int, metavar="N", help="requests kept for /sim/truth")
    a(
        "--otlp-traces-endpoint",
        metavar="URL",
        help="export each finished request as vLLM's llm_request span, OTLP/HTTP JSON, to this "
        "URL (ending /v1/traces), as vLLM's flag of that name does",
    )
    a("--span-clock-offset-s", type=float, metavar="S", help="shift the spans' wall clock, s")
    a("--span-drop", type=float, metavar="P", help="share of spans never sent (default 0)")
    a("--span-duplicate", type=float, metavar="P", help="share of spans sent twice (default 0)")
    a("--span-delay-s", type=float, metavar="S", help="spans' batch delay, s (default 0.2)")
    a(
        "--fault",
        type=_fault,
        action="append",
        metavar="KIND[,every=N][,after=K][,status=C][,stall_s=S][,retry_after=S|none]",
        help=f"inject a fault (repeatable); KIND is one of {', '.join(FAULT_KINDS)}",
    )


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """The SimConfig that parsed flags describe; raises SpecError naming the bad flag or field."""
    data: dict[str, Any] = {}
    if ns.config:
        data.update(_load(ns.config, "--config", _read_file))
    if ns.config_json:
        data.update(_load(ns.config_json, "--config-json", json.loads))
    flags = {"faults": "--fault"}
    for name in _FLAG_FIELDS:
        flags[name] = "--" + name.replace("_", "-")
        value = getattr(ns, name, None)
        if value is not None:
            data[name] = value
    if ns.fault:
        data["faults"] = [*data.get("faults", []), *ns.fault]
    flags["replay"] = "--replay"
    if getattr(ns, "replay", None):
        data["replay"] = [*data.get("replay", []), *ns.replay]
    try:
        config = SimConfig.model_validate(data)
    except ValidationError as e:
        raise SpecError(_explain(e, flags)) from None
    check_replay(config.replay)
    return config


def _read_file(path: str) -> Any:
    """The settings in a file, under the spec's limits (shared.yamlfile): at most 1 MiB, and
    YAML without aliases, at most 32 levels deep. Its errors are worded by `_load`."""
    with Path(path).open("rb") as f:
        raw = f.read(MAX_BYTES + 1)  # a FIFO or /dev/zero has no size to check first
    if len(raw) > MAX_BYTES:
        raise ValueError(
            f"{path} is over {MAX_BYTES // 1024} KiB; a simulator config is a small document"
        )
    text = raw.decode()
    return json.loads(text) if path.endswith(".json") else parse_yaml(text)


def _load(source: str, flag: str, parse: Callable[[str], Any]) -> dict[str, Any]:
    try:
        data = parse(source)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise SpecError(f"{flag}: cannot read settings: {e}") from None
    except (TypeError, LookupError, ArithmeticError, RecursionError) as e:
        # JSON nested past the interpreter's recursion limit, and PyYAML's constructors on some
        # malformed scalars, raise these rather than a parse error.
        raise SpecError(f"{flag}: cannot read settings: {type(e).__name__}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{flag}: settings must be a mapping, got {type(data).__name__}")
    return data


def _explain(e: ValidationError, flags: dict[str, str]) -> str:
    parts = []
    for err in e.errors():
        loc = err["loc"]
        name = str(loc[0]) if loc else ""
        where = flags.get(name) or ".".join(str(p) for p in loc) or "settings"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


async def serve(config: SimConfig, ready: Callable[[str], None] | None = None) -> None:
    """Serve `config` until SIGTERM or SIGINT; `ready(url)` is called once the socket is bound."""
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    server: asyncio.Server | None = None
    try:
        server = await listen(runner, config.host, config.port)
        host, port = server.sockets[0].getsockname()[:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            if ready is not None:
                ready(url)
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
    finally:
        if server is not None:
            server.close()
        await runner.cleanup()


def _announce(url: str) -> None:
    print(f"latbench-sim listening on {url}", flush=True)


def _die_with_parent() -> None:
    """Linux: ask for SIGTERM when the launching process dies (set by `SimProcess`)."""
    parent = os.environ.get("LATBENCH_SIM_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run(config: SimConfig) -> None:
    """Serve in this thread on a fresh event loop (`rxstamp.new_event_loop`: the stdlib loop
    where it can stamp arrivals in the kernel, else uvloop when installed)."""
    _die_with_parent()
    with asyncio.Runner(loop_factory=rxstamp.new_event_loop) as runner:
        runner.run(serve(config, _announce))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="latbench sim", description="Run the simulated LLM server."
    )
    add_sim_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except SpecError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        run(config)
    except OSError as e:  # the address is in use, or cannot be bound
        print(
            f"{parser.prog}: error: cannot listen on {config.host}:{config.port}: {e}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
