"""Run the simulator in a child process, so its event loop never competes with the client's.

with SimProcess(SimConfig(ttft=0.05)) as sim:
    ...  # talk to sim.url + "/v1/completions"
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Self

from latbench.shared.child import Child, StartStop
from latbench.sim.config import SimConfig

_READY_PREFIX = "latbench-sim listening on "
# The directory that holds the `latbench` package, so the child imports this same copy.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])


# The child exits when this process dies, even by SIGKILL, so a killed benchmark leaves no server.
PARENT_ENV = "LATBENCH_SIM_PARENT_PID"


class SimError(RuntimeError):
    """The simulator process could not be started."""


class SimProcess(StartStop):
    """A simulator child process; a context manager that starts it and stops it."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._child: Child | None = None
        self._url: str | None = None
        self._ready = threading.Event()
        self._stderr_tail: deque[str] = deque(maxlen=200)
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """Base URL without `/v1`, e.g. `http://127.0.0.1:40123`."""
        if self._url is None:
            raise SimError("the simulator is not running; call start() or use `with`")
        return self._url

    @property
    def pid(self) -> int:
        if self._child is None:
            raise SimError("the simulator is not running; call start() or use `with`")
        return self._child.pid

    @property
    def stderr(self) -> str:
        """The last lines the child wrote to stderr."""
        return "".join(self._stderr_tail)

    def start(self) -> Self:
        if self._child is not None:
            raise SimError("this SimProcess was already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_IMPORT_ROOT, env.get("PYTHONPATH")) if p)
        env[PARENT_ENV] = str(os.getpid())
        cmd = [sys.executable, "-m", "latbench.sim", "--config-json", self.config.model_dump_json()]
        self._child = child = Child(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.proc.stdout is not None and child.proc.stderr is not None
        # Both pipes are read for the child's whole life, so a full pipe can never block it.
        self._spawn(self._read_stdout, child.proc.stdout)
        self._spawn(self._read_stderr, child.proc.stderr)
        try:
            child.wait_ready(
                lambda: self._ready.wait(0.02),
                self.startup_timeout,
                every_s=0.0,
                exited=self._exited_early,
                late=lambda: SimError(
                    f"the simulator did not listen within {self.startup_timeout:g} s;"
                    f" its stderr:\n{self.stderr}"
                ),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _exited_early(self, status: int) -> SimError:
        self._join_readers()  # its last words, before they are quoted
        return SimError(
            f"the simulator exited with status {status} before listening;"
            f" its stderr:\n{self.stderr}"
        )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `stop_timeout`; its exit status."""
        if self._child is None:
            return None
        status = self._child.stop(self.stop_timeout)
        self._join_readers()
        self._url = None
        return status

    def _spawn(self, target: Callable[[IO[str]], None], stream: IO[str]) -> None:
        t = threading.Thread(target=target, args=(stream,), daemon=True, name="latbench-sim-io")
        t.start()
        self._threads.append(t)

    def _join_readers(self) -> None:
        for t in self._threads:
            t.join(1.0)

    # Each reader closes its pipe at end of file, the child's exit.
    def _read_stdout(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                if not self._ready.is_set() and line.startswith(_READY_PREFIX):
                    self._url = line[len(_READY_PREFIX) :].strip()
                    self._ready.set()

    def _read_stderr(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._stderr_tail.append(line)

    def __repr__(self) -> str:
        state = self._url or ("stopped" if self._child is not None else "not started")
        return f"<SimProcess {state}>"
