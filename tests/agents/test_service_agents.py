"""`latbench serve` as the coordinator of long-lived agents: probes from many places.

Real processes over loopback: a simulator, a `latbench serve` with an `agents` section, and two
`latbench agent`s, one in location `near` and one in `far`. The `far` agent reaches the target
through a delaying TCP proxy (tests/kit/delay_proxy.py: the kernel here has no netem), named in
the catalogue as the target's URL for that location (`location_urls`), so only its requests see
the added delay, as a client in another region would. A schedule names `near`, `far` and
`nowhere` (no agent there): each firing runs a probe from each, on that location's agent.

Checked: the agents register and are listed by the API, and stay (idle, connected) between runs
and across a restart of the service; each location's probe ran on its own agent and its records
carry its location; `far`'s TTFT exceeds `near`'s by the proxy's delay; `nowhere`'s probe is a
recorded failure that says so; /metrics carries the `location` label; a submission asking for
agents the service does not have is refused with what it has; two runs that want the same agent
take turns.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kit.agents import TOKEN as AGENT_TOKEN
from kit.agents import Agents, agents, free_port
from kit.cli import latbench
from kit.delay_proxy import DelayProxy, delay_proxy
from kit.service import TOKEN, Service, parse_records, poll, service_config

from latbench.agents.protocol import TOKEN_ENV
from latbench.records import Record
from latbench.sim import SimConfig, SimProcess
from latbench.summary import record_samples

DELAY_S = 0.08  # added to every chunk toward the far agent
TTFT_S = 0.03
WAIT_S = 10.0  # agents.wait: how long a run waits for its agents
PROBE = {
    "load": {"concurrency": 1, "requests": 8, "warmup_requests": 1},
    "workload": {"input_tokens": 8, "output_tokens": 8, "tokenizer": "words"},
}


class Setup:
    def __init__(self, svc: Service, agents: Agents, proxy: DelayProxy, port: int) -> None:
        self.svc = svc
        self.agents = agents
        self.proxy = proxy
        self.port = port


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("service-agents")
    port = free_port()
    with (
        SimProcess(SimConfig(ttft=TTFT_S, itl=0.002)) as sim,
        delay_proxy(sim.url, DELAY_S) as proxy,
        agents() as procs,
    ):
        config = service_config(
            sim.url,
            work,
            targets={
                "sim": {
                    "base_url": sim.url,
                    "location_urls": {"far": proxy.url},
                    "max_concurrent_runs": 3,
                }
            },
            agents={"listen": f"127.0.0.1:{port}", "wait": f"{WAIT_S:g}s"},
            schedules=[
                {
                    "name": "probe",
                    "target": "sim",
                    "every": "1h",  # fires once, at the start, before any agent is there
                    "locations": ["near", "far", "nowhere"],
                    "spec": PROBE,
                }
            ],
        )
        svc = Service(config, work, env={TOKEN_ENV: AGENT_TOKEN}).start()
        try:
            # Started after the service: the first probes wait for them (agents.wait).
            procs.start(f"ws://127.0.0.1:{port}", location="near", connect_timeout=60)
            procs.start(f"ws://127.0.0.1:{port}", location="far", connect_timeout=60)
            yield Setup(svc, procs, proxy, port)
        finally:
            assert svc.stop() == 0, svc.log()


def listed(svc: Service) -> list[dict[str, Any]]:
    return list(svc.ok("GET", "/api/v1/agents")["agents"])


def idle_agents(svc: Service, n: int) -> list[dict[str, Any]]:
    def idle() -> list[dict[str, Any]] | None:
        agents = listed(svc)
        return agents if len(agents) == n and not any(a["busy"] for a in agents) else None

    return poll(idle, 30, f"{n} idle agents")


def probes(svc: Service) -> dict[str, dict[str, Any]]:
    """The schedule's first probe from each location, once all three have ended."""

    def ended() -> dict[str, dict[str, Any]] | None:
        runs = svc.runs(schedule="probe")
        by = {r["location"]: r for r in runs}
        done = len(by) == 3 and all(r["ended_at"] for r in by.values())
        return by if done else None

    return poll(ended, 90, "a probe from each location to end")


def records(svc: Service, run_id: str) -> list[Record]:
    _, recs, _ = parse_records(svc.records(run_id))
    return [r for r in recs if isinstance(r, Record)]


