"""A child process whose whole life the parent owns: started, waited on until it is ready (with a
deadline), and stopped (SIGTERM, then SIGKILL after a grace period).

The simulator (`latbench.sim.process`), a launched vLLM (`latbench.vllm.launch`) and the
benchmark harness's simulator farm (`bench/_simfarm.py`) all hold children this way. A child
that outlives its benchmark keeps a port and a core busy and skews the next run, so the stop is
spelled once, here. It lives in `shared` because the simulator may import nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self


class Child:
    """One child process. With `own_group` it leads a new process group: a Ctrl-C at the
    terminal reaches the parent only (which decides when the child stops), and the stop's
    signals reach everything the child started (a server's worker processes) too."""

    def __init__(self, cmd: Sequence[str], *, own_group: bool = False, **popen: Any) -> None:
        self.own_group = own_group
        self.proc: subprocess.Popen[Any] = subprocess.Popen(
            cmd, start_new_session=own_group, **popen
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(
        self,
        ready: Callable[[], bool],
        timeout_s: float,
        *,
        every_s: float,
        exited: Callable[[int], Exception],
        late: Callable[[], Exception],
    ) -> None:
        """Return once `ready()` is true (it may block a moment itself, as an Event's wait does);
        raise `exited(status)` if the child ends first, `late()` past the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            # Exited first, then ready: a child that died is not ready, even when something
            # else answers on the port it was given.
            if self.proc.poll() is not None:
                raise exited(self.proc.returncode)
            if ready():
                return
            if time.monotonic() > deadline:
                raise late()
            time.sleep(every_s)

    def terminate(self) -> None:
        """SIGTERM, if the child still runs; `reap` waits for it. Apart, so that many children
        can be asked at once and then waited on in turn."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)

    def reap(self, grace_s: float) -> int:
        """Wait `grace_s` for the child to exit, then SIGKILL it; its exit status."""
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        if self.own_group:
            # Processes it started may outlive it by a moment; they share its group.
            self._signal(signal.SIGKILL)
        return self.proc.returncode

    def stop(self, grace_s: float) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `grace_s`; its exit status."""
        self.terminate()
        return self.reap(grace_s)

    def _signal(self, sig: signal.Signals) -> None:
        if not self.own_group:
            self.proc.send_signal(sig)  # a no-op once the child has been reaped
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class StartStop:
    """A context manager over `start()` and `stop()`, for the classes that hold children: the
    child is stopped however the block ends."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
