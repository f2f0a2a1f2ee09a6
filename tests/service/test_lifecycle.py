"""The service's life as a process: scheduled probes, kill -9 and restart, SIGTERM, retention,
and start-up errors. Each test runs its own `latbench serve` child process against a simulator."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from kit.cli import Env, latbench
from kit.service import TOKEN, Service, parse_records, poll, request_lines, service_config
from prometheus_client.parser import text_string_to_metric_families

from latbench.service.api import API

LONG: dict[str, Any] = {
    "target": "sim",
    "load": {"concurrency": 2, "duration": "100s"},
    "workload": {"input_tokens": 16, "output_tokens": 16},
}
QUICK: dict[str, Any] = {
    "target": "sim",
    "load": {"concurrency": 1, "requests": 3},
    "workload": {"input_tokens": 16, "output_tokens": 8},
}


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_schedule_fires_and_its_runs_reach_history_and_metrics(
    sim_url: str, tmp_path: Path
) -> None:
    config = service_config(
        sim_url,
        tmp_path,
        schedules=[{"name": "probe", "target": "sim", "every": "1s", "jitter": "0.2s",
                    "spec": {"load": {"concurrency": 1, "requests": 3},
                             "workload": {"output_tokens": 8}}}],
    )  # fmt: skip
    svc = Service(config, tmp_path).start()
    try:
        runs = poll(
            lambda: len(r := svc.runs(schedule="probe", state="completed")) >= 2 and r,
            30,
            "two scheduled probes to complete",
        )
        assert all(r["schedule"] == "probe" and r["name"] == "probe" for r in runs)
        assert all(r["verdict"] is not None for r in runs)
        text = svc.metrics()
        ok = metric(text, "latbench_requests_total", scenario="probe", target="sim", outcome="ok")
        assert ok >= 6  # two runs of 3 measured requests, at least
        assert metric(text, "latbench_service_schedule_firings_total", schedule="probe",
                      outcome="submitted") >= 2  # fmt: skip
        sched = svc.ok("GET", f"{API}/schedules")["schedules"][0]
        assert sched["name"] == "probe" and sched["fired"] >= 2 and sched["next_fire_at"]
        assert sched["last_run_id"] in {r["id"] for r in svc.runs(schedule="probe")}
    finally:
        assert svc.stop() == 0, svc.log()


def test_kill9_mid_run_then_restart_keeps_history_and_partial_records(
    sim_url: str, tmp_path: Path
) -> None:
    svc = Service(service_config(sim_url, tmp_path), tmp_path).start()
    first = svc.submit(QUICK)
    svc.wait_state(first["id"], "completed")
    long = svc.submit(LONG)
    queued = svc.submit(QUICK)  # behind the long run on the same target
    poll(lambda: len(request_lines(svc.records(long["id"]))) >= 6, 30, "some finished records")
    before_kill = request_lines(svc.records(long["id"]))
    svc.kill9()

    svc.start()  # same config, same data directory
    try:
        run = svc.run(long["id"])
        assert run["state"] == "interrupted"
        assert "stopped while this run was in flight" in run["error"]
        header, records, footer = parse_records(svc.records(long["id"]))
        assert header is not None and footer is None  # killed: no footer, every line intact
        assert len(records) >= len(before_kill)
        assert [r.seq for r in records[: len(before_kill)]] == [r["seq"] for r in before_kill]
        # Its summary is of what it had measured.
        ok = sum(r.ok for r in records)
        assert run["summary"]["requests"]["succeeded"] == sum(
            r.ok and r.phase == "measure" for r in records
        )
        assert ok >= 6
        assert svc.run(first["id"])["state"] == "completed"  # history kept
        # The queued run was queued again and runs now.
        again = svc.wait_state(queued["id"], "completed")
        _, rerun, footer = parse_records(svc.records(again["id"]))
        assert footer is not None and len(rerun) == 3 and all(r.ok for r in rerun)
        listed = {r["id"]: r["state"] for r in svc.runs()}
        assert listed[long["id"]] == "interrupted" and listed[first["id"]] == "completed"
    finally:
        assert svc.stop() == 0, svc.log()


def _refused(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_stops_accepting_drains_and_exits_zero(sim_url: str, tmp_path: Path) -> None:
    grace = 3.0
    svc = Service(service_config(sim_url, tmp_path, shutdown_grace=f"{grace}s"), tmp_path).start()
    long = svc.submit(LONG)
    poll(lambda: len(request_lines(svc.records(long["id"]))) >= 2, 30, "some finished records")
    assert svc.proc is not None
    t0 = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    # It stops accepting at once, while still draining the run.
    poll(lambda: _refused(svc.url), 2, "the listening socket to close")
    assert svc.proc.poll() is None
    code = svc.proc.wait(grace + 15)
    took = time.monotonic() - t0
    assert code == 0, svc.log()
    # Within the grace, plus cancelling what was in flight (milliseconds) and closing up.
    assert grace <= took < grace + 10, took
    log = svc.log()
    assert "shutting down" in log and "cancelled by the shutdown" in log and "stopped" in log

    _, records, footer = parse_records((svc.data_dir / "runs" / long["id"] / "records.jsonl")
                                       .read_bytes())  # fmt: skip
    assert footer is not None and footer.ended == "aborted"  # flushed, footer written
    assert any(r.error == "cancelled" for r in records)

    svc.start()
    try:
        run = svc.run(long["id"])
        assert run["state"] == "interrupted" and "shut down" in run["error"]
        assert run["ended"] == "aborted" and run["summary"] is not None
    finally:
        assert svc.stop() == 0


def test_second_signal_skips_the_grace(sim_url: str, tmp_path: Path) -> None:
    svc = Service(service_config(sim_url, tmp_path, shutdown_grace="60s"), tmp_path).start()
    long = svc.submit(LONG)
    poll(lambda: len(request_lines(svc.records(long["id"]))) >= 2, 30, "some finished records")
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGTERM)
    poll(lambda: "shutting down" in svc.log(), 5, "the first signal to be seen")
    svc.proc.send_signal(signal.SIGINT)
    assert svc.proc.wait(20) == 0  # far sooner than the 60 s grace


def test_retention_prunes_the_oldest_finished_runs(sim_url: str, tmp_path: Path) -> None:
    config = service_config(sim_url, tmp_path, retention={"max_runs": 2, "max_age": None})
    svc = Service(config, tmp_path).start()
    try:
        ids = []
        for _ in range(3):
            ids.append(svc.submit(QUICK)["id"])
            svc.wait_state(ids[-1], "completed")
        poll(lambda: svc.call("GET", f"{API}/runs/{ids[0]}")[0] == 404, 10, "the oldest to go")
        assert not (svc.data_dir / "runs" / ids[0]).exists()
        assert [r["id"] for r in svc.runs()] == ids[:0:-1]
        assert (svc.data_dir / "runs" / ids[2] / "records.jsonl").exists()
    finally:
        assert svc.stop() == 0


def serve_fails(config: dict[str, Any], tmp_path: Path, env: Env) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    p = latbench("serve", "--config", str(path), timeout=60, env=env)
    assert p.returncode == 2, (p.returncode, p.stderr)
    return p.stderr


@pytest.mark.parametrize(
    ("change", "env", "says"),
    [
        ({}, {}, "LATBENCH_TOKEN"),
        ({}, {"LATBENCH_TOKEN": "short"}, "at least 16"),
        ({"limits": {"max_concurency": 3}}, None, "limits.max_concurency: unknown field"),
        (
            {
                "schedules": [
                    {
                        "name": "p",
                        "target": "sim",
                        "every": "1m",
                        "spec": {"load": {"concurrency": 500, "requests": 1}},
                    }
                ]
            },
            None,
            "schedule 'p': load.concurrency: 500 is over",
        ),
        (
            {"schedules": [{"name": "p", "target": "nope", "every": "1m"}]},
            None,
            "target 'nope' is not in targets",
        ),
        (
            {"schedules": [{"name": "p", "target": "sim", "cron": "61 * * * *"}]},
            None,
            "is not a cron line",
        ),
        (
            {"targets": {"sim": {"base_url": "http://u:p@127.0.0.1:1"}}},
            None,
            "must not hold credentials",
        ),
        (
            {"targets": {"sim": {"base_url": "http://127.0.0.1:1", "api_key_env": "NO_SUCH_VAR"}}},
            None,
            "targets.sim: target.api_key_env: environment variable NO_SUCH_VAR is not set",
        ),
    ],
)
def test_start_up_errors_name_the_problem(
    sim_url: str, tmp_path: Path, change: dict[str, Any], env: dict[str, str] | None, says: str
) -> None:
    config = {**service_config(sim_url, tmp_path), **change}
    token = {"LATBENCH_TOKEN": TOKEN} if env is None else env
    # None unsets it: the shell's LATBENCH_TOKEN must not stand in for the one under test.
    err = serve_fails(config, tmp_path, {"LATBENCH_TOKEN": None, **token})
    err = " ".join(err.split())  # rich wraps lines
    assert says in err, err
    assert "Traceback" not in err