def test_agents_register_and_are_listed(setup: Setup) -> None:
    agents = idle_agents(setup.svc, 2)
    assert {a["location"] for a in agents} == {"near", "far"}
    assert sorted(a["index"] for a in agents) == [0, 1]
    for a in agents:
        assert a["host"] and a["pid"] > 0 and a["workers"] == 1
        # Loopback: the offset is measured to well under a millisecond.
        assert 0 < a["uncertainty_ns"] < 5_000_000 and not a["flagged"]
        assert a["connected_at"].endswith("Z")
    body = setup.svc.ok("GET", "/api/v1/agents")
    assert body["enabled"] is True and body["coordinator"].endswith(f":{setup.port}/v1/agents")
    (schedule,) = setup.svc.ok("GET", "/api/v1/schedules")["schedules"]
    assert schedule["locations"] == ["near", "far", "nowhere"] and schedule["agents"] == 1


def test_each_location_is_probed_from_its_own_agent(setup: Setup) -> None:
    by = probes(setup.svc)
    agents = {a["location"]: a["index"] for a in idle_agents(setup.svc, 2)}
    for loc in ("near", "far"):
        run = by[loc]
        assert run["state"] == "completed", run
        assert run["agents"] == 1 and run["schedule"] == "probe"
        recs = records(setup.svc, run["id"])
        assert len(recs) == 8 and all(r.ok for r in recs)
        assert {r.location for r in recs} == {loc}
        assert {r.agent for r in recs} == {agents[loc]}
        assert all(r.clock_uncertainty_ns is not None for r in recs)
    # Only the far agent's requests went through the proxy.
    assert setup.proxy.connections >= 1


def test_the_far_location_sees_the_added_delay(setup: Setup) -> None:
    by = probes(setup.svc)

    def ttft(loc: str) -> float:
        recs = [r for r in records(setup.svc, by[loc]["id"]) if r.phase == "measure"]
        return statistics.median(record_samples(r).per_request["ttft"] or 0.0 for r in recs)

    near, far = ttft("near"), ttft("far")
    assert abs(near - TTFT_S) < 0.02, near
    # The proxy holds the response's first chunk (headers and first token) DELAY_S.
    assert abs((far - near) - DELAY_S) < 0.02, (near, far)
    summary = {loc: by[loc]["id"] for loc in ("near", "far")}
    p50 = {
        loc: setup.svc.run(run_id)["summary"]["latency"]["ttft"]["p50"]
        for loc, run_id in summary.items()
    }
    assert abs((p50["far"] - p50["near"]) - DELAY_S) < 0.02, p50


def test_a_location_without_agents_is_a_recorded_failed_probe(setup: Setup) -> None:
    run = probes(setup.svc)["nowhere"]
    assert run["state"] == "failed"
    assert "in location 'nowhere' did not come within 10 s (agents.wait)" in run["error"]
    assert "1 in far, 1 in near" in run["error"]
    assert "--location nowhere" in run["error"]  # how to start one there


def test_metrics_carry_the_location(setup: Setup) -> None:
    probes(setup.svc)
    text = setup.svc.metrics()
    for loc in ("near", "far"):
        assert f'location="{loc}"' in text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("latbench_ttft_seconds_count{") and f'location="{loc}"' in x
        )
        assert 'scenario="probe"' in line and float(line.rsplit(" ", 1)[1]) == 7
        assert f'latbench_service_agents{{location="{loc}",state="idle"}} 1.0' in text
    assert 'location="nowhere"' not in text  # no agent registered there: no series


def test_submissions_asking_for_agents_the_service_lacks_are_refused(setup: Setup) -> None:
    idle_agents(setup.svc, 2)
    spec = {"target": "sim", **PROBE}
    status, body = setup.svc.call("POST", "/api/v1/runs", {**spec, "agents": 2, "location": "near"})
    assert status == 409
    assert body["error"].startswith(
        "the run asks for 2 agents in location 'near' and 1 is registered (index "
    )
    assert "latbench agent --coordinator ws://" in body["error"]
    status, body = setup.svc.call("POST", "/api/v1/runs", {**spec, "location": "mars"})
    assert status == 409
    assert body["error"].startswith(
        "no agent is registered in location 'mars' (2 agents registered: 1 in far, 1 in near)"
    )
    status, body = setup.svc.call("POST", "/api/v1/runs", {**spec, "agents": 3})
    assert status == 409 and "asks for 3 agents and 2 are registered" in body["error"]
    for bad, field in (({"agents": 0}, "agents"), ({"agents": "2"}, "agents"),
                       ({"location": ""}, "location"), ({"agents": 17}, "agents")):  # fmt: skip
        status, body = setup.svc.call("POST", "/api/v1/runs", {**spec, **bad})
        assert status == 400 and body["error"].startswith(f"{field}: "), (bad, body)


