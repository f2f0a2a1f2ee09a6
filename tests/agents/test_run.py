"""`latbench run --agents N` as a user runs it: the coordinator and its agents as child
processes over loopback, against a simulator child. N = 1 agent of 3 worker slots and N = 3 of
one each (one of them with a clock 2.5 s behind) send the same seeded open-loop schedule as one
local run of 3 workers: the same requests at the same intended instants, each record placed on
the coordinator's clock within its agent's bound of the simulator's own arrival stamp, and the
summary the records file gives again. A coordinator that cannot get its agents says which are
missing; one killed mid-run keeps every record it had received."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit.agents import TOKEN, Agents, free_port
from kit.cli import latbench, spawn
from kit.sim import truth_of

from latbench.agents.protocol import SKEW_ENV, TOKEN_ENV
from latbench.records import Record, read_records
from latbench.sim import SimProcess

# An open loop of 30 Poisson arrivals at 20/s from one seed: the schedule every layout sends.
# Words as tokens: no calibration request, so the simulator's last 30 requests are the run's.
SCHEDULE = (
    "--rate", "20", "--requests", "30", "--seed", "7", "--input-tokens", "8",
    "--output-tokens", "8", "--tokenizer", "words", "--json",
)  # fmt: skip
COORDINATOR_ENV = {TOKEN_ENV: TOKEN}
# Validity limits a shared 2-core machine meets: the verdict is not what these tests check.
LENIENT = (
    "validity: {ttft_tolerance: 1s, itl_tolerance: 1s, loop_lag_p99: 1s, queue_delay_p99: 1s, "
    "client_cpu: 4096}\n"
)


def lenient(tmp_path: Path) -> str:
    spec = tmp_path / "lenient.yaml"
    spec.write_text(LENIENT)
    return str(spec)


SKEW_NS = -2_500_000_000


def run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def offsets(records: list[Record]) -> dict[int, int]:
    """Each request's intended instant from the first one's."""
    first = min(r.t_intended for r in records)
    return {r.seq: r.t_intended - first for r in records}


def coordinate(
    url: str, out: Path, layout: list[int], agent_procs: Agents, skewed: int | None = None
) -> tuple[dict[str, Any], list[subprocess.Popen[str]]]:
    """A run on len(layout) agents, agent i with layout[i] worker slots (and, for `skewed`,
    a clock SKEW_NS off): its --json summary and the agents, ended."""
    port = free_port()
    coord = spawn(
        "run", "--spec", lenient(out.parent), "--target", url, "--agents", str(len(layout)),
        "--agent-listen", f"127.0.0.1:{port}", "--agent-wait", "90", *SCHEDULE, "--out", str(out),
        env=COORDINATOR_ENV,
    )  # fmt: skip
    procs = [
        agent_procs.start(
            f"127.0.0.1:{port}",
            workers=k,
            location=f"loc{i}",
            env={SKEW_ENV: str(SKEW_NS)} if i == skewed else None,
        )
        for i, k in enumerate(layout)
    ]
    stdout, stderr = coord.communicate(timeout=240)
    assert coord.returncode == 0, stderr
    for p in procs:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    return json.loads(stdout), procs


def test_agents_send_the_local_schedule_and_the_summary_is_their_records_union(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    s = sim(ttft=0.01, itl=0.002)
    local = latbench("run", "--spec", lenient(tmp_path), "--target", s.url, "--workers", "3",
                     *SCHEDULE, "--out", str(tmp_path / "local"))  # fmt: skip
    assert local.returncode == 0, local.stderr
    want = offsets(read_records(run_dir(tmp_path / "local") / "records.jsonl").records)
    assert sorted(want) == list(range(30))

    for name, layout, skewed in (("one", [3], None), ("three", [1, 1, 1], 1)):
        summary, _ = coordinate(s.url, tmp_path / name, layout, agent_procs, skewed)
        d = run_dir(tmp_path / name)
        records = read_records(d / "records.jsonl").records
        # The same requests, intended at the same instants: the clock offset a record was
        # moved by is the one its `go` was moved by, so the schedule comes back exact.
        assert offsets(records) == want, name
        results = json.loads((d / "results.json").read_text())
        rows = {row["index"]: row for row in results["agents"]}
        assert sorted(rows) == list(range(len(layout)))
        assert sum(row["records"] for row in rows.values()) == 30
        assert all(row["lost"] == 0 for row in rows.values())
        assert sorted(row["workers"] for row in rows.values()) == sorted(layout)
        for row in rows.values():
            truth = SKEW_NS if row["location"] == f"loc{skewed}" else 0
            assert abs(row["offset_ns"] - truth) <= row["uncertainty_ns"], row
            # Measured again after the run: one clock (or one skew) does not drift.
            assert type(row["drift_ns"]) is int and not row["flagged"], row
        by_agent: dict[int, set[int]] = {}
        for r in records:
            assert r.ok and r.agent is not None, r
            row = rows[r.agent]
            assert (r.location, r.clock_offset_ns) == (row["location"], row["offset_ns"])
            assert r.clock_uncertainty_ns == row["uncertainty_ns"]
            by_agent.setdefault(r.agent, set()).add(r.seq % 3)
        # On the coordinator's clock: each request sent before the simulator (on this host)
        # stamped its arrival, by no more than loopback's delivery, give or take its agent's
        # bound; left on the skewed agent's clock, a third of them would be 2.5 s off. Which
        # arrival is which request's is not needed: bounds that hold pair by pair hold between
        # the two lists sorted.
        sent = sorted(r.t_sent for r in records)
        arrived = sorted(e["arrival_ns"] for e in truth_of(s.url)[-30:])
        u = max(row["uncertainty_ns"] for row in rows.values())
        for t, a in zip(sent, arrived, strict=True):
            assert t <= a + u and a - t <= u + 20_000_000, (name, t, a)
        # Shard k of 3 is request n = k (mod 3): one agent sent all three, or each one.
        shards = sorted(min(v) for v in by_agent.values())
        assert shards == ([0] if len(layout) == 1 else [0, 1, 2]), by_agent
        assert all(len(v) == 3 // len(layout) for v in by_agent.values())
        # The merged summary is the single-host code over the union of the records.
        replay = latbench("summary", str(d / "records.jsonl"), "--json")
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout) == summary
        assert results["summary"] == {k: v for k, v in summary.items() if k != "reconciliation"}


def test_a_coordinator_without_its_agents_says_which_are_missing(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    s = sim(ttft=0.002, itl=0.001)
    port = free_port()
    coord = spawn(
        "run", "--target", s.url, "--agents", "2", "--agent-listen", f"127.0.0.1:{port}",
        "--agent-wait", "8", *SCHEDULE, "--out", str(tmp_path),
        env=COORDINATOR_ENV,
    )  # fmt: skip
    agent = agent_procs.start(f"127.0.0.1:{port}", index=0)
    _, err = coord.communicate(timeout=120)
    err = " ".join(err.split())
    assert coord.returncode == 1, err
    assert "1 of 2 agents registered in time; missing index 1 (registered: 0)" in err
    assert "latbench agent --coordinator" in err and "Traceback" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # no run was written
    _, agent_err = agent.communicate(timeout=30)
    assert agent.returncode == 1 and "the coordinator closed the connection" in agent_err


def test_a_coordinator_killed_mid_run_keeps_every_record_it_received(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    s = sim(ttft=0.002, itl=0.01)
    port = free_port()
    coord = spawn(
        "run", "--target", s.url, "--agents", "1", "--agent-listen", f"127.0.0.1:{port}",
        "--concurrency", "2", "--duration", "60", "--out", str(tmp_path),
        env=COORDINATOR_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    agent = agent_procs.start(f"127.0.0.1:{port}", workers=2)
    deadline = time.monotonic() + 120
    records = Path()
    while time.monotonic() < deadline:
        found = list(tmp_path.glob("*/records.jsonl"))
        if found and len(found[0].read_bytes().splitlines()) > 10:
            records = found[0]
            break
        time.sleep(0.05)
    assert records.name, "no records came"
    os.kill(coord.pid, signal.SIGKILL)
    coord.wait(30)
    _, err = agent.communicate(timeout=60)
    err = " ".join(err.split())
    assert agent.returncode == 1 and "the coordinator went away mid-run" in err, err
    f = read_records(records)
    assert f.header is not None and f.footer is None and len(f.records) >= 10
    assert all(r.agent == 0 for r in f.records)
    assert len({r.seq for r in f.records}) == len(f.records)
