"""The coordinator's pool with real `latbench agent` processes over loopback: who gets in (the
token, a free index, this version), the clock each one is measured with, a forged shard that is
never unpickled, one agent's run end to end in this process's runner, and the two ways a
connection ends mid-run (the coordinator gone: the agent aborts and exits 1; the agent gone:
its in-flight requests are lost and the other agent goes on)."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from kit.agents import TOKEN, Agents, free_port
from kit.load import Collect, chat_endpoint

from latbench import ErrorKind, __version__
from latbench.agents.pool import AgentError, AgentPool
from latbench.agents.protocol import (
    SKEW_ENV,
    auth_headers,
    control,
    hello,
    make_nonce,
    parse_control,
)
from latbench.load.runner import Runner
from latbench.sim import SimProcess
from latbench.spec import LoadSpec
from latbench.workload import SyntheticWorkload

WAIT_S = 60.0  # agents are Python processes starting on a busy 2-core machine


@pytest.fixture
async def pool() -> AsyncIterator[AgentPool]:
    async with AgentPool(TOKEN, "127.0.0.1", 0) as p:
        yield p


async def ended(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[int, str]:
    """The agent's exit status and stderr (lines rejoined where the terminal wrapped them),
    waited for off the loop (the pool must keep answering while it runs)."""
    _, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, " ".join(err.split())


async def line_with(proc: subprocess.Popen[str], text: str, timeout: float = WAIT_S) -> str:
    """The first line of the agent's stderr that holds `text`."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stderr.readline)
        if text in line:
            return line
        if not line:
            break
    raise AssertionError(f"no line with {text!r} from the agent")


def runner(url: str, load: LoadSpec, channels: list, sink: Collect) -> Runner:  # type: ignore[type-arg]
    return Runner(
        run_id="agents-test",
        endpoint=chat_endpoint(url),
        workload=SyntheticWorkload(4, 8, seed=3),
        load=load,
        sinks=[sink],
        seed=3,
        channels=channels,
    )


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_wrong_token_is_refused_and_never_counted(
    pool: AgentPool, agent_procs: Agents
) -> None:
    proc = agent_procs.start(pool.url, token="not-the-token-but-long-enough")
    code, err = await ended(proc)
    assert code == 1 and "the coordinator refused the token" in err, err
    assert "Traceback" not in err
    assert pool.agents == {}
    with pytest.raises(AgentError) as e:
        await pool.wait_for(1, time.monotonic() + 0.2)
    assert "0 of 1 agents registered in time; missing index 0" in str(e.value)
    assert "without the agent token" in str(e.value)


async def test_indexes_are_unique_and_a_short_wait_names_the_missing_ones(
    pool: AgentPool, agent_procs: Agents
) -> None:
    agent_procs.start(pool.url, index=0)
    agent_procs.start(pool.url, index=2)
    two = await pool.wait_for(2, time.monotonic() + WAIT_S)
    assert [a.index for a in two] == [0, 2]
    pool.release(two)
    again = agent_procs.start(pool.url, index=0)
    code, err = await ended(again)
    assert code == 1 and "index 0 is already taken by the agent on host" in err, err
    with pytest.raises(AgentError) as e:
        await pool.wait_for(3, time.monotonic() + 0.2)
    assert "2 of 3 agents registered in time; missing index 1 (registered: 0, 2)" in str(e.value)
    agent_procs.start(pool.url)  # no index: the lowest free one
    three = await pool.wait_for(3, time.monotonic() + WAIT_S)
    assert [a.index for a in three] == [0, 1, 2]


async def test_an_agent_of_another_version_is_refused_by_name(pool: AgentPool) -> None:
    other = {**hello(None, None, 1).to_dict(), "version": "0.0.0"}
    headers = auth_headers(TOKEN, make_nonce())
    async with aiohttp.ClientSession() as s, s.ws_connect(pool.url, headers=headers) as ws:
        await ws.send_str(control("hello", other))
        answer = parse_control((await ws.receive(timeout=10)).data)
    assert answer[0] == "refused"
    assert f"runs latbench '0.0.0', the coordinator {__version__}" in answer[1]
    assert pool.agents == {}


async def test_the_clock_offset_is_found_within_its_bound(agent_procs: Agents) -> None:
    # One agent on this host's clock (true offset 0), one whose every reading is 3 s ahead.
    skew = 3_000_000_123
    async with AgentPool(TOKEN, "127.0.0.1", 0, max_uncertainty_ns=1) as pool:
        agent_procs.start(pool.url, index=0)
        agent_procs.start(pool.url, index=1, env={SKEW_ENV: str(skew)})
        a, b = await pool.wait_for(2, time.monotonic() + WAIT_S)
        for agent, truth in ((a, 0), (b, skew)):
            assert abs(agent.offset_ns - truth) <= agent.uncertainty_ns
            assert 0 < agent.uncertainty_ns < 5_000_000 and agent.rtt_ns >= agent.uncertainty_ns
            assert agent.flagged  # a 1 ns limit: no round trip is that short
            assert agent.origin is not None and agent.origin.offset_ns == agent.offset_ns


