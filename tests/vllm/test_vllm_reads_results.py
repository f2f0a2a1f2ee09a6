"""latbench's --save-result files read by vLLM's own code, not by our idea of it: vLLM 0.32's
`bench sweep serve_workload` runs `latbench run` as its benchmark command against the built-in
simulator, reads each results file, and picks the next concurrency from our figures
(tests/vllm/sweep_with_vllm.py, run by vLLM's Python). A renamed or mistyped field fails it.
Skipped without the e2e stage's vLLM venv (`eval "$(tests/vllm/setup.sh)"`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latbench.vllm.launch import free_port

VLLM_PYTHON = os.environ.get("LATBENCH_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON,
    reason='no vLLM here: run `eval "$(tests/vllm/setup.sh)"` first (as .ci/run does)',
)
ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 8


def test_vllms_sweep_reads_latbenchs_results(tmp_path: Path) -> None:
    assert VLLM_PYTHON is not None
    port = free_port()
    loose = tmp_path / "loose.yaml"
    # vLLM's sweep stops on any exit but 0: a loaded machine must not make a run client-bound.
    loose.write_text(
        "validity: {ttft_tolerance: 10s, itl_tolerance: 10s, loop_lag_p99: 10s, "
        "queue_delay_p99: 10s, client_cpu: 8}\n"
    )
    latbench = [sys.executable, "-m", "latbench"]
    cfg = {
        "serve": [*latbench, "sim", "--host", "127.0.0.1", "--port", str(port),
                  "--ttft", "0.02", "--itl", "0.005"],
        # vLLM adds --max-concurrency, --percentile-metrics ttft,tpot,itl,e2el, --save-result,
        # --result-dir and --result-filename, as it does to `vllm bench serve`.
        "bench": [*latbench, "run", "--base-url", f"http://127.0.0.1:{port}", "--spec", str(loose),
                  "--out", str(tmp_path / "runs"), "--request-rate", "inf",
                  "--num-prompts", str(PROMPTS), "--input-len", "16", "--output-len", "4",
                  "--server-metrics", "off"],
        "dir": str(tmp_path / "sweep"),
    }  # fmt: skip
    # The tree's latbench for the commands vLLM starts, whatever is installed.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [VLLM_PYTHON, str(ROOT / "tests/vllm/sweep_with_vllm.py"), json.dumps(cfg)],
        capture_output=True, text=True, timeout=300, check=False, env=env, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[:6000]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    runs = got["runs"]
    levels = [r["max_concurrency"] for r in runs]
    # vLLM's estimate of the concurrency each endpoint reached, from our two fields.
    serial, batch = runs[0], runs[-1]
    low = math.ceil(serial["request_throughput"] * serial["mean_e2el_ms"] / 1000)
    high = math.floor(batch["request_throughput"] * batch["mean_e2el_ms"] / 1000)
    middle = sorted({round(x) for x in [low + (high - low) / 2]})
    assert levels == [1, *middle, PROMPTS]
    for run in runs:
        assert run["completed"] == PROMPTS and run["failed"] == 0 and run["num_prompts"] == PROMPTS
        assert run["total_output_tokens"] == 4 * PROMPTS
        # What vLLM read is what latbench measured: the run's own results.json.
        results = json.loads(
            (tmp_path / "runs" / run["latbench"]["run_id"] / "results.json").read_text()
        )["summary"]
        assert run["request_throughput"] == pytest.approx(results["rates"]["requests_per_s"])
        assert run["mean_e2el_ms"] == pytest.approx(results["latency"]["e2e"]["mean"] * 1e3)
    assert got["skipped"] == 0
    for point, run in zip(got["pareto"], runs, strict=True):
        assert point["tokens_per_user"] == pytest.approx(
            run["output_throughput"] / run["max_concurrency"]
        )
