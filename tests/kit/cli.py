"""`latbench` as a user runs it: a child process of this Python, in a test. One place for the
helpers every command-line test shares, so they cannot drift apart."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

# A safety cap: a test that hangs fails after it rather than holding CI. Each test asserts its
# own, tighter, bound where time is what it tests.
TIMEOUT_S = 300.0


def latbench(
    *args: str, timeout: float = TIMEOUT_S, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`latbench ARGS` run to its end: exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "latbench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def spawn(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """`latbench ARGS` started, for a test that signals it or reads it while it runs."""
    return subprocess.Popen(
        [sys.executable, "-m", "latbench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
