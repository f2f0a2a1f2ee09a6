"""The command line of latbench's file generators (deploy/prometheus/generate_rules.py,
grafana/dashboards.py): write the generated files, or with `--check` name each committed copy
that differs from the generator's output and exit 1.

Those generators are scripts in folders that are not packages, run as files; the installed
`latbench` is the one place both can import from without path tricks, and `shared` imports
nothing of latbench's, so a script pulls in no stage by using it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path


def write_or_check(
    outputs: Callable[[], dict[Path, str]],
    description: str,
    rerun: str,
    argv: Sequence[str] | None = None,
) -> int:
    """`rerun`: the command the stale-file message tells the reader to run."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    ns = p.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if ns.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{path} differs from the generator's output; run {rerun}")
    return 1 if stale else 0
