"""`latbench serve`: run as a service (docs/service.md). The service's flags and start-up live in
`latbench.service`, which loads its app only when this command runs; this mounts them."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from latbench.cli.common import new_loop
from latbench.service import add_serve_arguments, cmd_serve


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("serve", help="run as a service: HTTP API, schedules (docs/service.md)")
    add_serve_arguments(p)


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    return cmd_serve(ns, err, new_loop)
