"""What an agent takes from others and must check: a location that would pose as one of the
label's reserved values (refused before it connects), control messages from its coordinator that
are not what a coordinator sends (a clear exit, no traceback), and the service's agent gauge,
which must not spend the bounded location values on agents that only connected and left."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import pytest
from kit.agents import TOKEN, Agents
from kit.cli import COMMAND

from latbench.agents.agent import Agent, AgentExit, AgentOptions
from latbench.agents.pool import AgentPool
from latbench.exporter import LatbenchMetrics
from latbench.exporter.series import FIXED_LOCATIONS, MAX_LOCATIONS, OTHER_LOCATION, RunLabels
from latbench.records.record import RESERVED_LOCATIONS
from latbench.service.agents import AgentGauge, connected

WAIT_S = 60.0  # agents are Python processes starting on a busy 2-core machine


@pytest.fixture
async def pool() -> AsyncIterator[AgentPool]:
    async with AgentPool(TOKEN, "127.0.0.1", 0, keep_agents=True) as p:
        yield p


async def until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_the_reserved_names_are_the_exporters_fixed_location_values() -> None:
    assert RESERVED_LOCATIONS == FIXED_LOCATIONS


def test_an_agent_named_after_a_reserved_location_is_refused_before_it_connects() -> None:
    # No coordinator listens there: the refusal must come from the flag check, at once.
    args = [*COMMAND, "agent", "--coordinator", "127.0.0.1:9", "--location", "local"]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={"LATBENCH_AGENT_TOKEN": TOKEN}
    )
    err = " ".join(done.stderr.split())
    assert done.returncode != 0
    assert "--location 'local' is reserved: local, mixed, other, remote" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("message", "said"),
    [
        ("not json", "the coordinator sent a text message that is not JSON"),
        ('{"ping": 1}', "the coordinator sent a text message that is not a named array"),
        ('["clock", "x", 1, 2]', 'a control message this agent does not know: \'["clock", "x"'),
        ('["ping"]', "a control message this agent does not know"),
        ('["ping", true]', "a control message this agent does not know"),
        ('["stop"]', "a control message this agent does not know: '[\"stop\"]'"),
    ],
)
async def test_a_malformed_control_message_ends_the_agent_with_a_line_naming_it(
    message: str, said: str
) -> None:
    # A coordinator without `stay`, so the agent ends rather than connecting again.
    async with AgentPool(TOKEN, "127.0.0.1", 0) as p:
        agent = Agent(AgentOptions(p.url, TOKEN, connect_timeout=WAIT_S), lambda line: None)
        task = asyncio.create_task(agent.run())
        (conn,) = await p.wait_for(1, time.monotonic() + WAIT_S)
        conn.send(message)
        with pytest.raises(AgentExit) as e:
            await asyncio.wait_for(task, WAIT_S)
    assert said in str(e.value), str(e.value)


async def test_the_agent_process_exits_1_with_the_line_and_no_traceback(
    agent_procs: Agents,
) -> None:
    async with AgentPool(TOKEN, "127.0.0.1", 0) as p:
        proc = agent_procs.start(p.url)
        (conn,) = await p.wait_for(1, time.monotonic() + WAIT_S)
        conn.send('["clock", "x", 1, 2]')
        _, err = await asyncio.to_thread(proc.communicate, timeout=WAIT_S)
    err = " ".join(err.split())
    assert proc.returncode == 1, err
    assert "a control message this agent does not know" in err, err
    assert "Traceback" not in err, err


async def test_agents_that_connect_and_leave_take_no_location_value(pool: AgentPool) -> None:
    metrics = LatbenchMetrics()
    gauge = AgentGauge(pool, metrics)
    leaving = [f"passing-{i}" for i in range(40)]
    agents = [
        Agent(AgentOptions(pool.url, TOKEN, location=loc, connect_timeout=WAIT_S), lambda s: None)
        for loc in leaving
    ]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        await until(lambda: len(connected(pool)) == len(leaving))
        (family,) = gauge.collect()  # a scrape while all 40 are there
        shown = {s.labels["location"] for s in family.samples}
        # Bounded even so: the first MAX_LOCATIONS new values by name, the rest as `other`.
        assert shown == set(sorted(leaving)[:MAX_LOCATIONS]) | {OTHER_LOCATION}
        assert sum(s.value for s in family.samples) == len(leaving)
    finally:
        for a, t in zip(agents, tasks, strict=True):
            a.stop_reason = "the test is done with it"
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await until(lambda: not connected(pool))
    assert next(iter(gauge.collect())).samples == []
    # A real location that runs after them still gets its own value.
    s = metrics.series(RunLabels("http://gpu:8000", "m", "chat", "s", location="eu-west"))
    assert s.labels.location == "eu-west"
