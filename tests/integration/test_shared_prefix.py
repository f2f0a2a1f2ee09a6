"""Shared-prefix workloads against the simulator's prefix cache (vLLM's rules: blocks of 16
tokens, a word a token, at most (P - 1) // 16 blocks hit, a prompt's blocks cached at its first
token; docs/workloads.md, "What the simulator models"). The server's own account
(`/sim/truth`) must show each request's cached tokens as the workload's groups predict, its
planned TTFT must drop by `prefill_per_token` for each, not with the cache off, and the run's
reconciliation must report the hit rate the server's counters hold, in results.json, the
terminal and the Markdown report."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit.cli import latbench
from kit.sim import truth_of
from rich.console import Console

from latbench.records.record import read_records
from latbench.run import run_benchmark
from latbench.sim import SimProcess
from latbench.spec import load_spec

TTFT, PER_TOKEN = 0.01, 0.002
PREFIX, SUFFIX, BLOCK = 96, 8, 16
REQUESTS = 10


def spec_for(url: str, tmp_path: Path, **workload: Any) -> Any:
    return load_spec(
        {
            "target": {"base_url": url, "api": "chat"},
            # One user: requests one after another, in the simulator's order too.
            "load": {"concurrency": 1, "requests": REQUESTS},
            "workload": {
                "source": "shared_prefix",
                "output_tokens": 4,
                "seed": 5,
                "shared_prefix": {"groups": 2, "prefix_tokens": PREFIX, "suffix_tokens": SUFFIX},
                **workload,
            },
            # The reconciliation is what is tested, not the client's timing on a busy machine.
            "validity": {"ttft_tolerance": "2s", "itl_tolerance": "2s"},
            "output_dir": str(tmp_path),
        }
    )


@pytest.mark.parametrize("cache", [True, False])
def test_a_groups_later_requests_hit_its_prefix_and_pay_for_the_suffix_alone(
    sim: Callable[..., SimProcess], tmp_path: Path, cache: bool
) -> None:
    proc = sim(ttft=TTFT, itl=0.001, prefill_per_token=PER_TOKEN, prefix_cache=cache)
    # "words": no calibration requests among the served ones (the simulator counts words).
    spec = spec_for(proc.url, tmp_path, tokenizer="words")
    result = asyncio.run(run_benchmark(spec, proc.url, Console(file=io.StringIO())))
    records = sorted(read_records(result.records_path).records, key=lambda r: r.t_sent)
    assert [r.error_detail for r in records if r.error] == []
    served = [e for e in truth_of(proc.url) if e["events_ns"]]
    assert [e["prompt_tokens"] for e in served] == [PREFIX + SUFFIX] * REQUESTS
    # Groups come balanced in blocks of 2: each group's first request misses, every later one
    # finds the whole prefix (96 tokens, 6 blocks; the suffix's 8 fill no block).
    hit = PREFIX if cache else 0
    assert [e["cached_tokens"] for e in served] == [0, 0] + [hit] * (REQUESTS - 2)
    for r, e in zip(records, served, strict=True):
        planned = TTFT + PER_TOKEN * (PREFIX + SUFFIX - e["cached_tokens"])
        assert e["ttft_model_s"] == pytest.approx(planned, abs=1e-6)
        # The server wrote the first token after its plan (the event loop's timers may fire up
        # to a millisecond early), and the client read it after that. How much later is the
        # machine's load, not the model: no bound on it here (bench/ measures speed).
        first = e["events_ns"][0]
        assert first - e["arrival_ns"] >= (planned - 0.002) * 1e9, (e["cached_tokens"], e)
        assert r.ev_t[0] >= first

    recon = result.reconciliation
    assert recon is not None and recon.prefix_cache is not None
    if cache:
        queries, hits = (PREFIX + SUFFIX) * REQUESTS, PREFIX * (REQUESTS - 2)
        assert recon.prefix_cache == {"queries": queries, "hits": hits, "hit_rate": hits / queries}
    else:  # the counters stay 0: nothing looked up, and no rate made up
        assert recon.prefix_cache == {"queries": 0, "hits": 0, "hit_rate": None}
    stored = json.loads(result.results_path.read_text())
    assert stored["reconciliation"]["prefix_cache"] == recon.prefix_cache
    assert stored["workload"]["kind"] == "shared_prefix"


def test_calibrated_prompts_hold_the_tokens_asked_and_share_their_prefix(
    sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    """Without a tokenizer the run measures the server's /tokenize first, as for synthetic
    prompts: every prompt holds prefix + suffix tokens by the server's usage, prefixes and
    suffixes alike, and the groups still hit."""
    proc = sim(ttft=TTFT, itl=0.001)
    spec = spec_for(proc.url, tmp_path, shared_prefix={
        "groups": 3, "prefix_tokens": 40, "suffix_tokens": "uniform:4,12", "prefix_as": "user",
    })  # fmt: skip
    result = asyncio.run(run_benchmark(spec, proc.url, Console(file=io.StringIO())))
    prompt = result.summary.tokens.prompt
    assert prompt.requested == prompt.reported == prompt.exact == REQUESTS, prompt
    stored = json.loads(result.results_path.read_text())
    assert stored["workload"]["prompt_tokens"]["source"] == "server"
    served = [e for e in truth_of(proc.url) if e["events_ns"]]
    # 3 groups in blocks of 3: the first 3 miss, the other 7 hit their prefix's 2 full blocks.
    assert [e["cached_tokens"] for e in served[-REQUESTS:]] == [0] * 3 + [32] * 7


def test_the_flags_run_it_and_every_report_states_the_hit_rate(tmp_path: Path) -> None:
    """`latbench run --prefix-*` against the built-in simulator: the hit rate in results.json,
    on the terminal next to the TTFT split, in `latbench summary` and in the Markdown report."""
    out = tmp_path / "out"
    loose = tmp_path / "loose.yaml"  # a busy test machine must not make it client-bound (exit 4)
    loose.write_text("validity: {ttft_tolerance: 2s, itl_tolerance: 2s}\n")
    flags = [
        "--requests", "12", "--concurrency", "1", "--warmup", "0", "--output-tokens", "4",
        "--prefix-groups", "2", "--prefix-tokens", "64", "--suffix-tokens", "8",
        "--spec", str(loose), "--out", str(out),
    ]  # fmt: skip
    done = latbench("run", *flags)
    assert done.returncode == 0, done.stderr
    (run,) = out.iterdir()
    cache = json.loads((run / "results.json").read_text())["reconciliation"]["prefix_cache"]
    # 12 prompts of 72 tokens; all but each group's first hit 4 blocks (64 tokens).
    assert cache == {"queries": 864.0, "hits": 640.0, "hit_rate": 640 / 864}
    line = "prefix cache: 74.1% of prompt tokens hit (640 of 864 looked up"
    assert line in done.stdout
    assert done.stdout.index("TTFT, mean") < done.stdout.index(line)
    again = latbench("summary", str(run / "records.jsonl"))
    assert again.returncode == 0 and line in again.stdout, again.stderr
    md = tmp_path / "report.md"
    report = latbench("report", str(run), "--md", str(md))
    assert report.returncode == 0, report.stderr
    text = md.read_text()
    assert "Server metrics: server's mean TTFT" in text and line in text
