"""Several simulator processes behind one port (SO_REUSEPORT), and their merged truth.

One Python simulator process writes a few tens of thousands of events per second at most; the
harness checks each process's CPU after every point (`cpu_busiest`), and runs more processes
when one would be the bottleneck. The kernel spreads connections over the processes; each
process keeps its own truth, read through its private admin port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Self

import orjson

from bench._procmon import cpu_seconds
from latbench.shared.child import Child, StartStop
from latbench.sim import SimConfig
from latbench.vllm.launch import free_port

ROOT = Path(__file__).resolve().parents[1]


class SimFarm(StartStop):
    def __init__(self, config: SimConfig, processes: int = 1, log: Path | None = None) -> None:
        self.config = config
        self.processes = processes
        # The simulator logs every client that hangs up mid-request (peers cancel their
        # in-flight requests at the end of a run): that goes to a file, not the harness output.
        self.log = log
        self.port = 0
        self._children: list[Child] = []
        self._admin: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children]

    def start(self) -> Self:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["LATBENCH_SIM_PARENT_PID"] = str(os.getpid())
        # Bind the shared port first in the harness, so every child can join it with
        # SO_REUSEPORT; keep no socket open here (the kernel would route connections to it).
        self.port = free_port()
        cfg = self.config.model_dump_json()
        err = self.log.open("ab") if self.log is not None else None
        try:
            for _ in range(self.processes):
                child = Child(
                    [sys.executable, "-m", "bench._simchild", cfg, str(self.port)],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    env=env,
                    cwd=ROOT,
                )
                self._children.append(child)
                assert child.proc.stdout is not None
                line = child.proc.stdout.readline().split()
                if len(line) != 3 or line[0] != "bench-sim":
                    raise RuntimeError(f"simulator process did not start: {line!r}")
                self._admin.append(int(line[2]))
        except BaseException:
            self.stop()
            raise
        finally:
            if err is not None:
                err.close()  # each child holds its own copy
        return self

    def stop(self) -> None:
        # All are asked first, then waited on: they stop in parallel.
        for c in self._children:
            c.terminate()
        for c in self._children:
            c.reap(5)

    def _call(self, admin: int, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method=method)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return orjson.loads(resp.read())

    def reset(self) -> None:
        for a in self._admin:
            self._call(a, "/sim/truth/reset", "POST")

    def truth(self) -> list[dict[str, Any]]:
        """Every request all processes saw since the last reset: arrival and event instants."""
        out: list[dict[str, Any]] = []
        for a in self._admin:
            out.extend(self._call(a, "/sim/truth?raw=1")["requests"])
        return out

    def cpu(self) -> list[float]:
        """CPU seconds used so far by each simulator process."""
        return [cpu_seconds(pid) for pid in self.pids]
