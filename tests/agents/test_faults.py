"""Faults on a distributed run, as a user meets them: the coordinator (`latbench run --agents N`)
and its agents as child processes over loopback, against a simulator child.

An agent SIGKILLed mid-run leaves a partial result: its finished records kept, its in-flight ones
`lost` with a reason that names it, the other agents' shards sent whole (`--on-agent-loss
continue`) or stopped at once (`stop`), the run `incomplete` (exit 1), and the share of the
planned load it never offered counted from the schedule, which the records confirm to within a
request. An agent SIGSTOPped (a frozen host: noticed only when its connection's pings give up)
is counted from the first request it never announced, not from when it was noticed. Each agent
is judged on its own records exactly as a single-host run of them would be.
A coordinator SIGKILLed mid-run leaves a records file whose every line reads, and agents that say
why they stop. An agent behind a slow link (a delaying TCP proxy of this test's own, since the
kernel here has no `netem`) has an uncertain clock: flagged, said in the terminal and the
reports, and not client-bound for it. The coordinator's Prometheus series count every agent's
records, the lost ones too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kit.agents import TOKEN, Agents, free_port
from kit.cli import latbench, spawn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from latbench.agents.pool import AgentPool
from latbench.agents.protocol import TOKEN_ENV
from latbench.exporter import LatbenchMetrics
from latbench.records import Record, read_records
from latbench.run.benchmark import Agents as RunAgents
from latbench.run.benchmark import run_benchmark
from latbench.sim import SimProcess
from latbench.spec import load_spec
from latbench.summary import summarize
from latbench.summary.validity import AgentStats

COORDINATOR_ENV = {TOKEN_ENV: TOKEN}
# Validity limits a shared 2-core machine meets: the verdict is not what most of these check.
LENIENT = (
    "validity: {ttft_tolerance: 1s, itl_tolerance: 1s, loop_lag_p99: 1s, queue_delay_p99: 1s, "
    "client_cpu: 4096}\n"
)
WAIT_S = 90.0  # agents are Python processes starting on a busy 2-core machine


def lenient(tmp_path: Path) -> str:
    spec = tmp_path / "lenient.yaml"
    spec.write_text(LENIENT)
    return str(spec)


def records_of(out: Path) -> Path | None:
    found = list(out.glob("*/records.jsonl"))
    return found[0] if found else None


def lines_of(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a records file, parsed (the one being written is left)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def wait_for_records(out: Path, enough: Callable[[list[dict[str, Any]]], bool]) -> Path:
    """The run's records file once its request lines satisfy `enough` (polled, with a
    deadline)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        path = records_of(out)
        if path is not None:
            requests = [d for d in lines_of(path) if d.get("type") == "request"]
            if enough(requests):
                return path
        time.sleep(0.05)
    raise AssertionError("the records did not come")


def start_run(
    tmp_path: Path, url: str, agents: int, *args: str, out: Path | None = None
) -> tuple[subprocess.Popen[str], int, Path]:
    """The coordinator, started: its process, the port agents dial and its output folder."""
    port = free_port()
    out = out or tmp_path / "out"
    coord = spawn(
        "run", "--spec", lenient(tmp_path), "--target", url, "--agents", str(agents),
        "--agent-listen", f"127.0.0.1:{port}", "--agent-wait", str(WAIT_S), "--mode", "constant",
        "--input-tokens", "8", "--tokenizer", "words", "--out", str(out), *args,
        env=COORDINATOR_ENV,
    )  # fmt: skip
    return coord, port, out


def planned_offsets(rate: float, duration: float) -> list[int]:
    """A constant schedule's requests (`--mode constant`), as the spec states it: request n at
    n / rate seconds, every one before the duration's end."""
    return [n for n in range(int(rate * duration) + 2) if n / rate < duration]


