"""Over-saturation over real sockets: the simulator with `max_batch` B serves at most B / S(B)
requests/s (sim/engine.py); an open loop past that builds a queue without bound, and the run
must stop early with the verdict and its evidence in results.json, the footer and the summary
read back from the records file. Below the knee the same watch judges the run and never fires.

A short window (4 s) so the tests take seconds; the rest as the defaults judge.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kit.cli import latbench
from rich.console import Console

from latbench.cli.common import Exit, verdict_exit
from latbench.load.runner import Runner
from latbench.records import read_records
from latbench.render import Outputs, load_results, write_report
from latbench.render.terminal import render_summary
from latbench.run import BenchResult, run_benchmark
from latbench.sim import SimConfig, SimProcess, capacity_rps, events_for
from latbench.spec import RunSpec, load_spec
from latbench.summary import summarize_file

SIM = {"max_batch": 4, "ttft": 0.02, "itl": 0.01}
TOKENS = 20  # S(4) = 0.02 + 19 x 0.01 = 0.21 s: the knee is 4 / 0.21 = 19 requests/s
WATCH = {"window": 4, "hold": 1, "min_requests": 20, "min_ttft": 0.3}
DURATION = 60.0  # what an undetected over-saturated run would burn


def bench(
    url: str, out: Path, rate: float, duration: float, mode: str = "constant", **load: Any
) -> tuple[BenchResult, RunSpec, Any]:
    shape = load or {"rate": rate}
    spec = load_spec(
        {
            "name": "oversaturation",
            "target": {"base_url": url, "api": "chat"},
            "workload": {"input_tokens": 8, "output_tokens": TOKENS},
            "load": {"mode": mode, "duration": duration, "oversaturation": WATCH, **shape},
            "validity": {"ttft_tolerance": "2s", "itl_tolerance": "2s", "loop_lag_p99": "2s"},
            "output_dir": str(out),
        }
    )
    runners: list[Runner] = []
    result = asyncio.run(
        run_benchmark(spec, url, Console(file=io.StringIO()), on_runner=runners.append)
    )
    return result, spec, runners[0]


def knee() -> float:
    return capacity_rps(SimConfig.model_validate(SIM), events_for(TOKENS, 0, 1))


@pytest.mark.parametrize("mode", ["constant", "poisson"])
def test_a_run_past_the_knee_stops_early_with_the_verdict_and_its_evidence(
    tmp_path: Path, sim: Callable[..., SimProcess], mode: str
) -> None:
    assert 18 < knee() < 20
    s = sim(**SIM)
    result, spec, _ = bench(s.url, tmp_path, 2 * knee(), DURATION, mode)
    assert result.ended == "oversaturated"
    v = result.summary.oversaturation
    assert v is not None
    assert v.after_s < DURATION / 3  # stopped early, not at the end
    assert v.window_s == 4
    # The queue grows at about rate - knee (19/s) and the wait with it, at 1 - 1/2 s a second.
    assert v.inflight.slope > 5
    assert v.inflight.end > v.inflight.start
    assert v.ttft.slope > 0.2 and v.ttft.end >= 0.3
    assert v.first_tokens >= 20
    # The run's window ends where sending stopped, and the cut requests are cancelled, not
    # failed.
    assert result.summary.window is not None
    assert result.summary.window.duration_s < v.after_s + 1
    assert result.summary.requests.failed == result.summary.failures.cancelled

    results = json.loads(result.results_path.read_text())
    assert results["ended"] == "oversaturated"
    assert results["summary"]["oversaturation"]["after_s"] == pytest.approx(v.after_s, abs=1e-3)
    assert "over-saturated after" in results["summary"]["oversaturation"]["summary"]

    # The footer carries it, so a summary of the records file says the same.
    f = read_records(result.records_path)
    assert f.footer is not None and f.footer.ended == "oversaturated"
    again = summarize_file(f, spec)
    assert again.oversaturation == v

    # Every report leads with it: the terminal, and HTML and Markdown recomputed from the files.
    console = Console(file=io.StringIO(), width=160, record=True)
    render_summary(result.summary, console)
    shown = console.export_text()
    assert v.HEADLINE in shown and "TTFT by first token" in shown
    # The stop's cancels are not failures in the headline either.
    cut = result.summary.failures.cancelled
    assert cut > 0 and f"0 failed, {cut:,} cut by the stop" in shown
    # It exits 7, live and from the records file, whatever its SLOs.
    assert verdict_exit(result.summary, gate_slos=False) == Exit.OVERSATURATED == 7
    replay = latbench("summary", str(result.records_path))
    assert replay.returncode == 7, replay.stderr
    out = Outputs.choose(tmp_path / "report", None, None, None)
    write_report(load_results(result.results_path), out)
    assert out.html is not None and out.md is not None
    for path in (out.html, out.md):
        text = path.read_text()
        assert v.HEADLINE in text and f"{v.after_s:.1f} s into the run" in text


def test_a_run_under_the_knee_is_judged_and_never_stopped(
    tmp_path: Path, sim: Callable[..., SimProcess]
) -> None:
    s = sim(**SIM)
    result, _, runner = bench(s.url, tmp_path, 0.5 * knee(), 12.0)
    assert result.ended == "completed"
    assert result.summary.oversaturation is None
    # It was judged on a full window, not skipped for want of evidence.
    assert runner.watch is not None and runner.watch.last is not None
    assert runner.watch.last.inflight is not None
    assert "in-flight grew" in runner.watch.last.why


def test_a_ramp_stops_once_it_has_crossed_the_knee(
    tmp_path: Path, sim: Callable[..., SimProcess]
) -> None:
    # Half the knee to three times it over 30 s: the rate crosses the knee 6 s in.
    start, end, seconds = 0.5 * knee(), 3 * knee(), 30.0
    crossing = (knee() - start) / (end - start) * seconds
    s = sim(**SIM)
    ramp = {"strategy": "linear", "start_rate": start, "end_rate": end}
    result, spec, _ = bench(s.url, tmp_path, 0, seconds, "ramp", ramp=ramp)
    assert result.ended == "oversaturated"
    v = result.summary.oversaturation
    assert v is not None
    assert crossing < v.after_s < seconds
    # Its stairs offer what the ramp planned (its mean rate on each tenth), whatever was sent;
    # those after the stop did not run, and the one it fell on ran until it.
    stairs = result.summary.stairs
    assert stairs is not None
    mean = [start + (end - start) * (k + 0.5) / 10 for k in range(10)]
    assert [st.rate for st in stairs] == pytest.approx(mean)
    stop = v.after_s
    for st in stairs:
        if st.start_s >= stop + 0.1:
            assert (st.ran, st.requests, st.sent_per_s) == (False, 0, 0.0)
        elif st.start_s + st.duration_s <= stop - 0.1:
            assert st.ran_s == st.duration_s
    assert sum(st.cancelled for st in stairs) == result.summary.failures.cancelled
    assert not stairs[-1].ran
    again = summarize_file(read_records(result.records_path), spec)
    assert again.stairs == stairs
