"""The worker's session loop over real sockets: each turn resends the conversation with the
replies actually received, later turns are intended at the previous reply's end plus the think
time, closed loop runs sessions as users, open loop starts sessions on the pacer, request
numbers stay unique across workers, and a failed turn ends its session and nothing else."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from time import monotonic_ns
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kit.load import Collect, chat_endpoint
from kit.paths import DATA
from kit.sim import base_url, truth

from latbench.client import API_KINDS
from latbench.client.reads import StampingConnector
from latbench.load.pacers import ConstantPacer
from latbench.load.runner import Runner
from latbench.load.worker import Shard, ShardRun
from latbench.records import Record
from latbench.sim import SimConfig, SimProcess, create_app
from latbench.spec import LoadSpec
from latbench.workload.session import FixedSessions, SessionPlan, SessionWorkload, Turn
from latbench.workload.sessions import ShareGPTSessions, SyntheticSessions


async def run(
    url: str, workload: SessionWorkload, load: LoadSpec, workers: int = 1
) -> list[Record]:
    sink = Collect()
    runner = Runner(
        run_id="sessions",
        endpoint=chat_endpoint(url),
        workload=workload,  # type: ignore[arg-type]
        load=load,
        sinks=[sink],
        seed=5,
        workers=workers,
    )
    async with aiohttp.ClientSession() as http:
        outcome = await runner.run(http)
    assert outcome.ended == "completed"
    return sink.records


def by_session(records: list[Record]) -> dict[int, list[Record]]:
    out: dict[int, list[Record]] = {}
    for r in sorted(records, key=lambda r: (r.session, r.turn)):
        assert r.session is not None
        out.setdefault(r.session, []).append(r)
    return out


Recording = Callable[..., Awaitable[tuple[str, list[dict[str, Any]]]]]


def under_way(records: list[Record]) -> int:
    """The most sessions under way at once: from a session's first send to its last reply's
    end."""
    edges = []
    for recs in by_session(records).values():
        end = recs[-1].t_end
        assert end is not None
        edges += [(recs[0].t_sent, 1), (end, -1)]
    now = most = 0
    for _, step in sorted(edges):
        now += step
        most = max(most, now)
    return most


@pytest.fixture
async def recording() -> AsyncIterator[Recording]:
    """`await recording(**SimConfig fields)`: the simulator's app in this process, its URL and
    every chat request body it read, in order, with the client's port (its connection) as
    `_port`."""
    servers: list[TestServer] = []

    async def start(**fields: Any) -> tuple[str, list[dict[str, Any]]]:
        bodies: list[dict[str, Any]] = []

        @web.middleware
        async def keep(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
            if request.path.endswith("/chat/completions"):
                body = await request.json()
                body["_port"] = (
                    request.transport and request.transport.get_extra_info("peername")[1]
                )
                bodies.append(body)
            return await handler(request)

        app = create_app(SimConfig.model_validate({"ttft": 0.002, "itl": 0.001, **fields}))
        app.middlewares.append(keep)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return base_url(server), bodies

    yield start
    for server in servers:
        await server.close()


async def test_each_turn_resends_the_conversation_with_the_replies_received(
    recording: Recording,
) -> None:
    url, bodies = await recording()
    workload = SyntheticSessions(3, 5, 4, think_time=0.01, seed=2, system_tokens=6)
    records = await run(url, workload, LoadSpec(concurrency=2, requests=12), workers=2)
    assert len(records) == 12 and all(r.ok for r in records)
    assert len({r.seq for r in records}) == 12  # unique across the two workers
    sessions = by_session(records)
    assert sorted(sessions) == [0, 1, 2, 3]
    for recs in sessions.values():
        assert [r.turn for r in recs] == [0, 1, 2]
        # The server saw the history grow by each reply and the next message, as asked.
        prompts = [r.usage_prompt_tokens for r in recs]
        assert prompts == [6 + 5, 6 + 5 + 4 + 5, 6 + 5 + 4 + 5 + 4 + 5]
        assert [r.prompt_tokens for r in recs] == prompts
    # Every request's conversation is the previous one's, then the reply it got, then the next
    # message: the server's own reply text, not a recorded or made-up one.
    assert len(bodies) == 12
    sent = [b["messages"] for b in bodies]
    for msgs in sent:
        assert msgs[0]["role"] == "system" and len(msgs[0]["content"].split()) == 6
        roles = [m["role"] for m in msgs[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        if len(msgs) > 2:
            assert msgs[:-2] in sent
            assert len(msgs[-2]["content"].split()) == 4


async def test_later_turns_are_intended_at_the_reply_end_plus_the_think_time(
    sim_url: str,
) -> None:
    think = 0.03
    workload = SyntheticSessions(3, 4, 3, think_time=think, seed=1)
    records = await run(sim_url, workload, LoadSpec(concurrency=2, requests=9))
    for recs in by_session(records).values():
        for prev, nxt in itertools.pairwise(recs):
            assert prev.t_end is not None
            assert nxt.t_intended - prev.t_end == round(think * 1e9)
            assert nxt.t_sent >= nxt.t_intended


async def test_closed_loop_runs_sessions_as_users(sim_url: str) -> None:
    workload = SyntheticSessions("uniform:1,4", 4, 3, think_time=0.005, seed=7)
    records = await run(sim_url, workload, LoadSpec(concurrency=3, requests=30), workers=2)
    # Each worker's 15 sent whole sessions only: at most 3 short of them (sessions of 1-4).
    assert 24 <= len(records) <= 30
    sessions = by_session(records)
    for recs in sessions.values():
        # A session's requests go one after another, never two at once.
        for prev, nxt in itertools.pairwise(recs):
            assert prev.t_end is not None and nxt.t_sent > prev.t_end
    assert under_way(records) <= 3  # never more sessions under way than users
    assert len(sessions) > 3  # users went on to further sessions


async def test_open_loop_sessions_arrive_on_the_pacer(sim_url: str) -> None:
    rate = 20.0
    workload = SyntheticSessions(2, 4, 3, think_time=0.01, seed=3)
    load = LoadSpec(mode="constant", rate=rate, duration=0.5)
    records = await run(sim_url, workload, load, workers=2)
    sessions = by_session(records)
    firsts = {s: recs[0] for s, recs in sessions.items()}
    assert all(r.turn == 0 for r in firsts.values())
    start = firsts[0].t_intended
    pacer = ConstantPacer(rate)
    assert sorted(firsts) == list(range(len(firsts)))  # no session skipped
    assert len(firsts) == 10  # offsets 0, 50, ..., 450 ms lie within the 0.5 s
    for s, r in firsts.items():
        assert r.t_intended - start == pacer.offset_ns(s)
    # Later turns come after their reply, within the run's duration.
    for recs in sessions.values():
        for r in recs[1:]:
            assert r.t_intended - start < 0.5e9


def whole_sessions_within(records: list[Record], workload: SessionWorkload, budget: int) -> None:
    """Every session ran all its user turns, and the next one would have overrun `budget`."""
    sessions = by_session(records)
    assert sorted(sessions) == list(range(len(sessions)))
    for s, recs in sessions.items():
        assert [r.turn for r in recs] == list(range(len(workload.session(s).turns)))
    assert len(records) <= budget < len(records) + len(workload.session(len(sessions)).turns)


async def test_requests_count_requests_and_start_no_session_they_cannot_cover(
    sim_url: str,
) -> None:
    workload = SyntheticSessions(4, 3, 2, seed=4)
    records = await run(sim_url, workload, LoadSpec(concurrency=2, requests=10))
    # 10 requests at 4 a session: two whole sessions; a third would need 4 of the 2 left.
    assert sorted(r.seq for r in records) == list(range(8))
    whole_sessions_within(records, workload, 10)
    assert all(r.ok for r in records)


async def test_an_open_loop_with_a_request_budget_runs_whole_sessions(sim_url: str) -> None:
    # Uncapped, 20 sessions a second of 1-4 turns: each session reserves its turns as it
    # starts, so none is cut to its first turn by the sessions started after it.
    workload = SyntheticSessions("uniform:1,4", 3, 2, think_time=0.02, seed=15)
    load = LoadSpec(mode="poisson", rate=20, requests=24)
    records = await run(sim_url, workload, load)
    assert all(r.ok for r in records)
    whole_sessions_within(records, workload, 24)


async def test_a_budget_shorter_than_one_session_sends_that_much_of_it(sim_url: str) -> None:
    workload = SyntheticSessions(5, 3, 2, seed=4)
    records = await run(sim_url, workload, LoadSpec(concurrency=2, requests=3))
    assert [(r.session, r.turn) for r in sorted(records, key=lambda r: r.seq)] == [
        (0, 0),
        (0, 1),
        (0, 2),
    ]


async def test_a_failed_turn_ends_its_session_and_the_run_goes_on(
    sim: Callable[..., SimProcess],
) -> None:
    # Every 5th request fails: with one user and 3-turn sessions, requests 5 and 10 (session 1's
    # and session 3's second turns). Each failure hands its session's unsent turn back to the
    # budget of 11: session 3 fits in it, a fifth (3 turns, 1 left) does not.
    proc = sim(ttft=0.002, itl=0.001, faults=[{"kind": "http_status", "every": 5}])
    workload = SyntheticSessions(3, 4, 2, seed=6)
    records = await run(proc.url, workload, LoadSpec(concurrency=1, requests=11))
    turns = {s: [r.turn for r in recs] for s, recs in by_session(records).items()}
    assert turns == {0: [0, 1, 2], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1]}
    failed = [r for r in records if not r.ok]
    assert [(r.session, r.turn) for r in failed] == [(1, 1), (3, 1)]
    for r in failed:
        assert r.error_detail is not None
        assert f"session {r.session} ends here (1 more user turn not sent)" in r.error_detail


async def test_a_plan_that_cannot_be_built_is_its_first_request_record(sim_url: str) -> None:
    plans = [SessionPlan(turns=(Turn("one two", 2),)), SessionPlan(turns=())]
    records = await run(sim_url, FixedSessions(plans), LoadSpec(concurrency=1, requests=4))
    assert [(r.session, r.turn, r.ok) for r in sorted(records, key=lambda r: r.seq)] == [
        (0, 0, True),
        (1, 0, False),
        (2, 0, True),
        (3, 0, False),
    ]
    for r in records:
        assert r.ok or f"session {r.session} has no turns" in (r.error_detail or "")


LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


async def test_tool_calls_are_answered_after_the_tool_latency_up_to_the_step_limit(
    recording: Recording,
) -> None:
    # The simulator calls the tool until 5 results follow the user's message; the plan answers
    # 2 calls a user turn, so each turn takes 3 requests and its third call goes unanswered.
    url, bodies = await recording(tool_steps=5)
    plan = SessionPlan(
        turns=(Turn("look this up", 6), Turn("and that", 6, think_s=0.015)),
        tools=(LOOKUP,),
        tool_latency_s=(0.02, 0.03, 0.04),
        tool_result="sunny and warm",
        max_tool_steps=2,
    )
    records = await run(url, FixedSessions([plan]), LoadSpec(concurrency=1, requests=6))
    recs = by_session(records)[0]
    assert [r.turn for r in recs] == [0, 1, 2, 3, 4, 5] and all(r.ok for r in recs)
    gaps = [nxt.t_intended - (prev.t_end or 0) for prev, nxt in itertools.pairwise(recs)]
    # Tool steps wait their own latencies in order (the last repeated), a new turn the think.
    assert gaps == [round(x * 1e9) for x in (0.02, 0.03, 0.015, 0.04, 0.04)]
    roles = [[m["role"] for m in b["messages"]] for b in bodies]
    assert roles[:4] == [
        ["user"],
        ["user", "assistant", "tool"],
        ["user", "assistant", "tool", "assistant", "tool"],
        # The third call went unanswered: resent as text alone, then the next message.
        ["user", "assistant", "tool", "assistant", "tool", "assistant", "user"],
    ]
    answered = bodies[2]["messages"]
    for call, result in ((answered[1], answered[2]), (answered[3], answered[4])):
        (tc,) = call["tool_calls"]
        assert tc["function"]["name"] == "lookup"
        assert result == {"role": "tool", "tool_call_id": tc["id"], "content": "sunny and warm"}
    assert "tool_calls" not in bodies[3]["messages"][5]
    assert all(b["tools"] == [LOOKUP] for b in bodies)


async def test_later_turns_are_cheaper_with_the_prefix_cache_and_not_without(
    sim: Callable[..., SimProcess],
) -> None:
    # 40 tokens of new message a turn and 24 of reply, at 1 ms per uncached prompt token; the
    # same sessions (same seed) against a simulator with its prefix cache on, then off.
    prefill, ttft = 0.001, 0.002
    served = {}
    for cache in (True, False):
        proc = sim(
            ttft=ttft, itl=0.001, prefill_per_token=prefill, block_tokens=8, prefix_cache=cache
        )
        workload = SyntheticSessions(4, 40, 24, seed=8)
        records = await run(proc.url, workload, LoadSpec(concurrency=1, requests=4))
        recs = by_session(records)[0]
        served[cache] = await truth(proc.url)  # one user: the requests in turn order
        assert [t["prompt_tokens"] for t in served[cache]] == [r.usage_prompt_tokens for r in recs]
        # What latbench measured contains what the server planned.
        for r, t in zip(recs, served[cache], strict=True):
            assert r.ev_t[0] - r.t_sent >= t["ttft_model_s"] * 1e9
    on, off = served[True], served[False]
    assert [t["prompt_tokens"] for t in on] == [t["prompt_tokens"] for t in off]
    # Without the cache each turn prefills its whole history, so later turns grow slower;
    assert [t["cached_tokens"] for t in off] == [0, 0, 0, 0]
    model_off = [t["ttft_model_s"] for t in off]
    assert model_off == pytest.approx([ttft + prefill * t["prompt_tokens"] for t in off])
    assert model_off == sorted(model_off)
    # with it, a later turn finds its history (messages and the replies resent) cached and
    # prefills little more than its new message: faster than the same turn without.
    assert on[0]["cached_tokens"] == 0
    assert on[0]["ttft_model_s"] == pytest.approx(model_off[0])
    for t, t_off in zip(on[1:], off[1:], strict=True):
        assert t["prompt_tokens"] - t["cached_tokens"] <= 40 + 2 * 8
        assert t["ttft_model_s"] == pytest.approx(
            ttft + prefill * (t["prompt_tokens"] - t["cached_tokens"])
        )
        assert t["ttft_model_s"] < t_off["ttft_model_s"]


async def test_sharegpt_conversations_are_replayed_whole_with_the_servers_replies(
    recording: Recording,
) -> None:
    url, bodies = await recording()
    workload = ShareGPTSessions.from_file(DATA / "sharegpt_tiny.json", think_time=0.01, seed=1)
    # One user through the file's three usable conversations (4 human turns), then around again.
    records = await run(url, workload, LoadSpec(concurrency=1, requests=8))
    assert all(r.ok for r in records)
    sessions = by_session(records)
    assert sorted(len(sessions[s]) for s in range(3)) == [1, 1, 2]  # each conversation whole
    two = next(recs for recs in sessions.values() if len(recs) == 2)
    # "Count to five." (3 words) asked for the recorded reply's 5 words, then "Now backwards."
    # (2) after the server's own 5-word reply.
    assert [r.max_tokens for r in two] == [5, 5]
    assert [r.usage_prompt_tokens for r in two] == [3, 3 + 5 + 2]
    second = next(b["messages"] for b in bodies if len(b["messages"]) == 3)
    assert [m["content"] for m in second][::2] == ["Count to five.", "Now backwards."]
    assert second[1]["role"] == "assistant"
    assert second[1]["content"] != "one two three four five"  # the server's, not the file's
    assert len(second[1]["content"].split()) == 5


async def test_a_session_keeps_to_its_connection(recording: Recording) -> None:
    # The worker's loop in this process (ShardRun), so that the only thing that differs
    # between the two runs is the connector.
    url, bodies = await recording()
    # Three users, think times between turns: left to aiohttp's pool (the connection idle
    # longest goes next), later turns move to another user's connection.
    workload = SyntheticSessions(4, 4, 3, think_time="uniform:0.005,0.03", seed=11)
    load = LoadSpec(concurrency=3, requests=36)
    shard = Shard(
        run_id="affinity",
        index=0,
        count=1,
        endpoint=chat_endpoint(url),
        workload=workload,
        load=load,
    )
    moves = []
    for connector in (shard.connector(), StampingConnector(limit=3, limit_per_host=0)):
        bodies.clear()
        records: list[Record] = []
        async with aiohttp.ClientSession(connector=connector) as http:
            await ShardRun(shard, records.append).run(http, monotonic_ns())
        assert len(records) == 36 and all(r.ok for r in records)
        ports: dict[str, list[int]] = {}
        for b in bodies:  # a session's requests, in order, by its first message
            ports.setdefault(b["messages"][0]["content"], []).append(b["_port"])
        moves.append(sum(a != b for p in ports.values() for a, b in itertools.pairwise(p)))
        assert len({port for p in ports.values() for port in p}) == 3  # no connection lost
    assert moves[0] == 0  # each session on one connection throughout
    assert moves[1] > 0  # aiohttp's own choice: 17 or 18 of the 27 later turns moved


async def test_the_open_loop_cap_counts_sessions(sim_url: str) -> None:
    # 40 sessions a second of 3 turns, 20 ms apart: uncapped, several are under way at once;
    # capped at 2, the others wait their turn (queue delay, in their first send's lag).
    workload = SyntheticSessions(3, 4, 3, think_time=0.02, seed=12)
    free = await run(sim_url, workload, LoadSpec(mode="constant", rate=40, requests=24))
    assert under_way(free) > 2
    capped = await run(
        sim_url, workload, LoadSpec(mode="constant", rate=40, requests=24, concurrency=2)
    )
    assert under_way(capped) <= 2
    assert len(capped) == 24 and {len(recs) for recs in by_session(capped).values()} == {3}


async def test_a_seed_gives_the_same_sessions_in_every_run(sim_url: str) -> None:
    def asked(records: list[Record]) -> dict[int, list[tuple[int, int | None, int | None]]]:
        return {
            s: [(r.turn or 0, r.prompt_tokens, r.max_tokens) for r in recs]
            for s, recs in by_session(records).items()
        }

    load = LoadSpec(concurrency=3, requests=18)
    workload = SyntheticSessions("uniform:1,5", "uniform:2,9", "uniform:1,4", seed=21)
    first = asked(await run(sim_url, workload, load, workers=2))
    again = asked(await run(sim_url, workload, load, workers=1))
    # The same sessions, whichever worker ran them and in whatever order: the budget may cut a
    # session at another turn, never change one.
    common = set(first) & set(again)
    assert len(common) >= 4
    for s in common:
        n = min(len(first[s]), len(again[s]))
        assert first[s][:n] == again[s][:n]
    reseeded = SyntheticSessions("uniform:1,5", "uniform:2,9", "uniform:1,4", seed=22)
    other = asked(await run(sim_url, reseeded, load))
    assert any(other[s][:1] != first[s][:1] for s in set(other) & set(first))


async def test_nothing_is_intended_after_the_duration(sim_url: str) -> None:
    # A minute's think time after each first turn: every later turn would be intended after the
    # 0.5 s duration, so none is sent and no user waits for it.
    workload = SyntheticSessions(3, 4, 3, think_time=60, seed=13)
    records = await run(sim_url, workload, LoadSpec(concurrency=2, duration=0.5))
    assert records and all(r.turn == 0 for r in records)


async def test_a_stop_ends_the_sessions_thinking_at_once(sim_url: str) -> None:
    # A minute's think time after each first turn, and a stop once both users' first replies
    # are in: the users waiting out their think time wake and end, rather than hold the run.
    sink = Collect()
    runner = Runner(
        run_id="stop",
        endpoint=chat_endpoint(sim_url),
        workload=SyntheticSessions(3, 4, 3, think_time=60, seed=14),  # type: ignore[arg-type]
        load=LoadSpec(concurrency=2, duration=600),
        sinks=[sink],
        workers=1,
    )
    add = sink.add

    def stop_after_two(record: Record) -> None:
        add(record)
        if len(sink.records) == 2:
            runner.stop()

    sink.add = stop_after_two  # type: ignore[method-assign]
    async with aiohttp.ClientSession() as http:
        outcome = await asyncio.wait_for(runner.run(http), timeout=30)
    assert outcome.ended == "stopped"
    assert [r.turn for r in sink.records] == [0, 0]


class UnreadableReplies(type(API_KINDS["chat"])):  # type: ignore[misc]
    """Chat, except that no reply can be read back for the next turn."""

    def reply(self, payloads: list[bytes]) -> Any:
        raise KeyError("no choices")


async def test_a_reply_that_cannot_be_read_back_ends_its_session_there(sim_url: str) -> None:
    shard = Shard(
        run_id="unreadable",
        index=0,
        count=1,
        endpoint=replace(chat_endpoint(sim_url), api=UnreadableReplies()),
        workload=SyntheticSessions(3, 4, 3, seed=1),
        load=LoadSpec(concurrency=1, requests=6),
    )
    records: list[Record] = []
    async with aiohttp.ClientSession(connector=shard.connector()) as http:
        await ShardRun(shard, records.append).run(http, monotonic_ns())
    # Each session's first request was answered and recorded as such; nothing that would
    # resend its unreadable reply was sent, so no request failed. The two turns each session
    # did not send went back to the budget of 6: four sessions fit (3 + 1 + 1 + 1 reserved).
    assert [(r.session, r.turn, r.ok) for r in records] == [(s, 0, True) for s in range(4)]
    for r in records:
        assert r.error is None and r.error_detail is not None
        assert r.error_detail.startswith("its reply cannot be read back (KeyError: 'no choices')")
        assert r.error_detail.endswith(
            f"session {r.session} ends here (2 more user turns not sent)"
        )
