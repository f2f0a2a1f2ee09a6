"""`latbench sim`: the built-in simulator as a server of its own. Its flags and start-up live
with the simulator (`latbench.sim.__main__`, also `python -m latbench.sim`); this mounts them."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from latbench.cli.common import Exit
from latbench.sim.__main__ import add_sim_arguments, config_from_args
from latbench.sim.__main__ import run as serve_sim


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "sim", help="serve the built-in simulator (OpenAI, Anthropic or Responses API)"
    )
    add_sim_arguments(p)


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    serve_sim(config_from_args(ns))
    return Exit.OK
