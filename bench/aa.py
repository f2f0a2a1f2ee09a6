"""`python -m bench.aa`: how often `latbench compare` calls a row "worse" when nothing changed.

A pool of runs of one configuration against the built-in simulator, each run with its TTFT and
ITL drawn afresh (`--run-spread`, relative standard deviation between runs, default 5 %): a real
server's runs differ by more than the noise inside one run (a cache, a clock, a neighbour), and
the simulator alone does not. Then many A/A comparisons of disjoint runs from that pool, k runs
a side (k = 1, 2, 3), with compare's own code and defaults (95 %, margin 5 %, 1,000 resamples,
ttft/ttfo/itl/tpot/e2e at p50/p90/p99 and three rates). Printed per k: the share of rows called
worse (the false-regression rate, the target is at most 5 %), the share of comparisons that
`--fail-on-regression 5%` would fail, and the share of rows whose run-to-run spread was flagged
as dominating. `--run-spread 0` measures the simulator's own run-to-run variation.

    python -m bench.aa --runs 24 --pairs 200 --k 1,2,3,5 --run-spread 0.05 --duration 3s
    python -m bench.aa --k 1,3,5 --metrics ttft,itl,tpot --percentiles 50,90 --keep POOL

`--shift 0.15` also scores A/B comparisons against a second pool whose TTFT and ITL are 15 %
higher: a gate that never says "worse" would pass the A/A test too. `--metrics`/`--percentiles`
score a gate on fewer rows, as `compare --percentile-metrics
--metric-percentiles` would (the rates always come along); `--margins` the margins to score; the
results are in docs/performance.md ("A/A comparisons").

Pairs share runs from the pool (as many pairs as asked, from a pool of --runs), so they are not
independent: the rates are unbiased, their noise is larger than the count of pairs suggests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from latbench.render.readback import load_run
from latbench.summary.compare import Row, RunSamples, compare_runs

TTFT_S, ITL_S = 0.05, 0.01
# Loose limits: a busy machine must not stop a run at its verdict; the figures are what counts.
SPEC = (
    "validity: {loop_lag_p99: 2s, queue_delay_p99: 2s, client_cpu: 8, ttft_tolerance: 1s,"
    " itl_tolerance: 1s}\n"
)


def make_pool(
    root: Path, runs: int, spread: float, duration: str, seed: int, scale: float = 1.0
) -> list[Path]:
    """`runs` runs under `root` (reused when it has them), TTFT and ITL `scale` times the base."""
    have = sorted(p.parent for p in root.glob("run*/*/records.jsonl"))
    if have:
        print(f"{len(have)} runs reused from {root}", file=sys.stderr)
        return have
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    pool = []
    for i in range(runs):
        ttft, itl = (
            scale * base * max(0.5, 1 + spread * rng.standard_normal()) for base in (TTFT_S, ITL_S)
        )
        out = root / f"run{i:03d}"
        cmd = [sys.executable, "-m", "latbench", "run", "--spec", str(spec), "--out", str(out),
               "--concurrency", "8", "--duration", duration, "--warmup", "0.5s",
               "--output-tokens", "16",
               "--sim", f"ttft={ttft:.6f}", "--sim", f"itl={itl:.6f}"]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode not in (0, 4):  # 4: client-bound, still a run of the configuration
            raise SystemExit(f"run {i} failed ({p.returncode}): {p.stderr[-2000:]}")
        (run_dir,) = out.iterdir()
        pool.append(run_dir)
        print(
            f"run {i + 1}/{runs}: ttft {ttft * 1e3:.2f} ms, itl {itl * 1e3:.2f} ms", file=sys.stderr
        )
    return pool


def is_worse(r: Row, margin: float) -> bool:
    """compare's verdict at another margin, from the row's change and interval."""
    if r.ci is None or r.worse_change is None:
        return False
    lo = r.ci[0] if r.stat else -r.ci[1]  # a rate is worse when it falls
    return lo > 0 and r.worse_change > margin


def aa_rates(
    samples: list[RunSamples],
    k: int,
    pairs: int,
    seed: int,
    margins: list[float],
    metrics: list[str],
    stats: list[str],
    shifted: list[RunSamples] | None = None,
) -> dict[str, Any]:
    """A/A: both sides from `samples`; with `shifted`, B's runs come from it (A/B: power)."""
    rng = np.random.default_rng(seed)
    rows = judged = dominated = 0
    worse = dict.fromkeys(margins, 0)
    failed = dict.fromkeys(margins, 0)
    for i in range(pairs):
        if shifted is None:
            pick = rng.choice(len(samples), size=2 * k, replace=False)
            a, b = [samples[j] for j in pick[:k]], [samples[j] for j in pick[k:]]
        else:
            a = [samples[j] for j in rng.choice(len(samples), size=k, replace=False)]
            b = [shifted[j] for j in rng.choice(len(shifted), size=k, replace=False)]
        result = compare_runs(a, b, metrics=metrics, stats=stats, seed=i)
        rows += len(result)
        judged += sum(r.ci is not None for r in result)
        dominated += sum(r.spread_dominates for r in result)
        for m in margins:
            w = sum(is_worse(r, m) for r in result)
            worse[m] += w
            failed[m] += w > 0
    return {
        "k": k,
        "pairs": pairs,
        "rows": rows,
        "judged_rows": judged,
        "spread_dominates_share_of_rows": dominated / rows,
        "margins": {
            f"{m:.0%}": {
                "worse_share_of_rows": worse[m] / rows,
                "worse_share_of_judged_rows": worse[m] / judged if judged else None,
                "gate_fails_share_of_pairs": failed[m] / pairs,
            }
            for m in margins
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=24, help="runs in the pool (default 24)")
    ap.add_argument("--pairs", type=int, default=200, help="A/A comparisons per k (default 200)")
    ap.add_argument("--run-spread", type=float, default=0.05, help="TTFT/ITL sd between runs")
    ap.add_argument("--duration", default="2s", help="measured time per run (default 2s)")
    ap.add_argument("--k", default="1,2,3", help="runs per side to try (default 1,2,3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--metrics", default="ttft,ttfo,itl,tpot,e2e", help="compared metrics (compare's default)"
    )
    ap.add_argument("--percentiles", default="50,90,99", help="compared percentiles (50,90,99)")
    ap.add_argument("--margins", default="5%,10%", help="verdict margins to score (5%%,10%%)")
    ap.add_argument(
        "--keep", type=Path, help="keep the pool here; runs already in it are reused, not rerun"
    )
    ap.add_argument(
        "--shift",
        type=float,
        help="also A/B: B's runs from a second pool with TTFT and ITL this much higher (0.15)",
    )
    ap.add_argument("--shift-runs", type=int, default=12, help="runs in that pool (default 12)")
    ns = ap.parse_args()
    ks = [int(x) for x in ns.k.split(",")]
    margins = [float(x.strip().rstrip("%")) / 100 for x in ns.margins.split(",")]
    metrics = ns.metrics.split(",")
    stats = [f"p{p.strip()}" for p in ns.percentiles.split(",")]
    if 2 * max(ks) > ns.runs:
        raise SystemExit(f"--runs {ns.runs}: need at least {2 * max(ks)} for k={max(ks)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = ns.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        pool = make_pool(root, ns.runs, ns.run_spread, ns.duration, ns.seed)
        samples = [load_run(p).samples for p in pool]
        out: dict[str, Any] = {
            "command": " ".join(["python -m bench.aa", *sys.argv[1:]]),
            "runs": len(pool),
            "run_spread": ns.run_spread,
            "results": [
                aa_rates(samples, k, ns.pairs, ns.seed + k, margins, metrics, stats) for k in ks
            ],
        }
        if ns.shift is not None:
            b_root = root / f"shift{ns.shift:g}"
            b_pool = make_pool(
                b_root, ns.shift_runs, ns.run_spread, ns.duration, ns.seed + 1, 1 + ns.shift
            )
            shifted = [load_run(p).samples for p in b_pool]
            out["shift"] = ns.shift
            out["shifted_results"] = [
                aa_rates(samples, k, ns.pairs, ns.seed + k, margins, metrics, stats, shifted)
                for k in ks
            ]
    for label, results in (("A/A", out["results"]), ("A/B", out.get("shifted_results", []))):
        for r in results:
            for m, v in r["margins"].items():
                judged = v["worse_share_of_judged_rows"]
                print(
                    f"{label} k={r['k']} margin {m}: worse {v['worse_share_of_rows']:.1%} of "
                    f"{r['rows']} rows ({'-' if judged is None else f'{judged:.1%}'} of "
                    f"{r['judged_rows']} judged), gate fails {v['gate_fails_share_of_pairs']:.1%} "
                    f"of {r['pairs']} pairs; spread dominates "
                    f"{r['spread_dominates_share_of_rows']:.1%} of rows"
                )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
