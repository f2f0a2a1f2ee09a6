"""Issue 16's cache-exercising workloads against a real vLLM (the e2e stage's CPU build and tiny
model; its automatic prefix caching is on by default): a shared-prefix run in vLLM's own
prefix_repetition shape, and multi-turn sessions that resend their history. Each must make
vLLM's prefix-cache hit counter rise, as read from its /metrics around the run and in the run's
own reconciliation, and the sessions' TTFT-by-turn table must be there.

vLLM's CPU path caches blocks of 128 tokens (`block_size` in its cache_config_info), and counts
hits in tokens of whole blocks, so every length below is chosen to fill whole blocks: a group's
prefix of 384 tokens shares at least 2 blocks after the chat template's own tokens, and a
session's first message of 160 tokens fills the first block every later turn resends. One vLLM
for the module, a few dozen short requests: about two minutes on 2 shared cores.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit import cli
from kit.vllm import VLLM_ENV, needs_vllm, serve

from latbench.summary.server_metrics import parse_metrics
from latbench.vllm import VllmServer

pytestmark = needs_vllm
BLOCK = 128  # vLLM's CPU block size, in tokens
# On 2 cores shared with vLLM's busy-polling the run may be judged client-bound (exit 4); the
# cache's counters do not depend on it.
OK = (0, 4)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    with serve(tmp_path_factory.mktemp("vllm") / "vllm.log") as s:
        yield s


def cache_counters(url: str) -> tuple[float, float]:
    """vLLM's prefix-cache counters now: tokens looked up, tokens found."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        snap = parse_metrics(r.read().decode(), "tiny")
    return snap.counters["prefix_cache_queries"], snap.counters["prefix_cache_hits"]


def run(vllm: VllmServer, out: Path, *args: str) -> dict[str, Any]:
    p = cli.latbench(
        "run", "--target", vllm.url, "--api", "chat", "--out", str(out), "--json", *args,
        env=VLLM_ENV, timeout=600,
    )  # fmt: skip
    assert p.returncode in OK, p.stderr[-3000:]
    (run_dir,) = out.iterdir()
    return json.loads((run_dir / "results.json").read_text())


def test_shared_prefixes_hit_vllms_prefix_cache(vllm: VllmServer, tmp_path: Path) -> None:
    groups, prompts = 2, 12
    queries0, hits0 = cache_counters(vllm.url)
    results = run(
        vllm, tmp_path / "out",
        "--dataset-name", "prefix_repetition", "--num-prompts", str(prompts),
        "--max-concurrency", "2", "--prefix-repetition-num-prefixes", str(groups),
        "--prefix-repetition-prefix-len", "384", "--prefix-repetition-suffix-len", "32",
        "--prefix-repetition-output-len", "4", "--warmup", "0",
    )  # fmt: skip
    queries1, hits1 = cache_counters(vllm.url)
    assert results["workload"]["kind"] == "shared_prefix"
    assert results["workload"]["preset"] == "vllm"
    # Calibrated by vLLM's /tokenize: prompts hold the 416 tokens asked.
    assert results["environment"]["prompt_tokens"]["source"] == "server"
    assert abs(results["summary"]["tokens"]["prompt"]["mean_ratio"] - 1) < 0.02
    # Each group's first request may miss; every later one finds at least its prefix's first
    # two blocks (the third holds the chat template's tail, which differs from the suffix).
    assert hits1 - hits0 >= (prompts - groups) * 2 * BLOCK
    cache = results["reconciliation"]["prefix_cache"]
    assert (cache["queries"], cache["hits"]) == (queries1 - queries0, hits1 - hits0)
    assert cache["hit_rate"] == pytest.approx((hits1 - hits0) / (queries1 - queries0))


def test_sessions_resend_their_history_into_vllms_prefix_cache(
    vllm: VllmServer, tmp_path: Path
) -> None:
    spec = tmp_path / "sessions.yaml"
    spec.write_text(
        "workload: {input_tokens: 160, output_tokens: 4, sessions: {turns: 3}}\n"
        "load: {concurrency: 2, requests: 12, warmup: 0}\n"
    )
    queries0, hits0 = cache_counters(vllm.url)
    results = run(vllm, tmp_path / "out", "--spec", str(spec))
    queries1, hits1 = cache_counters(vllm.url)
    # 4 sessions of 3 turns: turns 1 and 2 resend turn 0's message, whose first block (128 of
    # its 160 tokens and the template's) they find in the cache.
    assert hits1 - hits0 >= 4 * 2 * BLOCK
    cache = results["reconciliation"]["prefix_cache"]
    assert (cache["queries"], cache["hits"]) == (queries1 - queries0, hits1 - hits0)
    turns = results["summary"]["sessions"]["by_turn"]
    assert [t["turn"] for t in turns] == [0, 1, 2]
    assert all(t["requests"] == 4 and t["ttft"]["p50"] is not None for t in turns), turns
    # The history grows turn by turn (the server's own count of each turn's prompt).
    means = [t["prompt_tokens_mean"] for t in turns]
    assert means == sorted(means) and means[0] >= 150, means
