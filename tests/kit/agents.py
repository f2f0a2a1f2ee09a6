"""Agents as a user starts them, for tests: `latbench agent` child processes of this Python,
over loopback, with the one token the tests share; every one started is stopped at teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from kit.cli import COMMAND

TOKEN = "test-agent-token-" + "0123456789abcdef" * 2  # long enough for check_token


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agents:
    """Starts `latbench agent` processes; `stop_all` ends those still running (SIGTERM, then
    SIGKILL) and reaps them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self,
        coordinator: str,
        *,
        index: int | None = None,
        location: str | None = None,
        workers: int = 1,
        token: str = TOKEN,
        connect_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        own_group: bool = False,
    ) -> subprocess.Popen[str]:
        """`own_group`: in a process group of its own (its pid), with its workers, so that a
        test can signal them all (os.killpg) without signalling itself."""
        args = [*COMMAND, "agent", "--coordinator", coordinator, "--workers", str(workers)]
        args += ["--connect-timeout", str(connect_timeout)]
        if index is not None:
            args += ["--index", str(index)]
        if location is not None:
            args += ["--location", location]
        child_env = {**os.environ, "LATBENCH_AGENT_TOKEN": token, **(env or {})}
        child_env.pop("JOB_COMPLETION_INDEX", None)
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env,
            start_new_session=own_group,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


@contextmanager
def agents() -> Iterator[Agents]:
    a = Agents()
    try:
        yield a
    finally:
        a.stop_all()
