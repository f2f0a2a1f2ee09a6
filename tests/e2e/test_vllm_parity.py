"""`vllm bench serve` and latbench against one real vLLM, the short form of bench/vllm_parity.py:
one vLLM start, three interleaved pairs of small runs on completions and one on chat.

It fails on a definitional mismatch, not on noise (on 2 cores shared with vLLM's busy-polling the
figures of two runs of one client differ by more than the two clients do):

- vLLM's own arithmetic (its `calculate_metrics`) over latbench's --save-detailed arrays gives
  the figures latbench wrote, and latbench's arithmetic over vLLM's stamps gives the figures vLLM
  printed: TTFT, TPOT, ITL and E2E mean the same on both sides;
- both clients count the same output tokens (every request exactly max_tokens) and the same
  prompt tokens (the server's usage; latbench sends the prompts vLLM's random dataset makes);
- the ITL samples per request: at most N - 1 on both sides for completions (fewer where the
  server merged tokens into one chunk); on chat vLLM may have N, since it stamps vLLM's
  role-only first chunk as the first token (docs/vllm.md).

Whether the figures agree within the noise is bench/vllm_parity.py's question (many runs).

Skipped without the e2e stage's vLLM (`eval "$(tests/vllm/setup.sh)"`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import cli
from kit.vllm import VLLM_ENV, VLLM_MODEL, VLLM_PYTHON, needs_vllm, serve

from latbench.records import read_records
from latbench.vllm import VllmServer
from latbench.vllm.peer import VllmBench, definition_gaps, vllm_records

pytestmark = needs_vllm
REQUESTS, CONCURRENCY, INPUT, OUTPUT = 16, 4, 64, 16
PCTS = [50.0, 90.0, 99.0]
LOOSE = (
    "validity: {ttft_tolerance: 10s, itl_tolerance: 10s, "
    "loop_lag_p99: 10s, queue_delay_p99: 10s, client_cpu: 1.0}\n"
)
ENDPOINTS = {
    "completions": ("openai", "/v1/completions"),
    "chat": ("openai-chat", "/v1/chat/completions"),
}


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VllmServer, VllmBench]]:
    assert VLLM_PYTHON is not None
    d = tmp_path_factory.mktemp("parity")
    # vLLM's client imports (seconds) while its server loads. Prefix caching off: the two
    # clients' prompts must cost the server the same prefill.
    with (
        (d / "bench.log").open("w") as log,
        VllmBench(VLLM_PYTHON, log) as bench,
        serve(d / "vllm.log", "--no-enable-prefix-caching") as server,
    ):
        yield server, bench


def vllm_argv(server: VllmServer, api: str, seed: int) -> list[str]:
    backend, endpoint = ENDPOINTS[api]
    return [
        "--backend", backend, "--endpoint", endpoint, "--base-url", server.url,
        "--model", "tiny", "--tokenizer", str(VLLM_MODEL), "--dataset-name", "random",
        "--random-input-len", str(INPUT), "--random-output-len", str(OUTPUT),
        "--num-prompts", str(REQUESTS), "--max-concurrency", str(CONCURRENCY),
        "--request-rate", "inf", "--seed", str(seed), "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-detailed", "--disable-tqdm",
    ]  # fmt: skip


def latbench_run(
    server: VllmServer, bench: VllmBench, api: str, seed: int, d: Path
) -> dict[str, Any]:
    """One latbench run on the prompts vLLM's random dataset makes with `seed`: its vLLM-format
    results (with the per-request arrays) and its records."""
    d.mkdir()
    prompts = d / "prompts.jsonl"
    assert bench.prompts(vllm_argv(server, api, seed), prompts) == REQUESTS
    (d / "loose.yaml").write_text(LOOSE)
    p = cli.latbench(
        "run", "--target", server.url, "--api", api, "--prompts", str(prompts),
        "--concurrency", str(CONCURRENCY), "--requests", str(REQUESTS), "--temperature", "0",
        "--spec", str(d / "loose.yaml"), "--server-metrics", "off", "--out", str(d / "runs"),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--save-detailed", "--result-dir", str(d), "--result-filename", "v.json",
        "--json", env=VLLM_ENV,
    )  # fmt: skip
    assert p.returncode in (0, 4), p.stderr  # 4: client-bound on 2 cores, as test_vllm.py says
    (run_dir,) = (d / "runs").iterdir()
    result = json.loads((d / "v.json").read_text())
    return {"result": result, "records": read_records(run_dir / "records.jsonl").records}


def same_definitions(ours: dict[str, Any], vllms: dict[str, Any]) -> None:
    """Figures one client wrote equal the other's arithmetic over the same per-request arrays."""
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert ours[f"mean_{name}_ms"] == pytest.approx(vllms[f"mean_{name}_ms"], rel=1e-6), name
        assert ours[f"median_{name}_ms"] == pytest.approx(vllms[f"median_{name}_ms"], rel=1e-6)
        for p, value in vllms[f"percentiles_{name}_ms"]:
            assert ours[f"p{p:g}_{name}_ms"] == pytest.approx(value, rel=1e-6), (name, p)


def test_vllm_bench_serve_and_latbench_agree_on_definitions(
    peers: tuple[VllmServer, VllmBench], tmp_path: Path
) -> None:
    server, bench = peers
    seed = 0
    for api, pairs in (("completions", 3), ("chat", 1)):
        vllm_runs, ours = [], []
        for i in range(pairs):
            # A B, then B A: a drift of the shared machine weighs on both sides alike.
            order = ("vllm", "latbench") if i % 2 == 0 else ("latbench", "vllm")
            for side in order:
                seed += 1
                if side == "vllm":
                    vllm_runs.append(bench.run(vllm_argv(server, api, seed)))
                else:
                    ours.append(latbench_run(server, bench, api, seed, tmp_path / f"{api}{seed}"))
        for v in vllm_runs:
            # Our arithmetic over vLLM's stamps gives what vLLM printed.
            gaps = definition_gaps(v, vllm_records(v))
            assert set(gaps) == {"ttft", "tpot", "itl", "e2el"}
            assert all(abs(g) < 1e-6 for g in gaps.values()), gaps
            assert v["completed"] == REQUESTS and v["output_lens"] == [OUTPUT] * REQUESTS
            # One gap a chunk after the first: fewer when the server merged tokens into one
            # chunk (it does when its API server falls behind); on chat, one more for the
            # role-only first chunk, which vLLM stamps as its first token.
            role_chunk = 1 if api == "chat" else 0
            assert all(1 <= len(itl) <= OUTPUT - 1 + role_chunk for itl in v["itls"])
        for run in ours:
            r = run["result"]
            # vLLM's arithmetic over our per-request arrays gives what latbench wrote.
            same_definitions(r, bench.metrics(r, PCTS))
            assert r["completed"] == REQUESTS and r["output_lens"] == [OUTPUT] * REQUESTS
            assert all(1 <= len(itl) <= OUTPUT - 1 for itl in r["itls"])
        # The same prompts cost the same prompt tokens (the server's usage on both sides).
        theirs = sorted(n for v in vllm_runs for n in v["input_lens"])
        mine = sorted(n for run in ours for n in run["result"]["input_lens"])
        assert abs(sum(theirs) / len(theirs) - sum(mine) / len(mine)) <= 1.0, (theirs, mine)
