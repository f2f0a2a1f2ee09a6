"""The "TTFT p99 against the offered rate" panel against a real Prometheus that scrapes a real
staircase run: its three queries, with Grafana's variables substituted, return the stairs' rates
(the offered-rate gauge at 3 and then 7 req/s), a TTFT p99 and the finishing rate. The other
panels' queries run in tests/e2e/test_prometheus_live.py, over closed-loop runs that offer 0."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kit.cli import spawn
from kit.promql import NEEDS, PROMETHEUS, Prometheus, free_port, stop_pid, substitute, wait_for

from latbench.sim import SimConfig, SimProcess

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=NEEDS)

PANEL = "TTFT p99 against the offered rate"
DASHBOARD = Path(__file__).resolve().parents[2] / "grafana/dashboards/latbench-latency.json"


def panel_targets() -> list[dict[str, Any]]:
    (panel,) = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"] == PANEL]
    return list(panel["targets"])


def test_the_panel_shows_the_stairs_rates_and_the_latency(tmp_path: Path) -> None:
    port = free_port()
    spec = tmp_path / "spec.yaml"
    spec.write_text("validity: {ttft_tolerance: 2s, itl_tolerance: 2s, queue_delay_p99: 2s}\n")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "latbench", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        ],
    }
    with SimProcess(SimConfig(ttft=0.01, itl=0.002)) as sim:
        prom = Prometheus(config, tmp_path / "prometheus")
        proc = None
        try:
            t_start = time.time()
            proc = spawn(
                "run", "--spec", str(spec), "--target", sim.url, "--name", "stairs",
                "--staircase", "3:5s,7:5s", "--input-tokens", "4", "--output-tokens", "4",
                "--metrics-port", str(port), "--metrics-linger", "30", "--out", str(tmp_path),
            )  # fmt: skip
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            t_end = time.time()
            variables = {
                "__rate_interval": "4s", "__interval": "1s", "__range": "60s",
                "datasource": "prometheus", "target": ".*", "model": ".*", "scenario": "stairs",
                "location": ".*",
            }  # fmt: skip
            got = {}
            for t in panel_targets():
                expr = substitute(t["expr"], variables)

                def values(e: str = expr) -> list[float] | None:
                    rows = prom.query_range(e, t_start, t_end + 2, 1)
                    vals = [float(v[1]) for r in rows for v in r["values"] if v[1] != "NaN"]
                    return vals or None

                got[t["refId"]] = wait_for(values, 30, f"data for {t['legendFormat']}")
        finally:
            if proc is not None:
                stop_pid(proc)
            prom.stop()
    # B: the offered rate, scraped each second: both stairs seen, nothing else but 0.
    assert {3.0, 7.0} <= set(got["B"]) <= {0.0, 3.0, 7.0}, got["B"]
    # A: a TTFT p99 near the simulator's 10 ms; C: requests finishing, at most the top stair's.
    assert 0.005 < max(got["A"]) < 1.0
    assert 0 < max(got["C"]) < 10
