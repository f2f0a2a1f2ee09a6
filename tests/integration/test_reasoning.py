"""Reasoning-aware metrics, end to end, for every API kind: the same requests sent to an
OpenAI-compatible, an Anthropic or a Responses server give the same metric set, with TTFT at the
first reasoning token and TTFO at the first answer token (METRICS.md)."""

from __future__ import annotations

import io
import statistics
from collections.abc import Iterator
from pathlib import Path
from time import monotonic_ns

import aiohttp
import pytest
from kit.sim import personalities
from rich.console import Console

from latbench.client import API_KINDS, Endpoint, RequestOptions, Timeouts, stream_request
from latbench.client.preflight import ANTHROPIC_VERSION
from latbench.run import run_benchmark
from latbench.shared.dist import Dist
from latbench.sim import SimProcess
from latbench.spec import METRICS, load_spec
from latbench.spec.target import SIM_API
from latbench.summary import summarize
from latbench.workload import SyntheticWorkload

# The simulator: TTFT 50 ms, then one event every 10 ms on absolute deadlines; 4 of the 12
# output tokens are reasoning (none for completions, which has no reasoning channel).
SIM = {"ttft": 0.05, "itl": 0.01, "reasoning_tokens": 4}
REASONING = {"chat": 4, "anthropic": 4, "responses": 4, "completions": 0}
N_OUT = 12


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, SimProcess]]:
    """One simulator child process per personality (chat and completions share one)."""
    with personalities(**SIM) as procs:
        yield procs


@pytest.mark.parametrize("api", list(REASONING))
async def test_ttft_counts_reasoning_and_ttfo_waits_for_the_answer(
    servers: dict[str, SimProcess], api: str
) -> None:
    sim = servers[SIM_API[api]]
    ep = Endpoint(
        sim.url,
        API_KINDS[api],
        RequestOptions("sim-model", vllm_extensions=True, ignore_eos=True, extra_body={}),
        {"anthropic-version": ANTHROPIC_VERSION} if api == "anthropic" else {},
        Timeouts(total=10),
    )
    workload = SyntheticWorkload(Dist(mean=8), Dist(mean=N_OUT), seed=0)
    records = []
    async with aiohttp.ClientSession() as session:
        for seq in range(6):
            item = workload.item(seq)
            t = monotonic_ns()
            records.append(
                await stream_request(
                    session, ep, item, run_id="t", seq=seq, phase="measure", t_intended=t
                )
            )
    assert all(r.ok for r in records), [r.error_detail for r in records]
    reasoning = REASONING[api]
    assert {r.ev_kind for r in records} == {"r" * reasoning + "c" * (N_OUT - reasoning)}

    s = summarize(records)
    assert list(s.latency) == list(METRICS)
    assert all(s.latency[m].count > 0 for m in METRICS)
    assert s.tokens.output_total == len(records) * N_OUT
    assert s.tokens.sources["usage"] == len(records)  # N_out from usage, whatever the format
    ttft = s.latency["ttft"].p(50)
    assert ttft is not None
    # The first request also opens the connection; a loaded 2-core machine adds scheduling
    # delay on top of the simulator's deadline (tests/client/test_stream.py allows 25 ms on one
    # TTFT).
    assert 50 <= ttft * 1e3 < 75
    # Per request, TTFO - TTFT spans the reasoning events' 10 ms steps, which the simulator
    # keeps on absolute deadlines; only the client's wake-up delay on either arrival remains,
    # so the median is within a few ms even on a busy machine.
    gaps = [(r.ev_t[reasoning] - r.ev_t[0]) / 1e6 for r in records]
    assert 10 * reasoning - 5 <= statistics.median(gaps) <= 10 * reasoning + 8, gaps


async def test_a_run_spec_pointed_at_a_responses_server(
    servers: dict[str, SimProcess], tmp_path: Path
) -> None:
    """The whole pipeline (spec, preflight, worker, records file, summary) on a hosted format."""
    sim = servers["responses"]
    spec = load_spec(
        {
            "target": {"base_url": sim.url, "api": "responses"},
            "load": {"concurrency": 2, "requests": 6},
            "workload": {"input_tokens": 8, "output_tokens": N_OUT},
            "output_dir": str(tmp_path),
        }
    )
    result = await run_benchmark(spec, sim.url, Console(file=io.StringIO()))
    s = result.summary
    assert s.requests.succeeded == 6 and s.tokens.output_total == 6 * N_OUT
    ttft, ttfo = s.latency["ttft"].mean, s.latency["ttfo"].mean
    assert ttft is not None and ttfo is not None and ttfo > ttft
