"""`python -m bench.ab --off VAR=VALUE`: latbench as it is ("on") against latbench with one of
its engine choices turned off by an environment variable ("off"), side by side:

    LATBENCH_EAGER_WRITES=0   aiohttp's request writes a loop turn later (latbench/load/eager.py)
    LATBENCH_KERNEL_STAMPS=0  arrivals stamped at the protocol's read on uvloop, not by the kernel
                              (latbench/shared/rxstamp.py; the simulator's truth too)

(At commit 0fe6e20, LATBENCH_WORKER_NICE=0 turned off workers at nice -10; see
docs/performance.md for why that was measured and not kept.)

Alternates the two (ABBA) for --rounds rounds of latbench alone at one harness point (default c64:
64 streams of 128 tokens, TTFT 50 ms, ITL 10 ms), and prints the medians over rounds of the
TTFT error against the simulator's truth and of its send leg (client send -> server handler),
with the ratios on / off. Loopback only; about a minute per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any


def one(point: str, duration: int, off: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, **off}
    cmd = [sys.executable, "-m", "bench", "--duration", str(duration), "--warmup", "3",
           "--points", point, "--tools", "latbench"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    row = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return {
        "ttft_err_p50_ms": row["ttft_err_ms"]["50.0"],
        "ttft_err_p99_ms": row["ttft_err_ms"]["99.0"],
        "send_p50_ms": row["decomposition"]["send_to_arrival_ms"]["50.0"],
        "send_p99_ms": row["decomposition"]["send_to_arrival_ms"]["99.0"],
        "itl_err_p99_ms": row["itl_err_ms"]["99.0"],
        "loop_lag_p99_ms": row["extra"]["loop_lag_p99_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=25, help="measured seconds per run")
    ap.add_argument("--point", default="c64")
    ap.add_argument("--off", required=True, metavar="VAR=VALUE", help="what turns the choice off")
    ns = ap.parse_args()
    var, _, value = ns.off.partition("=")
    rows: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for i in range(ns.rounds):
        # ABBA: each arm goes first in half the rounds, so drift over time favours neither.
        for arm in ("on", "off") if i % 2 == 0 else ("off", "on"):
            rows[arm].append(one(ns.point, ns.duration, {var: value} if arm == "off" else {}))
            print(arm, json.dumps(rows[arm][-1]), file=sys.stderr, flush=True)
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in rows.items()}
    report = {
        "command": " ".join([sys.executable, "-m", "bench.ab", *sys.argv[1:]]),
        "median": med,
        "ratio_on_over_off": {
            k: round(med["on"][k] / med["off"][k], 2) if med["off"][k] else None for k in med["on"]
        },
        "rounds": rows,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
