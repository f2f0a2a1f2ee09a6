"""The `latbench` command: the parser, built from one module per subcommand, and the dispatch.

Each subcommand module (cli/run.py, cli/sweep.py, ...) has `add_arguments(subparsers)` and
`main(ns, console, err) -> exit status`; they share only `cli.common` (the exit-code table is
there). Errors that end a command are turned into its exit status here, once for all of them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from rich.console import Console

from latbench import __version__
from latbench.cli import agent, compare, report, run, runs, serve, sim, submit, summary, sweep
from latbench.cli.common import Exit, print_error
from latbench.shared.errors import LatbenchError, SpecError

# The first line of `latbench --help`, as it has always read.
DESCRIPTION = (
    "Command line: `latbench run`, `sim`, `summary`; the service: `serve`, `submit`, `runs`;"
)


class Command(Protocol):
    def add_arguments(self, sub: Any) -> None: ...

    def main(self, ns: argparse.Namespace, console: Console, err: Console) -> int: ...


# In the order `latbench --help` lists them.
COMMANDS: dict[str, Command] = {
    "run": run,
    "sim": sim,
    "summary": summary,
    "serve": serve,
    "submit": submit,
    "runs": runs,
    "sweep": sweep,
    "report": report,
    "compare": compare,
    "agent": agent,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latbench", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"latbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_arguments(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        return int(COMMANDS[ns.command].main(ns, console, err))
    except SpecError as e:
        print_error(err, e)
        return int(Exit.USAGE)
    except LatbenchError as e:
        print_error(err, e)
        return int(Exit.ERROR)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