def test_an_agent_killed_mid_run_leaves_a_partial_result_that_names_it_and_its_shortfall(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    s = sim(ttft=0.005, itl=0.02)  # 8 tokens: ~0.15 s a request, so some are in flight
    rate, duration = 25.0, 8.0
    coord, port, out = start_run(
        tmp_path, s.url, 3, "--rate", str(rate), "--duration", str(duration),
        "--output-tokens", "8", "--json",
    )  # fmt: skip
    procs = [agent_procs.start(f"127.0.0.1:{port}", index=i, location=f"loc{i}") for i in range(3)]
    # Agent i runs shard i of 3 (one slot each): requests n = i (mod 3). Killed once it has
    # finished a few, it leaves finished records, in-flight ones, and most of its shard unsent.
    wait_for_records(out, lambda reqs: sum(d.get("agent") == 2 for d in reqs) >= 5)
    os.kill(procs[2].pid, signal.SIGKILL)
    stdout, stderr = coord.communicate(timeout=120)
    stderr = " ".join(stderr.split())
    assert coord.returncode == 1, stderr  # incomplete: exit 1, as a dead local worker makes it
    assert "Traceback" not in stderr
    assert "the run is incomplete: agent 2 (host" in stderr
    assert "location loc2) lost: connection closed" in stderr
    for p in procs[:2]:  # the others went on to the end, and were told they are done
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    assert procs[2].wait(10) == -signal.SIGKILL

    run = records_of(out)
    assert run is not None
    results = json.loads((run.parent / "results.json").read_text())
    assert results["ended"] == "incomplete"
    f = read_records(run)
    assert f.footer is not None and f.footer.ended == "incomplete"
    by_agent: dict[int, list[Record]] = {0: [], 1: [], 2: []}
    for r in f.records:
        assert r.agent is not None
        by_agent[r.agent].append(r)
    planned = planned_offsets(rate, duration)
    # The others' shards were sent whole, every request once.
    for i in (0, 1):
        assert sorted(r.seq for r in by_agent[i]) == [n for n in planned if n % 3 == i]
        assert all(r.ok for r in by_agent[i]), [r.error_detail for r in by_agent[i] if not r.ok]
    # The victim's finished records are kept; what it had in flight is lost, naming it.
    victim = by_agent[2]
    assert sum(r.ok for r in victim) >= 5
    lost = [r for r in victim if not r.ok]
    assert lost and all(r.error is not None and r.error.value == "lost" for r in lost)
    for r in lost:
        assert "agent 2 (host" in str(r.error_detail)
        assert "location loc2) lost: connection closed" in str(r.error_detail)
    assert len({r.seq for r in f.records}) == len(f.records)
    row = {a["index"]: a for a in results["agents"]}[2]
    assert row["lost"] == len(lost) and row["records"] == len(victim)
    assert "lost: connection closed" in row["lost_reason"]

    # What it never offered, from the schedule: the rest of shard 2 after its loss. The records
    # say how much of shard 2 was offered (finished or lost in flight); the schedule counts
    # from the instant its connection closed, so they agree to within the request or so that
    # was due around that instant.
    shortfall = results["summary"]["validity"]["not_offered"]
    assert shortfall["unit"] == "requests" and shortfall["planned"] == len(planned)
    assert shortfall["lost"] == [f"agent 2 (host {row['host']}, location loc2)"]
    assert shortfall["stopped"] is False
    offered = {r.seq for r in victim}
    unsent = len([n for n in planned if n % 3 == 2 and n not in offered])
    assert abs(shortfall["not_offered"] - unsent) <= 1, (shortfall, unsent)
    assert shortfall["share"] == pytest.approx(shortfall["not_offered"] / len(planned), abs=1e-6)
    assert 0.1 < shortfall["share"] < 1 / 3
    assert f"{shortfall['not_offered']:,} of {len(planned):,} planned requests" in stderr
    assert results["incomplete"].endswith(
        f"of the planned load was not offered ({shortfall['not_offered']:,} of "
        f"{len(planned):,} planned requests): {shortfall['lost'][0]} was lost"
    )
    assert any("not offered" in note for note in results["summary"]["validity"]["notes"])

    # Each agent judged alone is a single-host summary of its own records, with its own
    # workers' figures from the footer: the same verdict, figure for figure.
    assert f.header is not None and f.footer.validity
    spec = load_spec(f.header.spec)
    stats = {a["index"]: AgentStats.from_dict(a) for a in f.footer.validity["agents"]}
    assert stats[2].lost is not None and stats[0].lost is None
    judged = {a["index"]: a for a in results["summary"]["validity"]["agents"]}
    for i in range(3):
        single_host = [
            replace(r, agent=None, location=None, clock_offset_ns=None, clock_uncertainty_ns=None)
            for r in by_agent[i]
        ]
        alone = summarize(
            single_host,
            window=(f.footer.window_start, f.footer.window_end),
            client=stats[i].client(open_loop=True),
            limits=spec.validity.limits(),
            load=spec.load,
        ).validity.to_dict()
        assert judged[i]["validity"] == alone, i
        assert judged[i]["measured"] == len(by_agent[i])
        assert {a["index"]: a for a in results["agents"]}[i]["validity"] == alone
    # The live summary is the records file's.
    replay = latbench("summary", str(run), "--json")
    assert replay.returncode == 1
    assert json.loads(replay.stdout) == json.loads(stdout)
    assert f"{shortfall['not_offered']:,} of {len(planned):,} planned requests" in " ".join(
        replay.stderr.split()
    )


def test_a_frozen_agent_counts_as_not_offering_all_it_never_announced(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    # SIGSTOP, as a frozen host or a cut cable: the connection stays open and silent until its
    # heartbeat gives up (up to 1.5 x 10 s). What the agent's shard planned in that gap was
    # never offered and has no record; the shortfall must count it, not cut at the notice.
    s = sim(ttft=0.005, itl=0.02)
    rate, duration = 10.0, 6.0
    coord, port, out = start_run(
        tmp_path, s.url, 2, "--rate", str(rate), "--duration", str(duration),
        "--output-tokens", "8", "--json",
    )  # fmt: skip
    procs = [agent_procs.start(f"127.0.0.1:{port}", index=i, own_group=True) for i in range(2)]
    try:
        wait_for_records(out, lambda reqs: sum(d.get("agent") == 1 for d in reqs) >= 5)
        os.killpg(procs[1].pid, signal.SIGSTOP)  # the agent and its workers
        _, stderr = coord.communicate(timeout=120)
    finally:
        os.killpg(procs[1].pid, signal.SIGCONT)
        os.killpg(procs[1].pid, signal.SIGKILL)
    stderr = " ".join(stderr.split())
    assert coord.returncode == 1, stderr
    assert "Traceback" not in stderr
    run = records_of(out)
    assert run is not None
    results = json.loads((run.parent / "results.json").read_text())
    planned = planned_offsets(rate, duration)
    frozen = {r.seq for r in read_records(run).records if r.agent == 1}
    unsent = len([n for n in planned if n % 2 == 1 and n not in frozen])
    shortfall = results["summary"]["validity"]["not_offered"]
    assert shortfall["planned"] == len(planned)
    assert abs(shortfall["not_offered"] - unsent) <= 1, (shortfall, unsent)
    assert unsent >= 10  # frozen well before its shard's end: a real gap to count


def test_on_agent_loss_stop_stops_the_others_and_counts_what_they_did_not_send(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    s = sim(ttft=0.005, itl=0.02)
    rate, duration = 20.0, 30.0
    coord, port, out = start_run(
        tmp_path, s.url, 2, "--rate", str(rate), "--duration", str(duration),
        "--output-tokens", "8", "--on-agent-loss", "stop",
    )  # fmt: skip
    keep = agent_procs.start(f"127.0.0.1:{port}", index=0)
    victim = agent_procs.start(f"127.0.0.1:{port}", index=1)
    wait_for_records(out, lambda reqs: sum(d.get("agent") == 1 for d in reqs) >= 3)
    killed = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    _, stderr = coord.communicate(timeout=60)
    # Stopped at the loss, not at the end of the 30 s schedule.
    assert time.monotonic() - killed < duration / 2
    assert coord.returncode == 1 and "the run is incomplete: agent 1" in " ".join(stderr.split())
    _, err = keep.communicate(timeout=30)
    assert keep.returncode == 0, err
    run = records_of(out)
    assert run is not None
    f = read_records(run)
    assert f.footer is not None and f.footer.ended == "incomplete"
    assert f.footer.stopped_ns is not None
    # The other agent stopped sending at the stop, and its in-flight requests finished.
    others = [r for r in f.records if r.agent == 0]
    assert others and all(r.ok for r in others)
    assert max(r.t_intended for r in others) <= f.footer.stopped_ns
    results = json.loads((run.parent / "results.json").read_text())
    shortfall = results["summary"]["validity"]["not_offered"]
    assert shortfall["stopped"] is True
    planned = planned_offsets(rate, duration)
    unsent = len(planned) - len({r.seq for r in f.records})
    assert abs(shortfall["not_offered"] - unsent) <= 2, (shortfall, unsent)  # a request a shard
    assert shortfall["share"] > 0.5
    assert "the run then stopped (--on-agent-loss stop)" in results["incomplete"]


def test_a_coordinator_killed_mid_run_leaves_every_line_readable_and_its_agents_say_why(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    s = sim(ttft=0.002, itl=0.01)
    coord, port, out = start_run(tmp_path, s.url, 3, "--rate", "30", "--duration", "60")
    procs = [agent_procs.start(f"127.0.0.1:{port}", index=i) for i in range(3)]
    path = wait_for_records(
        out, lambda reqs: all(sum(d.get("agent") == i for d in reqs) >= 3 for i in range(3))
    )
    os.kill(coord.pid, signal.SIGKILL)
    coord.wait(30)
    for p in procs:
        _, err = p.communicate(timeout=60)
        err = " ".join(err.split())
        assert p.returncode == 1 and "the coordinator went away mid-run" in err, err
        assert "Traceback" not in err
    data = path.read_bytes()
    assert data.endswith(b"\n")  # a line is written whole (one write, then a flush)
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[0]["type"] == "header" and all(d["type"] == "request" for d in lines[1:])
    f = read_records(path)
    assert f.footer is None and len(f.records) == len(lines) - 1
    assert {r.agent for r in f.records} == {0, 1, 2}
    replay = latbench("summary", str(path), "--json")  # what it had still summarizes
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["requests"]["measured"] == len(f.records)


class SlowLink:
    """A TCP proxy on 127.0.0.1 that holds every chunk `delay_s` before passing it on, in
    each direction and in order: a link with a round trip of 2 x delay_s. Runs its own event
    loop on a thread."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowLink:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if not chunk:
                    writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                queue.put_nowait((loop.time() + self.delay_s, chunk))
        queue.put_nowait((loop.time() + self.delay_s, b""))
        with contextlib.suppress(ConnectionError):
            await sender


@contextlib.contextmanager
def slow_link(upstream_port: int, delay_s: float) -> Iterator[SlowLink]:
    with SlowLink(upstream_port, delay_s) as link:
        yield link


def test_an_agent_behind_a_slow_link_is_flagged_for_its_clock_and_judged_alone(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    s = sim(ttft=0.002, itl=0.005)
    coord, port, out = start_run(
        tmp_path, s.url, 2, "--rate", "10", "--requests", "12", "--output-tokens", "4", "--json",
    )  # fmt: skip
    # 8 ms each way: every clock exchange takes at least 16 ms, so its offset is uncertain by at
    # least 8 ms, over the default 5 ms limit. Its requests go to the target directly.
    with slow_link(port, 0.008) as link:
        procs = [
            agent_procs.start(f"127.0.0.1:{port}", index=0, location="near"),
            agent_procs.start(f"127.0.0.1:{link.port}", index=1, location="far"),
        ]
        stdout, stderr = coord.communicate(timeout=120)
        for p in procs:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
    stderr = " ".join(stderr.split())
    assert coord.returncode == 0, stderr  # a flagged clock is a caveat, not a client-bound run
    assert "agent 1 (host" in stderr and "location far): its clock offset is uncertain by" in stderr
    run = records_of(out)
    assert run is not None
    results = json.loads((run.parent / "results.json").read_text())
    rows = {a["index"]: a for a in results["agents"]}
    assert rows[1]["flagged"] and rows[1]["uncertainty_ns"] >= 8_000_000
    assert not rows[0]["flagged"] and rows[0]["uncertainty_ns"] < 5_000_000
    validity = results["summary"]["validity"]
    judged = {a["index"]: a for a in validity["agents"]}
    assert judged[1]["flagged"] and not judged[0]["flagged"]
    assert judged[0]["client_bound"] is False and judged[1]["client_bound"] is False
    (note,) = validity["notes"]
    assert note.startswith(f"agent 1 (host {rows[1]['host']}, location far): its clock offset")
    assert "its latencies are not" in note
    # The terminal says so too: the per-agent table and the note.
    shown = latbench("summary", str(run))
    text = " ".join(shown.stdout.split())
    assert shown.returncode == 0, shown.stderr
    assert "validity per agent" in text and "clock flagged" in text
    assert "note: agent 1 (host" in text
    assert json.loads(latbench("summary", str(run), "--json").stdout) == json.loads(stdout)
    # And the reports: the per-agent table and the note, in Markdown and HTML.
    md, html = tmp_path / "report.md", tmp_path / "report.html"
    report = latbench("report", str(run.parent), "--md", str(md), "--html", str(html))
    assert report.returncode == 0, report.stderr
    for page in (md.read_text(), html.read_text()):
        assert "Per agent (ms; error bounds and lags at p99), each on its own records" in page
        assert "ok, clock flagged" in page and "location far): its clock offset" in page


async def test_the_coordinators_series_count_every_agents_records_the_lost_ones_too(
    tmp_path: Path, sim: Callable[..., SimProcess], agent_procs: Agents
) -> None:
    # The coordinator's exporter reads the one Prometheus sink every record reaches, whichever
    # agent sent it, and the lost ones the runner records for a dead agent: its series are the
    # union's, as its summary is.
    s = sim(ttft=0.005, itl=0.02)
    registry = CollectorRegistry()
    spec = load_spec(
        {
            "target": {"base_url": s.url, "api": "chat", "server_metrics": "off"},
            "workload": {"input_tokens": 8, "output_tokens": 8, "tokenizer": "words"},
            "load": {"mode": "constant", "rate": 20, "duration": 5.0},
            "validity": {"ttft_tolerance": "1s", "itl_tolerance": "1s"},
            "output_dir": str(tmp_path),
        }
    )
    async with AgentPool(TOKEN, "127.0.0.1", 0) as pool:
        agent_procs.start(pool.url, index=0)
        victim = agent_procs.start(pool.url, index=1)
        task = asyncio.create_task(
            run_benchmark(
                spec,
                s.url,
                Console(file=io.StringIO()),
                metrics=LatbenchMetrics(registry),
                agents=RunAgents(pool, 2, time.monotonic() + WAIT_S),
            )
        )
        deadline = time.monotonic() + WAIT_S
        while True:
            path = records_of(tmp_path)
            if path is not None and sum(d.get("agent") == 1 for d in lines_of(path)) >= 3:
                break
            assert time.monotonic() < deadline and not task.done(), "no records from agent 1"
            await asyncio.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        result = await asyncio.wait_for(task, 120)
    assert result.ended == "incomplete"
    records = read_records(result.records_path).records
    lost = [r for r in records if not r.ok]
    assert lost and {r.agent for r in records} == {0, 1}
    got: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in fam.samples:
            key = (sample.name, sample.labels.get("outcome") or sample.labels.get("kind") or "")
            got[key] = got.get(key, 0.0) + sample.value
    assert got[("latbench_requests_total", "ok")] == len(records) - len(lost)
    assert got[("latbench_requests_total", "error")] == len(lost)
    assert got[("latbench_errors_total", "lost")] == len(lost)
    assert got[("latbench_ttft_seconds_count", "")] == len(records) - len(lost)
