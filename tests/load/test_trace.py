"""Trace replay's load: the trace pacer against hand arithmetic, and real runs of each sample
trace (tests/data/traces) against the simulator over 127.0.0.1.

What a run is held to: every record's `t_intended` is the trace's own instant exactly (scaled by
the speed, from the first kept row), each request asks for its row's lengths and the simulator
counts them, Mooncake's shared hash ids hit the simulator's prefix cache (its vLLM counters) and
an Azure trace's unrelated prompts do not, and a client that cannot keep the trace's pace is
flagged by the run's own validity verdict through send lag. Timing is never asserted beyond a
loose bound on the send lag of a run the machine can keep up with.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from latbench.load.pacers import TracePacer, trace_pacer
from latbench.load.worker import make_pacer
from latbench.records import read_records
from latbench.records.record import Record
from latbench.run import BenchResult, run_benchmark
from latbench.spec import load_spec
from latbench.workload.trace import TraceWorkload

TRACES = Path(__file__).parents[1] / "data" / "traces"
S = 1_000_000_000
# A run this machine can keep up with sends each request within this much of its instant
# (an idle machine: a few ms); loose, so that a loaded one does not fail it.
LOOSE_SEND_LAG_S = 1.0


# --- the pacer ---------------------------------------------------------------------------------


def test_offsets_are_the_traces_and_hold_past_its_end() -> None:
    p = TracePacer(np.array([0, 0, 5, 2 * S]), label="trace(x)@1x")
    assert [p.offset_ns(n) for n in range(6)] == [0, 0, 5, 2 * S, 2 * S, 2 * S]
    assert len(p) == 4 and str(p) == "trace(x)@1x:4 requests over 2s"
    with pytest.raises(ValueError, match="request index n must be >= 0"):
        p.offset_ns(-1)


def test_rate_is_the_arrivals_in_the_window_before() -> None:
    # 10 arrivals in the first second, then one at 3 s; a 2 s window.
    offsets = np.array([i * S // 10 for i in range(10)] + [3 * S])
    p = TracePacer(offsets, window_s=2.0)
    assert p.rate_at(0) == 0.5  # the first arrival, at 0
    assert p.rate_at(S) == 5.0  # all ten in (-1 s, 1 s]
    assert p.rate_at(2 * S + S // 10) == 4.0  # (0.1 s, 2.1 s]: 0.2 to 0.9 s, eight
    assert p.rate_at(3 * S) == 0.5  # (1 s, 3 s]: the one at 3 s


def test_offsets_must_not_decrease() -> None:
    with pytest.raises(ValueError, match="never decrease"):
        TracePacer(np.array([0, 5, 4]))
    with pytest.raises(ValueError, match="at least one offset"):
        TracePacer(np.array([], dtype=np.int64))


class Wrapper:
    """A decorating workload (images, tools) holds the trace as `inner`."""

    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_the_pacer_of_a_trace_run_comes_from_its_workload() -> None:
    w = TraceWorkload.from_file(TRACES / "mooncake.jsonl", speed=2)
    spec = load_spec(
        {
            "workload": {"source": "trace", "path": str(TRACES / "mooncake.jsonl")},
            "load": {"mode": "trace"},
        }
    )
    pacer = make_pacer(spec.load, 0, Wrapper(w))
    assert isinstance(pacer, TracePacer)
    assert [pacer.offset_ns(n) for n in range(len(w))] == w.offsets_ns.tolist()
    assert str(pacer).startswith("trace(mooncake)@2x:32 requests")
    with pytest.raises(ValueError, match="needs a trace workload"):
        trace_pacer(object())


# --- runs against the simulator ----------------------------------------------------------------


def bench(url: str, out: Path, trace: dict[str, Any], **load: Any) -> BenchResult:
    spec = load_spec(
        {
            "target": {"base_url": url, "api": "chat"},
            "workload": {
                "source": "trace",
                "path": str(TRACES / trace.pop("file")),
                "trace": trace,
            },
            "load": {"mode": "trace", **load},
            "output_dir": str(out),
        }
    )
    return asyncio.run(run_benchmark(spec, url, Console(file=io.StringIO())))


def records(result: BenchResult) -> list[Record]:
    return sorted(read_records(result.records_path).records, key=lambda r: r.seq)


def prefix_hits(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(r"^vllm:prefix_cache_hits_total\S* (\S+)$", text, re.M))


def assert_replayed(recs: list[Record], w: TraceWorkload) -> None:
    """Request n went at row n's instant, asked for row n's lengths and was served them."""
    assert [r.seq for r in recs] == list(range(len(w)))
    assert all(r.ok for r in recs), [r.error_detail for r in recs if not r.ok]
    t0 = recs[0].t_intended
    assert [r.t_intended - t0 for r in recs] == w.offsets_ns.tolist()
    for r in recs:
        item = w.item(r.seq)
        assert r.max_tokens == item.max_tokens == int(w.rows.outputs[r.seq])
        assert r.usage_prompt_tokens == r.prompt_tokens == int(w.rows.inputs[r.seq])
        assert r.usage_completion_tokens == item.max_tokens  # ignore_eos: the trace's length


def test_a_mooncake_trace_at_its_own_pace_and_its_shared_prefixes(
    sim_url: str, tmp_path: Path
) -> None:
    before = prefix_hits(sim_url)
    result = bench(sim_url, tmp_path, {"file": "mooncake.jsonl"})
    w = TraceWorkload.from_file(TRACES / "mooncake.jsonl")
    recs = records(result)
    assert_replayed(recs, w)
    assert result.summary.requests.measured == 32
    assert max(r.t_sent - r.t_intended for r in recs) < LOOSE_SEND_LAG_S * S
    # Rows share ids [0, 1], [0, 2, 3] and [4]: 512 words each. A row sent 150 ms after the
    # first with ids [0, 2, 3] finds at least one whole block cached, whatever the timing.
    assert prefix_hits(sim_url) - before >= 512


def test_an_azure_window_at_twice_the_speed(sim_url: str, tmp_path: Path) -> None:
    before = prefix_hits(sim_url)
    result = bench(sim_url, tmp_path, {"file": "azure.csv", "speed": 2, "start": 0.5, "end": 1.5})
    w = TraceWorkload.from_file(TRACES / "azure.csv", speed=2, start_s=0.5, end_s=1.5)
    assert 0 < len(w) < 30
    recs = records(result)
    assert_replayed(recs, w)
    # The header states the bound the trace set: its rows in the window.
    assert read_records(result.records_path).header.spec["load"]["requests"] == len(w)
    # Unrelated rows: no prompt block in common with anything the simulator has seen.
    assert prefix_hits(sim_url) == before


def test_burstgpt_fast_with_its_failures_left_out(sim_url: str, tmp_path: Path) -> None:
    result = bench(sim_url, tmp_path, {"file": "burstgpt.csv", "speed": 20}, requests=20, workers=2)
    w = TraceWorkload.from_file(TRACES / "burstgpt.csv", speed=20)
    recs = records(result)
    assert len(w) == 27 and len(recs) == 20  # load.requests stops it before the trace's end
    t0 = recs[0].t_intended
    assert [r.t_intended - t0 for r in recs] == w.offsets_ns[:20].tolist()
    assert [r.max_tokens for r in recs] == w.rows.outputs[:20].tolist()
    assert all(r.max_tokens > 0 for r in recs)


def test_a_pace_the_client_cannot_keep_is_send_lag_and_flagged(
    sim_url: str, tmp_path: Path
) -> None:
    # At 1000x the trace's 32 rows are due within 1.6 ms, and one request at a time (the
    # in-flight cap) takes at least the simulator's TTFT + tokens x ITL (20 ms + 5 ms each):
    # request n cannot leave before n - 1 ends, however fast the machine.
    result = bench(sim_url, tmp_path, {"file": "mooncake.jsonl", "speed": 1000}, concurrency=1)
    w = TraceWorkload.from_file(TRACES / "mooncake.jsonl", speed=1000)
    recs = records(result)
    t0 = recs[0].t_intended
    assert [r.t_intended - t0 for r in recs] == w.offsets_ns.tolist()  # the plan never shifts
    for prev, r in itertools.pairwise(recs):
        assert prev.t_end is not None and r.t_sent >= prev.t_end
    lag = [r.t_sent - r.t_intended for r in recs]
    assert lag[-1] > 31 * 20_000_000  # 31 requests ahead of it, each over 20 ms
    validity = result.summary.validity
    assert validity.client_bound
    assert any("send lag" in reason for reason in validity.reasons), validity.reasons
