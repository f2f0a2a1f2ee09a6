"""Calibration of the validity limits: latbench under graded starvation, scored against truth.

latbench is pinned to CPU 0 together with a busy process whose nice level sets how much of that
core it takes (none, then nice 19, 10, 5, 0, then two at nice 0); the simulator runs free on the
other core, so the server's side stays the same while the client's loop lag grows. Each level
gives one row: latbench's own validity signals (loop lag p99, busiest worker's CPU) next to its
TTFT and ITL error against the server's truth. The limits are the largest signals at which the
errors still meet the accuracy targets (TTFT p99 within 5 ms, ITL p99 within 1 ms).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench._simfarm import SimFarm
from bench._tools import Point, run_latbench
from bench._truth import decompose, score
from latbench.sim import SimConfig

HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"
LEVELS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("none", ()),
    ("nice 19", (19,)),
    ("nice 10", (10,)),
    ("nice 5", (5,)),
    ("nice 0", (0,)),
    ("2 x nice 0", (0, 0)),
)


def on_cpu0(nice: int = 0) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, {0})
        if nice:
            os.nice(nice)

    return pin


@contextmanager
def hogs(nices: tuple[int, ...], seconds: float) -> Iterator[None]:
    procs = [
        subprocess.Popen([sys.executable, "-c", HOG.format(s=seconds)], preexec_fn=on_cpu0(n))
        for n in nices
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def calibrate(pt: Point, out: Path) -> list[dict[str, Any]]:
    rows = []
    # The simulator keeps the other core; pinning it there keeps the hogs off the server.
    config = SimConfig(ttft=pt.ttft_s, itl=pt.itl_s, seed=1)
    (out / "calibrate").mkdir(parents=True, exist_ok=True)
    with SimFarm(config, 1, log=out / "calibrate" / "simulator.log") as farm:
        for pid in farm.pids:
            os.sched_setaffinity(pid, {1})
        for name, nices in LEVELS:
            d = out / "calibrate" / name.replace(" ", "")
            d.mkdir(parents=True, exist_ok=True)
            farm.reset()
            with hogs(nices, pt.duration_s + pt.warmup_s + 60):
                time.sleep(0.2)  # let the hogs start before the client does
                run = run_latbench(farm.url, pt, d, 1, on_cpu0())
            entries = farm.truth()
            truth = score(entries, skip_s=pt.warmup_s, tail_s=1.0)
            if not run.ttft_ms:
                rows.append({"level": name, "failed": run.log})
                continue
            rows.append(
                {
                    "level": name,
                    "loop_lag_p99_ms": run.extra["loop_lag_p99_ms"],
                    "worker_cpu": run.extra["client_cpu"],
                    "client_bound": run.extra["client_bound"],
                    "ttft_err_ms": {p: run.ttft_ms[p] - truth.ttft_ms[p] for p in run.ttft_ms},
                    "itl_err_ms": {p: run.itl_ms[p] - truth.itl_ms[p] for p in run.itl_ms},
                    "decomposition": asdict(decompose(run.records, entries, truth.window)),
                }
            )
            print(rows[-1], flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| busy process on the client's core | loop lag p99 (ms) | busiest worker CPU (cores) "
        "| TTFT error p50 / p99 (ms) | ITL error p50 / p99 (ms) | event stamp − server write "
        "p50 / p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['level']} | failed | | | | |")
            continue
        t, i, w = r["ttft_err_ms"], r["itl_err_ms"], r["decomposition"]["write_to_read_ms"]
        lines.append(
            f"| {r['level']} | {r['loop_lag_p99_ms']:.2f} | {r['worker_cpu']:.2f} "
            f"| {t[50.0]:+.2f} / {t[99.0]:+.2f} | {i[50.0]:+.3f} / {i[99.0]:+.3f} "
            f"| {w[50.0]:.3f} / {w[99.0]:.3f} |"
        )
    return "\n".join(lines)
