"""Sweeps and the SLO capacity search: the pure planning parts with tables of cases, then
`latbench sweep` end to end against the simulator, whose knee is known from its parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from kit.cli import latbench

from latbench import SpecError
from latbench.render import Sweep, load_results
from latbench.sim import SimConfig, capacity_rps, events_for
from latbench.sweep import CapacitySearch, Outcome, parse_values


@pytest.mark.parametrize(
    ("text", "variable", "values"),
    [
        ("1,2,4,8", "concurrency", [1, 2, 4, 8]),
        ("4:16:4", "concurrency", [4, 8, 12, 16]),
        ("1:64:x2", "concurrency", [1, 2, 4, 8, 16, 32, 64]),
        ("5:20:5", "rate", [5, 10, 15, 20]),
        ("0.5:4:x2", "rate", [0.5, 1, 2, 4]),
        ("2.5", "rate", [2.5]),
    ],
)
def test_values_parse(text: str, variable: str, values: list[float]) -> None:
    assert parse_values(text, variable) == values  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "variable", "message"),
    [
        ("1,two", "concurrency", "'two' is not a number"),
        ("1.5", "concurrency", "whole number"),
        ("0,5", "rate", "above 0"),
        ("10:5:1", "rate", "STOP must be at least START"),
        ("1:8:x1", "rate", "factor above 1"),
        ("1:8", "rate", "START:STOP:STEP"),
    ],
)
def test_bad_values_are_named(text: str, variable: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_values(text, variable)  # type: ignore[arg-type]


def drive(search: CapacitySearch, limit_value: float) -> list[tuple[float, Outcome]]:
    """Run the search against a server that passes every value at or under `limit_value`."""
    tried: list[tuple[float, Outcome]] = []
    while (v := search.next_value()) is not None:
        outcome: Outcome = "pass" if v <= limit_value else "fail"
        tried.append((v, outcome))
        search.record(v, outcome)
    return tried


@pytest.mark.parametrize("true_limit", [3.0, 19.3, 150.0, 1000.0])
def test_rate_search_brackets_then_narrows_to_the_resolution(true_limit: float) -> None:
    s = CapacitySearch("rate", 5.0, resolution=0.05, max_steps=30)
    tried = drive(s, true_limit)
    assert s.stopped_by == "resolution"
    assert s.lo is not None and s.hi is not None
    assert s.lo <= true_limit < s.hi
    assert s.hi / s.lo - 1 <= 0.05
    # Grows by 2x while passing (or shrinks while failing), then bisects: few steps.
    assert len(tried) <= 6 + abs(round(math.log2(true_limit / 5)))


@pytest.mark.parametrize("true_limit", [1, 7, 8, 33])
def test_concurrency_search_ends_on_neighbouring_integers(true_limit: int) -> None:
    s = CapacitySearch("concurrency", 1, max_steps=30)
    tried = drive(s, true_limit)
    assert all(v == int(v) for v, _ in tried)
    assert s.lo == true_limit and s.hi == true_limit + 1
    assert len({v for v, _ in tried}) == len(tried)  # never the same value twice


def test_search_stops_at_a_client_bound_step_and_at_the_limit() -> None:
    s = CapacitySearch("rate", 4.0)
    s.record(4.0, "pass")
    assert s.next_value() == 8.0
    s.record(8.0, "client-bound")
    assert s.next_value() is None and s.stopped_by == "client" and s.lo == 4.0

    capped = CapacitySearch("rate", 4.0, limit=10.0)
    assert drive(capped, 1e9) == [(4.0, "pass"), (8.0, "pass"), (10.0, "pass")]
    assert capped.stopped_by == "limit"


def test_search_shrinks_when_the_start_already_fails() -> None:
    s = CapacitySearch("rate", 40.0, resolution=0.1)
    tried = drive(s, 6.0)
    assert [v for v, _ in tried[:4]] == [40.0, 20.0, 10.0, 5.0]
    assert s.lo is not None and s.lo <= 6.0 < (s.hi or 0)


# Validity limits loosened for the figures tests (as tests/cli/test_run.py does): a shared 2-core
# machine delays the client's loop now and then, and these tests are about the server's knee.
LOOSE = (
    "validity: {ttft_tolerance: 2s, itl_tolerance: 2s, "
    "loop_lag_p99: 2s, queue_delay_p99: 2s, client_cpu: 8}\n"
)


def test_find_max_lands_on_the_simulators_knee(tmp_path: Path) -> None:
    """The simulator with `max_batch` B serves at most B / S(B) requests/s (its docstring); past
    that its queue, and with it TTFT, grows without bound. With constant arrivals at (1 + e)
    times the knee, the queue wait grows as e * t, so a step of t = 2.5 s fails the
    `ttft:p90<=200ms` SLO once e * 2.3 s (the p90 request's time) exceeds about 150 ms: e of
    about +7 %. The search's bracket is 10 % wide, and a failing step is confirmed by a second
    try, so one step slowed by a busy machine does not end the search early. So the capacity
    found lies within -25 % (bracket, plus noise) and +12 % of the knee."""
    sim = {
        "max_batch": 8,
        "ttft": 0.02,
        "ttft_per_stream": 0.005,
        "itl": 0.01,
        "itl_per_stream": 0.002,
    }
    knee = capacity_rps(SimConfig.model_validate(sim), events_for(16, 0, 1))
    assert 19 < knee < 20  # 8 / (0.055 + 15 * 0.024)
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "sweep", "--find-max", "rate", "--mode", "constant", "--spec", str(spec),
        "--out", str(tmp_path), "--duration", "2.5s", "--warmup", "0.5s",
        "--output-tokens", "16", "--input-tokens", "16", "--slo", "ttft:p90<=200ms",
        "--resolution", "10%", "--max-steps", "8", "--no-report",
        *(x for k, v in sim.items() for x in ("--sim", f"{k}={v}")),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (sweep_file,) = tmp_path.glob("sweep-*/sweep.json")
    doc = json.loads(sweep_file.read_text())
    cap = doc["capacity"]
    assert cap["limited_by"] == "slo", cap
    assert 0.75 * knee <= cap["value"] <= 1.12 * knee, (cap, knee)
    assert cap["value"] < cap["ceiling"] <= cap["value"] * 1.1 + 1e-9
    # The evidence: the passing and the failing step around it, each SLO with its interval.
    steps = doc["steps"]
    passing, failing = steps[cap["passing_step"]], steps[cap["failing_step"]]
    assert passing["outcome"] == "pass" and passing["value"] == cap["value"]
    assert failing["outcome"] == "fail" and failing["value"] == cap["ceiling"]
    (ev,) = cap["evidence"]
    assert ev["slo"] == "ttft:p90<=200ms"
    assert ev["passing"]["ci_low_s"] <= ev["passing"]["value_s"] <= ev["passing"]["ci_high_s"]
    assert ev["failing"]["value_s"] > 0.2
    assert cap["headline"] in p.stdout.replace("\n", "")
    # Steps are in the order they ran, the first a one-user baseline, each with its records.
    assert [s["index"] for s in steps] == list(range(len(steps)))
    assert steps[0]["role"] == "baseline" and steps[0]["variable"] == "concurrency"
    for s in steps:
        assert (sweep_file.parent / s["records"]).is_file()
        assert s["ended"] == "completed"
    # Every verdict and the capacity are a function of the records: recomputed, they agree.
    again = load_results(sweep_file)
    assert isinstance(again, Sweep) and again.capacity is not None
    assert again.capacity.value == cap["value"] and again.capacity.ceiling == cap["ceiling"]
    assert [s.verdict.outcome for s in again.steps] == [s["outcome"] for s in steps]


def test_list_sweep_runs_every_step_in_order_and_writes_one_results_file(tmp_path: Path) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "sweep", "--concurrency", "3,1,2", "--spec", str(spec), "--out", str(tmp_path),
        "--requests", "12", "--warmup-requests", "2", "--output-tokens", "4",
        "--sim", "ttft=0.01", "--sim", "itl=0.002", "--save-result",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (sweep_dir,) = tmp_path.glob("sweep-*")
    vllm = json.loads((sweep_dir / "vllm-results.json").read_text())
    assert [v["max_concurrency"] for v in vllm] == [3, 1, 2]
    assert all(v["completed"] == 10 for v in vllm)
    doc = json.loads((sweep_dir / "sweep.json").read_text())
    assert doc["plan"] == {"kind": "list", "variable": "concurrency", "values": [3, 1, 2]}
    assert [(s["index"], s["value"]) for s in doc["steps"]] == [(0, 3), (1, 1), (2, 2)]
    for s in doc["steps"]:
        assert s["spec"]["load"]["concurrency"] == s["value"]
        assert s["spec"]["load"]["mode"] == "closed"
        assert s["summary"]["requests"]["measured"] == 10
        results = json.loads((sweep_dir / s["results"]).read_text())
        assert results["summary"] == s["summary"]  # the step's own results file agrees
    # No step failed: the capacity is a lower bound, and said to be one.
    assert doc["capacity"]["limited_by"] == "never-failed"
    assert doc["capacity"]["value"] == 3
    # The default report is written beside the results.
    for name in ("report.html", "report.md", "report.csv"):
        assert (sweep_dir / name).stat().st_size > 0
    csv_lines = (sweep_dir / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("step,role,variable,value,outcome")


def test_sweep_flags_are_checked_before_any_step_runs(tmp_path: Path) -> None:
    p = latbench("sweep", "--out", str(tmp_path), "--requests", "5")
    assert p.returncode == 2
    assert "--concurrency LIST or --rate LIST" in p.stderr
    p = latbench("sweep", "--out", str(tmp_path), "--rate", "5,x", "--requests", "5")
    assert p.returncode == 2 and "'x' is not a number" in p.stderr
    p = latbench("sweep", "--out", str(tmp_path), "--find-max", "--resolution", "5")
    assert p.returncode == 2 and "--resolution '5'" in p.stderr
    p = latbench("sweep", "--out", str(tmp_path), "--rate", "5", "--metrics-port", "0")
    assert p.returncode == 2 and "does not export Prometheus metrics" in p.stderr
    assert not list(tmp_path.iterdir())


def test_auto_sweep_spreads_rates_between_one_user_and_saturation(tmp_path: Path) -> None:
    spec = tmp_path / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "sweep", "--auto", "--steps", "2", "--max-concurrency", "6", "--mode", "constant",
        "--spec", str(spec), "--out", str(tmp_path), "--requests", "18",
        "--warmup-requests", "3", "--output-tokens", "4", "--no-report",
        "--sim", "ttft=0.02", "--sim", "itl=0.005",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (sweep_file,) = tmp_path.glob("sweep-*/sweep.json")
    steps = json.loads(sweep_file.read_text())["steps"]
    assert [(s["role"], s["variable"]) for s in steps] == [
        ("baseline", "concurrency"),
        ("throughput", "concurrency"),
        ("step", "rate"),
        ("step", "rate"),
    ]
    assert [s["value"] for s in steps[:2]] == [1, 6]
    r_sync, r_max = (s["summary"]["rates"]["requests_per_s"] for s in steps[:2])
    r1, r2 = steps[2]["value"], steps[3]["value"]
    # Evenly spaced strictly between the two measured rates (GuideLLM's sweep).
    assert r_sync < r1 < r2 < r_max
    gap = (r_max - r_sync) / 3
    assert r1 == pytest.approx(r_sync + gap, rel=1e-5)
    assert r2 == pytest.approx(r_sync + 2 * gap, rel=1e-5)
    for s in steps[2:]:
        assert s["spec"]["load"]["mode"] == "constant" and s["spec"]["load"]["rate"] == s["value"]
