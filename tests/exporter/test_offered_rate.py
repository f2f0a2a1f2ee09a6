"""The offered rate, live: `latbench_offered_rate` on /metrics is the open-loop schedule's rate
at the instant of the scrape, so a staircase shows each stair's rate in turn while it runs, and
a closed loop (no schedule) and the time between runs read 0. Real run, real scrapes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kit.cli import spawn
from kit.promql import free_port, http_get, stop_pid, wait_for
from prometheus_client.parser import text_string_to_metric_families

from latbench.exporter import LatbenchMetrics
from latbench.exporter.series import RunLabels
from latbench.sim import SimProcess

GAUGE = "latbench_offered_rate"


def gauge(url: str) -> tuple[float, float] | None:
    """(offered rate, runs active) from one scrape; None before the series exist."""
    got: dict[str, float] = {}
    for fam in text_string_to_metric_families(http_get(url).decode()):
        for s in fam.samples:
            if s.name in (GAUGE, "latbench_run_active"):
                got[s.name] = s.value
    return None if len(got) < 2 else (got[GAUGE], got["latbench_run_active"])


def test_a_staircase_shows_each_stairs_rate_live(
    sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    s = sim(ttft=0.002, itl=0.001)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    spec = tmp_path / "spec.yaml"
    spec.write_text("validity: {ttft_tolerance: 2s, itl_tolerance: 2s, queue_delay_p99: 2s}\n")
    proc = spawn(
        "run", "--spec", str(spec), "--target", s.url, "--staircase", "3:4s,7:4s",
        "--output-tokens", "2", "--input-tokens", "4", "--metrics-port", str(port),
        "--metrics-linger", "30", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    try:
        seen: list[float] = []

        def stair(rate: float) -> bool:
            g = gauge(url)
            if g is not None and g[1] == 1:
                seen.append(g[0])
            return bool(seen) and seen[-1] == rate

        wait_for(lambda: stair(3.0), 60, "the first stair's rate on /metrics", interval=0.05)
        wait_for(lambda: stair(7.0), 60, "the second stair's rate on /metrics", interval=0.05)
        # After the run (the linger's scrape) nothing is offered.
        wait_for(lambda: gauge(url) == (0.0, 0.0), 60, "the run to end", interval=0.05)
    finally:
        stop_pid(proc)
    # Only the stairs' rates while the run was on (and 0 before its start, as it began).
    assert set(seen) <= {0.0, 3.0, 7.0}, seen


def test_the_gauge_sums_the_active_runs_and_reads_0_without_a_schedule() -> None:
    series = LatbenchMetrics().series(RunLabels("t", "m", "chat", "s"))
    closed = series.start_run(lambda: 0)  # a closed loop: no offered rate
    assert series.offered_rate() == 0
    ramp = series.start_run(lambda: 0, lambda: 12.5)
    series.start_run(lambda: 0, lambda: None)  # an open loop not started yet, or stopped
    assert series.offered_rate() == 12.5
    series.end_run(ramp)
    series.end_run(closed)
    assert series.offered_rate() == 0
