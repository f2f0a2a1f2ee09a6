"""A sweep step past the simulator's knee stops early as over-saturated, fails, and counts as
above capacity; a list plan runs no later step at a higher rate; the report says why."""

from __future__ import annotations

import json
from pathlib import Path

from kit.cli import latbench

from latbench.render import Sweep, load_results
from latbench.sim import SimConfig, capacity_rps, events_for
from latbench.spec import load_spec
from latbench.sweep import step_data

SIM = {"max_batch": 4, "ttft": 0.02, "itl": 0.01}
TOKENS = 20
SPEC = (
    "load: {oversaturation: {window: 4s, hold: 1s, min_requests: 20, min_ttft: 300ms}}\n"
    "validity: {ttft_tolerance: 2s, itl_tolerance: 2s, loop_lag_p99: 2s, "
    "queue_delay_p99: 2s, client_cpu: 8}\n"
)


def test_a_step_past_the_knee_stops_early_and_bounds_the_capacity(tmp_path: Path) -> None:
    knee = capacity_rps(SimConfig.model_validate(SIM), events_for(TOKENS, 0, 1))
    under, past, further = round(0.5 * knee, 2), round(2 * knee, 2), round(3 * knee, 2)
    spec = tmp_path / "watch.yaml"
    spec.write_text(SPEC)
    p = latbench(
        "sweep", "--rate", f"{under},{past},{further}", "--mode", "constant",
        "--spec", str(spec), "--out", str(tmp_path), "--duration", "12s",
        "--output-tokens", str(TOKENS), "--input-tokens", "8",
        *(x for k, v in SIM.items() for x in ("--sim", f"{k}={v}")),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (sweep_file,) = tmp_path.glob("sweep-*/sweep.json")
    doc = json.loads(sweep_file.read_text())
    assert doc["ended"] == "completed"
    steps = doc["steps"]
    # The third rate was never run: a lower one already over-saturated the server.
    assert [s["value"] for s in steps] == [under, past]
    assert "skipping rate" in p.stderr
    first, second = steps
    assert first["ended"] == "completed" and first["outcome"] == "pass"
    assert first["summary"]["oversaturation"] is None
    assert second["ended"] == "oversaturated" and second["outcome"] == "fail"
    over = second["summary"]["oversaturation"]
    assert over["after_s"] < 10  # stopped before its 12 s
    assert any(r.startswith("over-saturated after") for r in second["reasons"])
    assert not any("failed" in r for r in second["reasons"])  # the cut requests are cancelled
    cap = doc["capacity"]
    assert cap["value"] == under and cap["ceiling"] == past
    assert any("over-saturated" in n for n in cap["notes"])
    # Recomputed from the records files (the footer keeps the verdict), the same.
    again = load_results(sweep_file)
    assert isinstance(again, Sweep) and again.capacity is not None
    assert [s.verdict.outcome for s in again.steps] == ["pass", "fail"]
    assert again.capacity.ceiling == past
    # The reports show it.
    report = (sweep_file.parent / "report.md").read_text()
    assert "over-saturated after" in report
    assert "over-saturated after" in (sweep_file.parent / "report.html").read_text()
    header, *rows = (sweep_file.parent / "report.csv").read_text().splitlines()
    at = header.split(",").index("oversaturated_after_s")
    assert [r.split(",")[at] for r in rows] == ["", f"{over['after_s']}"]


def test_a_base_spec_that_turns_the_watch_on_leaves_closed_steps_unwatched() -> None:
    # `enabled: true` is for the open-loop steps; a closed step asked to watch is refused
    # ("a closed loop cannot over-saturate"), which broke --auto's baseline and concurrency lists.
    over = {"enabled": True, "window": "4s"}
    base = {"load": {"mode": "constant", "duration": "5s", "oversaturation": over}}
    closed = load_spec(step_data(base, "concurrency", 4, None)).load
    assert (closed.mode, closed.concurrency) == ("closed", 4)
    assert closed.oversaturation.enabled is None and closed.oversaturation.window == 4
    assert not closed.oversaturation.applies(closed.open_loop)
    opened = load_spec(step_data(base, "rate", 5, None)).load
    assert opened.oversaturation.enabled is True and opened.open_loop
    assert base["load"]["oversaturation"] == {"enabled": True, "window": "4s"}  # not changed
