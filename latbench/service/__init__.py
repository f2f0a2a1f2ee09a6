"""Service mode: `latbench serve`, a long-lived latbench with an HTTP API (docs/service.md).

    config     the service's config file (catalogue, token source, caps, schedules, retention)
    admit      a caller's spec -> the spec the service runs (catalogue only, caps)
    store      run history in SQLite
    runs       the run manager: per-target queues, run_benchmark, cancel, drain, recovery
    progress   a run's live progress, and the wake-up for clients following it
    scheduler  scheduled probes (interval with jitter, or cron)
    api        the HTTP handlers, auth, errors
    app        the aiohttp app, start-up, graceful shutdown

The core (`run.benchmark`, `load.runner`, ...) never imports this package.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

# The app and its libraries are imported by `cmd_serve` only, so that every other latbench
# command starts without them.
__all__ = ["add_serve_arguments", "cmd_serve"]


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="service config (YAML); default: a builtin simulator target named 'sim'",
    )
    p.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="override the config's data_dir")


def cmd_serve(
    ns: argparse.Namespace, err: Console, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> int:
    from latbench.service.app import configure_logging, serve
    from latbench.service.config import load_config

    overrides = {"listen": ns.listen, "data_dir": ns.data_dir}
    config = load_config(ns.config, {k: v for k, v in overrides.items() if v is not None})
    configure_logging()
    with asyncio.Runner(loop_factory=loop_factory) as r:
        r.run(serve(config))
    return 0
