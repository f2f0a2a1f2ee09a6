"""`python -m bench`: latbench, GuideLLM and AIPerf side by side against one simulator config,
each scored against the simulator's own truth; writes results JSON and the table in
docs/performance.md (between its `bench:table` markers).

Points (closed loop, chat, 16-word prompts, 128 output tokens): `c16`, `c64`, `c256` with TTFT
50 ms and ITL 10 ms, and `peak` (64 streams, TTFT 0, ITL 0) for ingest capacity. Per point the
simulator farm is started once, and each tool runs in turn against it after a truth reset.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bench._calibrate import calibrate
from bench._calibrate import table as calibration_table
from bench._simfarm import SimFarm
from bench._tools import TOOLS, Point, ToolRun
from bench._truth import TruthStats, decompose, score
from latbench.sim import SimConfig

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:table -->", "<!-- /bench:table -->"
CAL_BEGIN, CAL_END = "<!-- bench:calibration -->", "<!-- /bench:calibration -->"


def points(duration: float, warmup: float) -> dict[str, Point]:
    return {
        "c16": Point("c16", 16, 0.05, 0.01, duration, warmup),
        "c64": Point("c64", 64, 0.05, 0.01, duration, warmup),
        "c256": Point("c256", 256, 0.05, 0.01, duration, warmup),
        "peak": Point("peak", 64, 0.0, 0.0, duration, warmup),
    }


def run_point(
    pt: Point, tools: list[str], sim_procs: int, workers: int | None, out: Path
) -> list[dict[str, Any]]:
    rows = []
    config = SimConfig(ttft=pt.ttft_s, itl=pt.itl_s, seed=1)
    (out / pt.name).mkdir(parents=True, exist_ok=True)
    with SimFarm(config, sim_procs, log=out / pt.name / "simulator.log") as farm:
        for tool in tools:
            d = out / pt.name / tool
            d.mkdir(parents=True, exist_ok=True)
            farm.reset()
            sim0, t0 = farm.cpu(), time.monotonic()
            run = TOOLS[tool](farm.url, pt, d, workers)
            sim1, t1 = farm.cpu(), time.monotonic()
            entries = farm.truth()
            (d / "truth.json").write_bytes(orjson.dumps(entries))  # to score again, or split
            truth = score(entries, skip_s=pt.warmup_s, tail_s=1.0)
            rows.append(row(pt, run, truth, sim0, sim1, t0, t1))
            if run.records:
                rows[-1]["decomposition"] = asdict(decompose(run.records, entries, truth.window))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def row(pt: Point, run: ToolRun, truth: TruthStats, sim0: list[float], sim1: list[float], t0: float,
        t1: float) -> dict[str, Any]:  # fmt: skip
    # The steady stretch: from the end of warm-up to 1 s before the last arrival, read off the
    # server's own clock (CLOCK_MONOTONIC, the clock the process monitor samples too).
    lo_hi = truth_window(truth)
    cores, rss = run.monitor.between(*lo_hi) if lo_hi else (float("nan"), 0)
    workers_rss = run.monitor.peak_below_root(*lo_hi) if lo_hi else 0
    truth_itl = truth.itl_ms if run.itl_kind == "pooled" else truth.tpot_ms
    busy_sim = max(((b - a) / (t1 - t0) for a, b in zip(sim0, sim1, strict=True)), default=0)
    return {
        "point": pt.name,
        "tool": run.tool,
        "streams": pt.streams,
        "exit": run.exit_code,
        "wall_s": round(run.wall_s, 1),
        "ttft_ms": run.ttft_ms,
        "itl_ms": run.itl_ms,
        "itl_kind": run.itl_kind,
        "truth": asdict(truth),
        "ttft_err_ms": {p: run.ttft_ms[p] - truth.ttft_ms[p] for p in run.ttft_ms},
        "itl_err_ms": {p: run.itl_ms[p] - truth_itl[p] for p in run.itl_ms},
        "ingest_tok_s": truth.ingest_tok_s,
        "client_cores": cores,
        "client_rss_mb": rss / 1e6,
        "workers_rss_mb": workers_rss / 1e6,  # latbench: its workers, without the runner
        "sim_busiest_cores": busy_sim,
        "extra": run.extra,
        "log": run.log,
    }


def truth_window(truth: TruthStats) -> tuple[float, float] | None:
    return None if truth.window is None else (truth.window[0] / 1e9, truth.window[1] / 1e9)


def fmt(x: float | None, digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+,.{digits}f}" if sign else f"{x:,.{digits}f}"


def pair(d: dict[Any, float], digits: int = 1) -> str:
    if not d:
        return "failed"
    return f"{fmt(d.get(50.0), digits, True)} / {fmt(d.get(99.0), digits, True)}"


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "| point | tool | TTFT error p50 / p99 (ms) | ITL error p50 / p99 (ms) | ingest (tok/s) "
        "| send leg p50 / p99 (ms) | receive leg p50 / p99 (ms) "
        "| client CPU (cores) | client RSS (MB) | simulator CPU, busiest process (cores) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        notes = []
        if r["exit"] != 0:
            notes.append(f"exit {r['exit']}")
        if r["itl_kind"] == "mean":
            notes.append("ITL = per-request mean gap")
        if r["extra"].get("client_bound"):
            notes.append("flagged client-bound")
        # Where latbench's error sits (its records matched to the server's requests): the send
        # leg, t_sent to the server's kernel arrival; the receive leg, each event's server write
        # to latbench's stamp. The peers keep no per-request stamps to split.
        legs = r.get("decomposition")
        send = pair(legs["send_to_arrival_ms"], 3) if legs else "-"
        receive = pair(legs["write_to_read_ms"], 3) if legs else "-"
        lines.append(
            f"| {r['point']} | {r['tool']} | {pair(r['ttft_err_ms'])} | {pair(r['itl_err_ms'], 2)} "
            f"| {fmt(r['ingest_tok_s'], 0)} | {send} | {receive} | {fmt(r['client_cores'], 2)} "
            f"| {fmt(r['client_rss_mb'], 0)} | {fmt(r['sim_busiest_cores'], 2)} "
            f"| {'; '.join(notes)} |"
        )
    lines += ["", *ratios(rows), "", *[f"- {k}: {v}" for k, v in meta.items()]]
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["point"], r["tool"]): r for r in rows}
    out = []
    peers = ("guidellm", "aiperf")

    def best_peer(point: str, key: str, low: bool) -> tuple[str, float] | None:
        vals = [(t, by[(point, t)][key]) for t in peers if (point, t) in by]
        vals = [(t, v) for t, v in vals if v == v and v]
        if not vals:
            return None
        return min(vals, key=lambda x: x[1]) if low else max(vals, key=lambda x: x[1])

    if ("peak", "latbench") in by and (bp := best_peer("peak", "ingest_tok_s", low=False)):
        lb = by[("peak", "latbench")]["ingest_tok_s"]
        out.append(
            f"- Capacity: peak ingest latbench {fmt(lb, 0)} tok/s vs best peer ({bp[0]}) "
            f"{fmt(bp[1], 0)} tok/s: **{lb / bp[1]:.2f}x** (target >= 2x)."
        )
    if ("c16", "latbench") in by and (bp := best_peer("c16", "client_cores", low=True)):
        lb = by[("c16", "latbench")]["client_cores"]
        out.append(
            f"- Cost: client CPU at 16 streams latbench {fmt(lb, 3)} cores vs best peer "
            f"({bp[0]}) {fmt(bp[1], 3)} cores: **{lb / bp[1]:.2f}x** (target < 0.33x)."
        )
    for tool in ("latbench", *peers):
        a, b = by.get(("c16", tool)), by.get(("c256", tool))
        if a and b and a["client_rss_mb"] and b["client_rss_mb"]:
            per = (b["client_rss_mb"] - a["client_rss_mb"]) / (b["streams"] - a["streams"]) * 1e3
            line = (
                f"- Memory per in-flight stream, {tool}: {fmt(per, 0)} kB "
                f"(RSS of all its processes at 256 streams minus at 16, over 240 streams"
            )
            if tool == "latbench" and a["workers_rss_mb"] and b["workers_rss_mb"]:
                w = (b["workers_rss_mb"] - a["workers_rss_mb"]) / (b["streams"] - a["streams"])
                line += (
                    f"; the workers alone, which hold only in-flight state: {fmt(w * 1e3, 0)} kB"
                    "; the rest is the runner's list of finished records, which grows with the "
                    "run, not with the streams"
                )
            out.append(line + ").")
    return out


def write_doc(text: str, begin: str = BEGIN, end: str = END) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    if begin not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    DOC.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--duration", type=float, default=40.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=5.0, help="excluded seconds per point")
    ap.add_argument("--points", default="c16,c64,c256,peak")
    ap.add_argument("--tools", default="latbench,guidellm,aiperf")
    ap.add_argument("--sim-procs", type=int, default=2, help="simulator processes (SO_REUSEPORT)")
    ap.add_argument(
        "--workers", type=int, default=None, help="latbench --workers (default: its own)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results")
    ap.add_argument("--write-doc", action="store_true", help="put the table in docs/performance.md")
    ap.add_argument(
        "--calibrate",
        action="store_true",
        help="also run latbench under graded starvation (the c64 point's load, at each of "
        "--calibrate-streams) against the measured error bound",
    )
    ap.add_argument("--calibrate-streams", default="16,64,256")
    ap.add_argument("--calibrate-levels", default="", help="starvation levels (default: all)")
    ns = ap.parse_args(argv)
    pts = points(ns.duration, ns.warmup)
    tools = [t for t in ns.tools.split(",") if t]
    names = [p for p in ns.points.split(",") if p]
    out = ns.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for name in names:
        rows.extend(run_point(pts[name], tools, ns.sim_procs, ns.workers, out))
    calibration: list[dict[str, Any]] = []
    if ns.calibrate:
        calibration = calibrate(
            pts["c64"],
            out,
            tuple(int(k) for k in ns.calibrate_streams.split(",") if k),
            tuple(lv for lv in ns.calibrate_levels.split(",") if lv),
        )
    load_after = os.getloadavg()
    meta = {
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load average (1/5/15 min) before": " / ".join(f"{x:.2f}" for x in load_before),
        "load average (1/5/15 min) after": " / ".join(f"{x:.2f}" for x in load_after),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "per point": f"{ns.warmup:g} s warm-up (excluded) + {ns.duration:g} s measured",
        "simulator processes": ns.sim_procs,
    }
    results = {"meta": meta, "rows": rows, "calibration": calibration}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(rows, meta) if rows else ""
    cal = ""
    if calibration:
        cal = calibration_table(calibration)
        cal_meta = {**meta, "simulator processes": "1, pinned to CPU 1 (latbench on CPU 0)"}
        cal += "\n\n" + "\n".join(f"- {k}: {v}" for k, v in cal_meta.items())
    print(text + ("\n\n" if text and cal else "") + cal)
    if ns.write_doc:
        if rows:
            write_doc(text)
        if cal:
            write_doc(cal, CAL_BEGIN, CAL_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
