"""`latbench` as a user runs it: a child process of this Python, in a test. One place for the
helpers every command-line test shares, so they cannot drift apart."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

# This Python's `latbench`, as the package is in the tree (it is installed editable).
COMMAND = (sys.executable, "-m", "latbench")

# A safety cap: a test that hangs fails after it rather than holding CI. Each test asserts its
# own, tighter, bound where time is what it tests.
TIMEOUT_S = 300.0

# Changes to this process's environment for the child: a value sets the variable, None removes
# it (a test of what happens when a variable is missing must not inherit it from the shell).
Env = Mapping[str, str | None]


def environ(env: Env | None) -> dict[str, str] | None:
    """The child's whole environment: this process's with `env` applied (None: inherited)."""
    if env is None:
        return None
    merged = {**os.environ, **env}
    return {k: v for k, v in merged.items() if v is not None}


def latbench(
    *args: str,
    timeout: float = TIMEOUT_S,
    env: Env | None = None,
    cwd: Path | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`latbench ARGS` run to its end: exit status, stdout and stderr."""
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=environ(env),
        cwd=cwd,
        preexec_fn=preexec_fn,
    )


def spawn(
    *args: str,
    env: Env | None = None,
    stdout: int | IO[str] = subprocess.PIPE,
    stderr: int | IO[str] = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """`latbench ARGS` started, for a test that signals it or reads it while it runs."""
    return subprocess.Popen(
        [*COMMAND, *args], stdout=stdout, stderr=stderr, text=True, env=environ(env)
    )
