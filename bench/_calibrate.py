"""Calibration of the measured error bound: latbench under graded starvation, scored against truth.

latbench is pinned to CPU 0 together with busy processes whose nice levels set how much of that
core they take (none, nice 19, nice 0, two at nice 0); the simulator runs on CPU 1, so the
server's side stays the same while the client is starved more and more. Each level is run at 16,
64 and 256 streams. A row sets, over the same matched requests, latbench's true TTFT and ITL
error (its percentile minus the truth's) beside the bound it measured (summary.bound, from the
records' sent_late and ev_late) and the verdict the run itself gave. The bound must be at or
above the error's size on every row (less the transport's microseconds: `BoundCheck.holds`, which
the table's column calls), and a run whose error is inside the tolerance (5 ms TTFT p99, 1 ms ITL
p99) should pass. The send leg
(t_sent to the server's kernel arrival) and the receive leg (the server's write to latbench's
stamp) show where an error sits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import orjson

from bench._simfarm import SimFarm
from bench._tools import Point, run_latbench
from bench._truth import BoundCheck, check_bound, decompose
from latbench.sim import SimConfig

HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"
LEVELS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("none", ()),
    ("nice 19", (19,)),
    ("nice 0", (0,)),
    ("2 x nice 0", (0, 0)),
)
STREAMS = (16, 64, 256)
TTFT_TOLERANCE_MS, ITL_TOLERANCE_MS = 5.0, 1.0


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


def calibrate(
    pt: Point, out: Path, streams: tuple[int, ...] = STREAMS, levels: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    rows = []
    config = SimConfig(ttft=pt.ttft_s, itl=pt.itl_s, seed=1)
    (out / "calibrate").mkdir(parents=True, exist_ok=True)
    chosen = [lv for lv in LEVELS if not levels or lv[0] in levels]
    with SimFarm(config, 1, log=out / "calibrate" / "simulator.log") as farm:
        for pid in farm.pids:
            os.sched_setaffinity(pid, {1})  # the hogs stay off the server's core
        for k in streams:
            for name, nices in chosen:
                d = out / "calibrate" / f"c{k}-{name.replace(' ', '')}"
                d.mkdir(parents=True, exist_ok=True)
                farm.reset()
                with hogs(nices, pt.duration_s + pt.warmup_s + 60):
                    time.sleep(0.2)  # let the hogs start before the client does
                    run = run_latbench(farm.url, replace(pt, streams=k), d, None, on_cpu0())
                entries = farm.truth()
                (d / "truth.json").write_bytes(orjson.dumps(entries))  # to score again
                if not run.ttft_ms:
                    rows.append({"level": name, "streams": k, "failed": run.log[-300:]})
                    print(rows[-1], flush=True)
                    continue
                # The run's own measured requests, matched against all the truth: at 256 streams
                # the closed loop sends in waves, and a window read off the truth's arrivals can
                # miss a whole wave.
                measured = [r for r in run.records if r.phase == "measure"]
                legs = decompose(measured, entries, None)
                rows.append(
                    {
                        "level": name,
                        "streams": k,
                        "loop_lag_p99_ms": run.extra["loop_lag_p99_ms"],
                        "worker_cpu": run.extra["client_cpu"],
                        "client_bound": run.extra["client_bound"],
                        "reasons": run.extra["reasons"],
                        "check": asdict(check_bound(measured, entries, None)),
                        "decomposition": asdict(legs),
                    }
                )
                print(rows[-1], flush=True)
                with (out / "calibrate" / "rows.jsonl").open("a") as f:  # kept if a later row fails
                    f.write(json.dumps(rows[-1], default=float) + "\n")
    return rows


def _pair(d: dict[Any, float] | None, digits: int = 2) -> str:
    if d is None:
        return "unknown"
    return f"{d[50.0]:+.{digits}f} / {d[99.0]:+.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| streams | busy processes on the client's core | TTFT error p50 / p99 (ms) "
        "| TTFT bound p50 / p99 (ms) | ITL error p50 / p99 (ms) | ITL bound p50 / p99 (ms) "
        "| bound >= error | verdict | send leg p50 / p99 (ms) | receive leg p50 / p99 (ms) "
        "| loop lag p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['streams']} | {r['level']} | failed | | | | | | | | |")
            continue
        c, d = r["check"], r["decomposition"]
        t_b, i_b = c["ttft_bound_ms"], c["itl_bound_ms"]
        holds = BoundCheck(**c).holds()  # the tested rule, not a copy of it
        inside = (
            abs(c["ttft_err_ms"][99.0]) <= TTFT_TOLERANCE_MS
            and abs(c["itl_err_ms"][99.0]) <= ITL_TOLERANCE_MS
        )
        verdict = "flagged" if r["client_bound"] else "pass"
        verdict += " (error inside tolerance)" if inside else " (error outside tolerance)"
        lines.append(
            f"| {r['streams']} | {r['level']} | {_pair(c['ttft_err_ms'])} | {_pair(t_b)} "
            f"| {_pair(c['itl_err_ms'], 3)} | {_pair(i_b, 3)} "
            f"| {'unknown' if holds is None else ('yes' if holds else '**no**')} | {verdict} "
            f"| {_pair(d['send_to_arrival_ms'], 3)} | {_pair(d['write_to_read_ms'], 3)} "
            f"| {r['loop_lag_p99_ms']:.2f} |"
        )
    return "\n".join(lines)