def test_two_runs_wanting_one_agent_take_turns(setup: Setup) -> None:
    idle_agents(setup.svc, 2)
    spec = {"target": "sim", **PROBE, "location": "near"}
    a = setup.svc.submit(spec)
    b = setup.svc.submit(spec)
    for run in (a, b):
        assert setup.svc.wait_state(run["id"], "completed", timeout=60)["location"] == "near"
    ra, rb = records(setup.svc, a["id"]), records(setup.svc, b["id"])
    first, second = sorted((ra, rb), key=lambda rs: min(r.t_sent for r in rs))  # type: ignore[type-var]
    # The second run's load began after the first's ended: the agent was lent to one at a time.
    assert min(r.t_sent for r in second) > max(r.t_end for r in first)  # type: ignore[type-var]


def test_a_run_on_agents_of_two_locations_is_labelled_mixed(setup: Setup) -> None:
    idle_agents(setup.svc, 2)
    run = setup.svc.submit({"target": "sim", "name": "both", **PROBE, "agents": 2})
    done = setup.svc.wait_state(run["id"], "completed", "failed", timeout=60)
    assert done["state"] == "completed", done
    assert done["agents"] == 2 and done["location"] is None
    recs = records(setup.svc, run["id"])
    # One user: the first worker slot, on the lowest index; the records say where they came from.
    assert {r.location for r in recs} <= {"near", "far"} and all(r.location for r in recs)
    text = setup.svc.metrics()
    assert any('location="mixed"' in x for x in text.splitlines() if "latbench_requests_total" in x)


def test_latbench_submit_places_a_run_on_agents(setup: Setup, tmp_path: Path) -> None:
    idle_agents(setup.svc, 2)
    spec = tmp_path / "probe.yaml"
    spec.write_text(yaml.safe_dump({"target": "sim", **PROBE}))
    env = {"LATBENCH_SERVER": setup.svc.url, "LATBENCH_TOKEN": TOKEN}
    p = latbench("submit", str(spec), "--location", "far", "--wait", "--json", env=env)
    assert p.returncode == 0, p.stderr
    run = setup.svc.run(json.loads(p.stdout)["id"])
    assert (run["agents"], run["location"], run["state"]) == (1, "far", "completed")
    p = latbench("submit", str(spec), "--agents", "5", env=env)
    assert p.returncode == 1
    said = " ".join(p.stderr.split())  # the terminal's line wrapping undone
    assert "HTTP 409: the run asks for 5 agents and 2 are registered (index 0, 1)" in said


def test_agents_stay_idle_between_runs_and_come_back_after_a_restart(setup: Setup) -> None:
    before = idle_agents(setup.svc, 2)
    assert all(p.poll() is None for p in setup.agents.procs)  # still running after their runs
    assert setup.svc.stop() == 0, setup.svc.log()
    setup.svc.start()
    after = idle_agents(setup.svc, 2)
    assert {a["location"] for a in after} == {a["location"] for a in before}
    assert all(p.poll() is None for p in setup.agents.procs)
    # And they run again: a probe from each location on the new service.
    for loc in ("near", "far"):
        run = setup.svc.submit({"target": "sim", **PROBE, "location": loc})
        done = setup.svc.wait_state(run["id"], "completed", "failed", timeout=60)
        assert done["state"] == "completed", done
        assert {r.location for r in records(setup.svc, run["id"])} == {loc}


def children(pid: int) -> list[str]:
    """The processes `pid` started that still run (Linux's view of them)."""
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def test_agents_come_back_after_the_service_is_killed_mid_run(setup: Setup) -> None:
    idle_agents(setup.svc, 2)
    near = next(p for p in setup.agents.procs if "near" in p.args)  # type: ignore[operator]
    long = {"target": "sim", **PROBE, "location": "near"}
    long["load"] = {"concurrency": 1, "requests": 2000}
    run = setup.svc.submit(long)
    poll(lambda: len(records(setup.svc, run["id"])) >= 3, 60, "the first records")
    assert children(near.pid)  # its worker sends the run's load
    setup.svc.kill9()
    # Its coordinator gone mid-run, the agent aborts its worker (nobody would measure that
    # load) and keeps knocking, rather than exiting.
    poll(lambda: not children(near.pid), 30, "the near agent's worker to be aborted")
    assert all(p.poll() is None for p in setup.agents.procs)
    setup.svc.start()
    idle_agents(setup.svc, 2)
    after = setup.svc.run(run["id"])
    assert after["state"] == "interrupted" and after["location"] == "near"
    kept = records(setup.svc, run["id"])
    assert len(kept) >= 3 and {r.location for r in kept} == {"near"}
    again = setup.svc.submit({"target": "sim", **PROBE, "location": "near"})
    assert setup.svc.wait_state(again["id"], "completed", timeout=60)["location"] == "near"