async def test_a_forged_shard_is_never_unpickled_and_the_agent_then_runs_a_real_one(
    pool: AgentPool, agent_procs: Agents, tmp_path: Path, sim_url: str
) -> None:
    proc = agent_procs.start(pool.url, location="here")
    (conn,) = await pool.wait_for(1, time.monotonic() + WAIT_S)
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (open, (str(marker), "w"))  # what unpickling it would do

    (channel,) = pool.channels([conn])
    conn.send(bytes([0]) + b"\0" * 32 + pickle.dumps(Evil()))  # a MAC made without the token
    assert await asyncio.wait_for(channel.recv(), 20) is None
    death = await channel.describe_death()
    assert "worker 0 refused: the shard's signature is not the token's" in death
    assert not marker.exists()
    assert proc.poll() is None  # refused the shard, not the coordinator

    # A signed one runs: the agent's one slot, the records on this host's clock and stamped.
    sink = Collect()
    r = runner(sim_url, LoadSpec(mode="constant", rate=50, requests=6), pool.channels([conn]), sink)
    async with aiohttp.ClientSession() as s:
        out = await asyncio.wait_for(r.run(s), 60)
    assert out.ended == "completed" and sorted(x.seq for x in out.records) == list(range(6))
    assert all(x.ok and x.agent == 0 and x.location == "here" for x in out.records)
    assert {x.clock_offset_ns for x in out.records} == {conn.offset_ns}
    assert {x.t_intended - r._start for x in out.records} == {n * 20_000_000 for n in range(6)}
    await pool.finish([conn])
    code, err = await ended(proc)
    assert code == 0 and "the coordinator is done" in err, err


async def test_an_agent_keeps_trying_until_its_coordinator_listens(agent_procs: Agents) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/agents"
    proc = agent_procs.start(url, index=4)
    await line_with(proc, f"waiting for the coordinator at {url}")
    async with AgentPool(TOKEN, "127.0.0.1", port) as pool:
        (conn,) = await pool.wait_for(1, time.monotonic() + WAIT_S)
        assert conn.index == 4
        await pool.finish([conn])
    assert (await ended(proc))[0] == 0


def workers_of(pid: int) -> list[int]:
    """The `latbench.load.worker` children of a process."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"latbench.load.worker" in cmd:
            out.append(int(d.name))
    return out


async def test_when_the_coordinator_goes_away_mid_run_the_agent_aborts_and_exits_1(
    agent_procs: Agents, sim: Callable[..., SimProcess]
) -> None:
    s = sim(ttft=0.002, itl=0.01)
    sink = Collect()
    pool = AgentPool(TOKEN, "127.0.0.1", 0)
    await pool.start()
    proc = agent_procs.start(pool.url, workers=2)
    conns = await pool.wait_for(1, time.monotonic() + WAIT_S)
    r = runner(s.url, LoadSpec(concurrency=2, duration=60.0), pool.channels(conns), sink)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(r.run(session))
        await until(lambda: len(sink.records) >= 4)
        workers = workers_of(proc.pid)
        assert len(workers) == 2
        await pool.close()
        out = await asyncio.wait_for(task, 30)
    assert out.ended == "incomplete" and "agent 0 (host" in str(out.incomplete)
    assert "lost: the coordinator closed" in str(out.incomplete)
    code, err = await ended(proc)
    assert code == 1 and "the coordinator went away mid-run" in err, err
    assert "Traceback" not in err
    for pid in workers:  # its workers were aborted, not left sending load nobody measures
        assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize(
    ("sig", "reason", "code"),
    [
        (signal.SIGKILL, "connection closed", -signal.SIGKILL),
        # Stopped, it says why as it hangs up, before it aborts its workers.
        (signal.SIGTERM, "connection closed (the agent was stopped by a signal)", 130),
    ],
)
async def test_an_agent_lost_mid_run_loses_its_in_flight_requests_and_the_other_goes_on(
    pool: AgentPool,
    agent_procs: Agents,
    sim: Callable[..., SimProcess],
    sig: signal.Signals,
    reason: str,
    code: int,
) -> None:
    s = sim(ttft=0.002, itl=0.01)
    sink = Collect()
    victim = agent_procs.start(pool.url, index=0, location="a")
    agent_procs.start(pool.url, index=1, location="b")
    conns = await pool.wait_for(2, time.monotonic() + WAIT_S)
    r = runner(s.url, LoadSpec(concurrency=2, duration=60.0), pool.channels(conns), sink)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(r.run(session))
        await until(lambda: len(sink.records) >= 6)
        os.kill(victim.pid, sig)
        before = len(sink.records)
        await until(lambda: len([x for x in sink.records if x.agent == 1]) >= before)
        r.stop()
        out = await asyncio.wait_for(task, 30)
    assert out.ended == "incomplete"
    assert "agent 0 (host" in str(out.incomplete)
    assert f"location a) lost: {reason}" in str(out.incomplete)
    assert victim.wait(30) == code
    lost = [x for x in out.records if x.error is ErrorKind.LOST]
    # Agent 0 ran user 0 (requests 0, 2, ...): the one it had in flight is lost, and says why.
    assert len(lost) == 1 and lost[0].agent == 0 and lost[0].seq % 2 == 0
    assert "agent 0 (host" in str(lost[0].error_detail)
    assert len({x.seq for x in out.records}) == len(out.records)
    # The other agent went on after the loss.
    assert len([x for x in out.records if x.agent == 1 and x.ok]) > before // 2
