"""`python -m bench.vllm_parity`: `vllm bench serve` (vLLM's own client, run from the e2e venv's
Python) and latbench against one real vLLM and one workload, interleaved A B B A ..., judged
metric by metric with `compare`'s bootstrap over several runs a side.

    eval "$(tests/vllm/setup.sh)"
    python -m bench.vllm_parity --pairs 8 --out /tmp/parity     # ~6 minutes on 2 cores

Without --target it starts the e2e stage's vLLM (tiny random model, CPU, prefix caching off so
that each client's prompts cost the server the same prefill). Workload: vLLM's random dataset
(--input-len tokens of the server's tokenizer, --output-len tokens with ignore_eos) at
--concurrency streams, --requests a run; latbench sends the prompts the same dataset makes with
its own seed (`VllmBench.prompts`), so both sides' prompts have the same token lengths and none
repeats. Each run of either client is checked before it is compared:

- definitions: vLLM's `calculate_metrics` over latbench's --save-detailed arrays must give the
  figures latbench wrote, and latbench's arithmetic over vLLM's stamps the figures vLLM printed
  (the largest relative difference over TTFT, TPOT, ITL and E2E is printed; ~1e-9 is rounding);
- tokens: output tokens per request, and prompt tokens by the server's usage, on both sides.

Then vLLM's runs (A) against latbench's (B): vLLM's per-request arrays become records
(`latbench.vllm.peer.vllm_records`: its own stamps), so both sides go through one arithmetic and
one bootstrap, which resamples runs and then requests (summary/compare.py). Verdicts: same
(within --margin, or not told apart from noise), better (latbench lower), worse. Prints a
Markdown table per API and writes everything to --out/parity.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from latbench.records import read_records
from latbench.summary.compare import RunSamples, compare_runs
from latbench.vllm import VllmServer
from latbench.vllm.launch import free_port
from latbench.vllm.peer import VllmBench, definition_gaps, vllm_records

ENDPOINTS = {
    "completions": ("openai", "/v1/completions"),
    "chat": ("openai-chat", "/v1/chat/completions"),
}
METRICS = ("ttft", "tpot", "itl", "e2e")
VLLM_NAMES = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2e": "e2el"}
STATS = ("mean", "p50", "p90", "p99")
PCTS = [50.0, 90.0, 99.0]
VLLM_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
# The machine is shared with vLLM's busy polling: the run is judged by compare, not by the
# client-bound verdict (which these runs trip, as the e2e tests say).
LOOSE = (
    "validity: {ttft_tolerance: 10s, itl_tolerance: 10s, "
    "loop_lag_p99: 10s, queue_delay_p99: 10s, client_cpu: 1.0}\n"
)


# vLLM's own histograms (the server's side of each request): a referee that times both clients'
# requests alike. Read between runs, never during one, so no client pays for the scrape.
SERVER = {"ttft": "vllm:time_to_first_token_seconds", "e2e": "vllm:e2e_request_latency_seconds"}


def server_sums(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of vLLM's TTFT and E2E histograms, over all label sets."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    out = {}
    for name, family in SERVER.items():
        sums = [0.0, 0.0]
        for line in text.splitlines():
            for i, suffix in enumerate(("_sum", "_count")):
                if line.startswith(family + suffix):
                    sums[i] += float(line.rsplit(" ", 1)[1])
        out[name] = (sums[0], sums[1])
    return out


def server_means(before: dict[str, tuple[float, float]], url: str) -> dict[str, float]:
    """The server's mean TTFT and E2E over the requests since `before`, in seconds."""
    after = server_sums(url)
    means = {}
    for name, (s0, n0) in before.items():
        s1, n1 = after[name]
        means[name] = (s1 - s0) / (n1 - n0) if n1 > n0 else float("nan")
    return means


def vllm_argv(ns: argparse.Namespace, url: str, api: str, seed: int) -> list[str]:
    backend, endpoint = ENDPOINTS[api]
    return [
        "--backend", backend, "--endpoint", endpoint, "--base-url", url, "--model", ns.model_name,
        "--tokenizer", ns.model, "--dataset-name", "random",
        "--random-input-len", str(ns.input_len), "--random-output-len", str(ns.output_len),
        "--num-prompts", str(ns.requests), "--max-concurrency", str(ns.concurrency),
        "--request-rate", "inf", "--seed", str(seed), "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-detailed", "--disable-tqdm",
    ]  # fmt: skip


