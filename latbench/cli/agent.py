"""`latbench agent`: run shards for a coordinator on this machine (docs/distributed.md).

Two flags are all an agent needs: where the coordinator is and the token. The token comes from
a file or the environment, never a flag's value, which any user of the host could read in `ps`.
The index comes from `--index`, else Kubernetes' `JOB_COMPLETION_INDEX` (an Indexed Job's pods
are numbered), else the coordinator picks one. Exit 0 when the coordinator says its work is
done; 1 when the coordinator refuses the agent or goes away (an agent of `latbench serve` connects
again instead, until --connect-timeout passes without a welcome); 2 for bad flags; 130 on a
signal (its workers aborted first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from latbench.agents.agent import Agent, AgentExit, AgentOptions
from latbench.agents.protocol import TOKEN_ENV, coordinator_url, read_token
from latbench.cli.common import Exit, new_loop, on_loop_signals, print_error
from latbench.load.cpus import usable_cpus
from latbench.records.record import location_problem
from latbench.shared.errors import SpecError

INDEX_ENV = "JOB_COMPLETION_INDEX"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run load for a coordinator (latbench run --agents N, or latbench serve)",
        description="Connect to a coordinator and run the shards of its runs on this machine's "
        "worker processes (docs/distributed.md).",
    )
    p.add_argument(
        "--coordinator",
        required=True,
        metavar="URL",
        help="the coordinator's agent endpoint, e.g. ws://10.0.0.5:8790 (path /v1/agents)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"the shared agent token (default: the environment variable {TOKEN_ENV})",
    )
    p.add_argument(
        "--index",
        type=int,
        metavar="N",
        help=f"this agent's index (default: {INDEX_ENV}, else the coordinator picks)",
    )
    p.add_argument(
        "--location", metavar="LABEL", help="where this agent sends from (a region, a data centre)"
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="K",
        help="worker processes per run (default: one fewer than this machine's usable CPUs)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="keep trying to reach the coordinator this long (default 120); a service's agent "
        "allows each outage this long",
    )


def options(ns: argparse.Namespace) -> AgentOptions:
    """The flags checked; SpecError naming the first bad one."""
    try:
        url = coordinator_url(ns.coordinator)
    except ValueError as e:
        raise SpecError(str(e)) from None
    token = read_token(ns.token_file, "--token-file")
    index = ns.index
    if index is None and os.environ.get(INDEX_ENV, "").strip():
        text = os.environ[INDEX_ENV].strip()
        if not text.isdigit():
            raise SpecError(f"{INDEX_ENV}={text!r}: not an index (0, 1, ...)")
        index = int(text)
    if index is not None and index < 0:
        raise SpecError(f"--index {index}: give 0 or more")
    problem = None if ns.location is None else location_problem(ns.location)
    if problem is not None:
        raise SpecError(f"--location {ns.location!r:.80} {problem} (e.g. eu-west-1)")
    workers = ns.workers if ns.workers is not None else max(1, usable_cpus() - 1)
    if not 1 <= workers <= 255:
        raise SpecError(f"--workers {workers}: give 1 to 255")
    if not ns.connect_timeout >= 0:
        raise SpecError(f"--connect-timeout {ns.connect_timeout:g}: give 0 or more seconds")
    return AgentOptions(url, token, index, ns.location, workers, ns.connect_timeout)


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    opts = options(ns)
    interrupted = False

    def say(line: str) -> None:
        err.print(f"agent: {line}", highlight=False, soft_wrap=True)

    async def serve() -> None:
        task = asyncio.current_task()
        assert task is not None
        agent = Agent(opts, say)

        def on_signal() -> None:
            nonlocal interrupted
            interrupted = True
            # The coordinator hears why, and the workers are aborted before run() returns.
            agent.stop_reason = "the agent was stopped by a signal"
            task.cancel()

        on_loop_signals(on_signal)
        await agent.run()

    try:
        with asyncio.Runner(loop_factory=new_loop) as r:
            r.run(serve())
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return int(Exit.INTERRUPTED)
    except AgentExit as e:
        print_error(err, e)
        return int(Exit.ERROR)
    return int(Exit.OK)
