"""Rates of real runs against the simulator, scored by the simulator's own account of what it
served inside the window (`/sim/truth?raw=1`: the instant it wrote each event), and the same
figures from the records file read back, with its footer and without (a run that was killed).

Long requests in a short window, where the old window read low: E2E about 1 s, a 3 s window
after a 1 s warm-up. These are correctness checks of the definition (docs/metrics.md, "Rates"):
they compare latbench with the server's account of the same run, never with wall-clock speed.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit.sim import truth_of
from rich.console import Console

from latbench.records import read_records
from latbench.run import BenchResult, run_benchmark
from latbench.sim import SimProcess
from latbench.spec import load_spec
from latbench.summary import Summary, summarize_file

TTFT = 0.02
ITL = 0.01
TOKENS = 96  # one token an event: E2E 20 ms + 95 x 10 ms = 0.97 s
USERS = 4


def bench(url: str, out: Path, load: dict[str, Any]) -> tuple[BenchResult, Any]:
    spec = load_spec(
        {
            "name": "rates",
            "target": {"base_url": url, "api": "chat"},
            "workload": {"input_tokens": 16, "output_tokens": TOKENS},
            "load": load,
            "output_dir": str(out),
        }
    )
    result = asyncio.run(run_benchmark(spec, url, Console(file=io.StringIO())))
    return result, spec


def served_inside(served: list[dict[str, Any]], window: tuple[int, int]) -> tuple[float, int]:
    """The simulator's account of [start, end): each request counted for the share of its
    events written inside (one token an event), and the tokens written inside."""
    start, end = window
    requests, tokens = 0.0, 0
    for entry in served:
        events = entry["events_ns"]
        inside = sum(1 for t in events if start <= t < end)
        requests += inside / len(events)
        tokens += inside
    return requests, tokens


def littles_law(served: list[dict[str, Any]], window: tuple[int, int]) -> float:
    """The steady rate the server's own account implies over [start, end), by Little's law: the
    mean number of requests it was serving (arrival to last event) ÷ the mean time it served
    each of them. Its own instants, so a busy machine that stretches them stretches both."""
    start, end = window
    spans = [(e["arrival_ns"], e["events_ns"][-1]) for e in served]
    serving = sum(max(0, min(b, end) - max(a, start)) for a, b in spans) / (end - start)
    times = [b - a for a, b in spans if a < end and b >= start]
    return serving / (sum(times) / len(times) / 1e9)


def without_footer(path: Path, tmp: Path) -> Path:
    lines = path.read_bytes().splitlines(keepends=True)
    assert b'"window_start"' in lines[-1]  # the footer is the last line
    cut = tmp / "killed" / "records.jsonl"
    cut.parent.mkdir()
    cut.write_bytes(b"".join(lines[:-1]))
    return cut


def rates(s: Summary) -> dict[str, Any]:
    return {"window": s.window and s.window.to_dict(), **s.rates.to_dict()}


@pytest.mark.parametrize(
    "load",
    [
        {"concurrency": USERS, "duration": 4.0, "warmup": 1.0},
        {"mode": "constant", "rate": USERS / 0.97, "duration": 4.0, "warmup": 1.0},
    ],
    ids=["closed", "constant"],
)
def test_rates_are_what_the_server_served_in_the_window_live_and_replayed(
    tmp_path: Path, sim: Callable[..., SimProcess], load: dict[str, Any]
) -> None:
    s = sim(ttft=TTFT, itl=ITL)
    result, spec = bench(s.url, tmp_path, load)
    live = result.summary
    assert live.window is not None and not live.window.derived
    assert live.window.duration_s == pytest.approx(3.0, abs=0.01)
    assert live.requests.failed == 0

    # The server's account: only events within the wire's delay (well under a millisecond
    # here) of an edge can fall on the other side of it at the client, one per stream at most.
    window = (live.window.start_ns, live.window.end_ns)
    served = [e for e in truth_of(s.url) if e["events_ns"]]
    requests, tokens = served_inside(served, window)
    assert tokens > 8 * TOKENS  # several requests' worth, warm-up ones among them
    assert live.rates.output_tokens_in_window == pytest.approx(tokens, abs=2 * USERS)
    assert live.rates.requests_in_window == pytest.approx(requests, abs=2 * USERS / TOKENS)

    # The steady state, from the server's account too (about 4 / 0.97 s here): the window
    # misses none of it. Counting the measured requests over the window read a quarter low.
    steady = littles_law(served, window)
    assert live.rates.requests_per_s == pytest.approx(steady, rel=0.02)
    assert live.rates.output_tokens_per_s == pytest.approx(steady * TOKENS, rel=0.02)

    # The records file gives the same figures, read back with its footer or without one.
    replayed = summarize_file(read_records(result.records_path), spec)
    assert rates(replayed) == rates(live)
    killed = summarize_file(read_records(without_footer(result.records_path, tmp_path)), spec)
    assert killed.window is not None and killed.window.derived
    assert {**rates(killed), "window": None} == {**rates(live), "window": None}
    assert (killed.window.start_ns, killed.window.end_ns) == (
        live.window.start_ns,
        live.window.end_ns,
    )