def latbench_run(
    ns: argparse.Namespace, bench: VllmBench, url: str, api: str, seed: int, d: Path
) -> tuple[dict[str, Any], RunSamples]:
    d.mkdir(parents=True)
    prompts = d / "prompts.jsonl"
    bench.prompts(vllm_argv(ns, url, api, seed), prompts)
    (d / "loose.yaml").write_text(LOOSE)
    cmd = [
        sys.executable, "-m", "latbench", "run", "--target", url, "--api", api,
        "--model", ns.model_name, "--prompts", str(prompts), "--concurrency", str(ns.concurrency),
        "--requests", str(ns.requests), "--temperature", "0", "--spec", str(d / "loose.yaml"),
        "--server-metrics", "off", "--out", str(d / "runs"),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--save-detailed", "--result-dir", str(d), "--result-filename", "v.json",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **VLLM_ENV})
    if p.returncode not in (0, 4):  # 4: client-bound, expected here (see LOOSE)
        raise SystemExit(f"latbench run failed ({p.returncode}):\n{p.stderr[-2000:]}")
    (run_dir,) = (d / "runs").iterdir()
    f = read_records(run_dir / "records.jsonl")
    window = (f.footer.window_start, f.footer.window_end) if f.footer else None
    return json.loads((d / "v.json").read_text()), RunSamples(f.records, window, ())


def definitions_gap(ours: dict[str, Any], vllms: dict[str, Any]) -> float:
    """The largest relative difference between a client's figures and the other's arithmetic
    over the same per-request arrays."""
    worst = 0.0
    for name in VLLM_NAMES.values():
        pairs = [(ours[f"mean_{name}_ms"], vllms[f"mean_{name}_ms"])]
        pairs += [(ours[f"p{p:g}_{name}_ms"], v) for p, v in vllms[f"percentiles_{name}_ms"]]
        for a, b in pairs:
            if b:
                worst = max(worst, abs(a / b - 1.0))
    return worst


def one_api(
    ns: argparse.Namespace, bench: VllmBench, url: str, api: str, out: Path
) -> dict[str, Any]:
    vllm_runs: list[RunSamples] = []
    ours: list[RunSamples] = []
    checks: list[dict[str, Any]] = []
    for i in range(ns.pairs):
        # A B, then B A: a drift of the shared machine weighs on both sides alike.
        for side in ("vllm", "latbench") if i % 2 == 0 else ("latbench", "vllm"):
            seed = 1000 * (i + 1) + (1 if side == "vllm" else 2)
            before = server_sums(url)
            if side == "vllm":
                v = bench.run(vllm_argv(ns, url, api, seed))
                (out / f"{api}-vllm-{i}.json").write_text(json.dumps(v))
                recs = vllm_records(v, run_id=f"vllm-{api}-{i}")
                vllm_runs.append(RunSamples(recs, None, ()))
                gaps = definition_gaps(v, recs)
                check = {"definitions": max(abs(g) for g in gaps.values())}
            else:
                v, samples = latbench_run(ns, bench, url, api, seed, out / f"{api}-latbench-{i}")
                ours.append(samples)
                check = {"definitions": definitions_gap(v, bench.metrics(v, PCTS))}
            server = server_means(before, url)
            check |= {
                # Each client's mean minus the server's own, for the same requests: what the
                # client, HTTP and the network add (the server counts from its engine's
                # arrival, after HTTP parsing and tokenising).
                "outside_server_ms": {
                    m: (v[f"mean_{VLLM_NAMES[m]}_ms"] - server[m] * 1e3) for m in server
                },
                "side": side,
                "pair": i,
                "completed": v["completed"],
                "output_tokens_exact": v["output_lens"] == [ns.output_len] * ns.requests,
                "prompt_tokens_mean": float(np.mean(v["input_lens"])),
                "itl_samples_per_request": sorted({len(x) for x in v["itls"]}),
            }
            checks.append(check)
            print(json.dumps(check), file=sys.stderr)
    rows = compare_runs(
        vllm_runs, ours, metrics=METRICS, stats=STATS, rates=(), margin=ns.margin, seed=0
    )
    spreads = {
        f"{m} {s}": {
            "vllm": [r.estimate(m, s) for r in vllm_runs],
            "latbench": [r.estimate(m, s) for r in ours],
        }
        for m in METRICS
        for s in STATS
    }
    return {"checks": checks, "rows": [r.to_dict() for r in rows], "runs": spreads}


def table(api: str, doc: dict[str, Any]) -> str:
    lines = [
        f"{api}: vLLM (A) vs latbench (B), {len(doc['runs']['ttft mean']['vllm'])} runs a side",
        "",
        "| metric | vLLM runs (ms) | latbench runs (ms) | A | B | B vs A, 95 % | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        key = f"{row['metric']} {row['stat']}"
        span = {
            side: f"{min(v) * 1e3:.2f}-{max(v) * 1e3:.2f}" for side, v in doc["runs"][key].items()
        }
        ci = (
            "-"
            if row["ci_low"] is None
            else f"{row['change']:+.1%} [{row['ci_low']:+.1%}, {row['ci_high']:+.1%}]"
        )
        a = "-" if row["a"] is None else f"{row['a'] * 1e3:.2f}"
        b = "-" if row["b"] is None else f"{row['b'] * 1e3:.2f}"
        verdict = row["verdict"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(
            f"| {key} | {span['vllm']} | {span['latbench']} | {a} | {b} | {ci} | {verdict} |"
        )
    checks = doc["checks"]

    def side(name: str) -> list[dict[str, Any]]:
        return [c for c in checks if c["side"] == name]

    prompt = {n: np.mean([c["prompt_tokens_mean"] for c in side(n)]) for n in ("vllm", "latbench")}
    gaps = {n: sorted({k for c in side(n) for k in c["itl_samples_per_request"]}) for n in prompt}
    outside = {
        (n, m): np.median([c["outside_server_ms"][m] for c in side(n)])
        for n in ("vllm", "latbench")
        for m in SERVER
    }
    lines += [
        "",
        "client mean minus vLLM's own mean for the same requests (median over runs): TTFT "
        f"vLLM {outside['vllm', 'ttft']:+.2f} ms, latbench {outside['latbench', 'ttft']:+.2f} ms; "
        f"E2E vLLM {outside['vllm', 'e2e']:+.2f} ms, latbench {outside['latbench', 'e2e']:+.2f} ms",
        f"definitions: largest relative difference {max(c['definitions'] for c in checks):.1e}; "
        f"output tokens exact in {sum(c['output_tokens_exact'] for c in checks)} of "
        f"{len(checks)} runs; prompt tokens a request: vLLM {prompt['vllm']:.1f}, latbench "
        f"{prompt['latbench']:.1f}; ITL samples a request: vLLM {gaps['vllm']}, latbench "
        f"{gaps['latbench']}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", help="a running vLLM (default: start the e2e stage's)")
    ap.add_argument("--vllm-python", default=os.environ.get("LATBENCH_VLLM_PYTHON"))
    ap.add_argument("--model", default=os.environ.get("LATBENCH_VLLM_MODEL"), help="its path")
    ap.add_argument("--model-name", default="tiny", help="the name vLLM serves it as")
    ap.add_argument("--api", default="completions,chat")
    ap.add_argument("--pairs", type=int, default=8, help="runs a side, interleaved")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=Path("vllm-parity"))
    ns = ap.parse_args()
    if not (ns.vllm_python and ns.model):
        raise SystemExit('no vLLM: run `eval "$(tests/vllm/setup.sh)"` first')
    ns.out.mkdir(parents=True, exist_ok=True)
    for k, v in VLLM_ENV.items():
        os.environ.setdefault(k, v)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context((ns.out / "vllm-bench.log").open("w"))
        bench = stack.enter_context(VllmBench(ns.vllm_python, log))
        url = ns.target
        if url is None:
            args = [
                "--model", ns.model, "--served-model-name", ns.model_name,
                "--max-model-len", "2048", "--dtype", "float32", "--enforce-eager",
                "--no-enable-prefix-caching",
            ]  # fmt: skip
            server = VllmServer(args, free_port(), ns.out / "vllm.log", python=ns.vllm_python)
            url = stack.enter_context(server).url
        docs = {api: one_api(ns, bench, url, api, ns.out) for api in ns.api.split(",")}
    (ns.out / "parity.json").write_text(json.dumps(docs, indent=1))
    for api, doc in docs.items():
        print(table(api, doc) + "\n")


if __name__ == "__main__":
    main()
