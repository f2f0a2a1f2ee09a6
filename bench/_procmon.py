"""CPU and memory of a process tree, read from /proc (Linux), sampled while a tool runs.

A tool's CPU is the sum over its whole process tree (AIPerf and latbench both run several
processes); a process that exits keeps counting with its last sampled value.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0.0
    # Fields after the command name, which may itself hold spaces and parentheses.
    rest = stat[stat.rindex(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    return seen


@dataclass
class Sample:
    t: float  # monotonic seconds
    cpu_s: float  # cumulative CPU seconds of the tree (exited processes at their last value)
    rss: int  # bytes, summed over the live tree
    procs: int
    rss_below_root: int = 0  # the tree without its root: latbench's workers, without the runner


@dataclass
class TreeMonitor:
    """Samples a process tree every `period` seconds on a thread, until `stop()`."""

    root: int
    period: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _last_cpu: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeMonitor:
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-procmon")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> Sample:
        pids = tree(self.root)
        rss = below = 0
        for p in pids:
            c = cpu_seconds(p)
            if c:
                self._last_cpu[p] = c
            r = rss_bytes(p)
            rss += r
            below += r if p != self.root else 0
        s = Sample(time.monotonic(), sum(self._last_cpu.values()), rss, len(pids), below)
        self.samples.append(s)
        return s

    def peak_below_root(self, t0: float, t1: float) -> int:
        return max((s.rss_below_root for s in self.samples if t0 <= s.t <= t1), default=0)

    def between(self, t0: float, t1: float) -> tuple[float, int]:
        """(CPU cores used on average, peak RSS bytes) over samples in [t0, t1]."""
        inside = [s for s in self.samples if t0 <= s.t <= t1]
        if len(inside) < 2:
            return float("nan"), max((s.rss for s in inside), default=0)
        a, b = inside[0], inside[-1]
        return (b.cpu_s - a.cpu_s) / (b.t - a.t), max(s.rss for s in inside)
