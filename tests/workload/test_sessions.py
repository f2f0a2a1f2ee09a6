"""Session workloads: synthetic and ShareGPT plans are the same for the same (seed, s), a
ShareGPT conversation is replayed whole, a conversation's history grows with the replies it
is handed, and the spec's `workload.sessions` is checked with errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kit.paths import DATA

from latbench.client.apis import convert
from latbench.shared.errors import SpecError
from latbench.spec import RunSpec, load_spec
from latbench.workload.session import (
    Conversation,
    Reply,
    SessionPlan,
    SessionWorkload,
    ToolCall,
    Turn,
    flatten,
)
from latbench.workload.sessions import MAX_TURNS, ShareGPTSessions, SyntheticSessions
from latbench.workload.synthetic import DEFAULT_VOCABULARY
from latbench.workload.tokens import TOKENIZER, TokenScale

SHAREGPT = DATA / "sharegpt_tiny.json"


def test_synthetic_sessions_are_the_same_for_the_same_seed_and_session() -> None:
    a = SyntheticSessions("uniform:1,6", "normal:20,5", 8, think_time="lognormal:2,1", seed=9)
    b = SyntheticSessions("uniform:1,6", "normal:20,5", 8, think_time="lognormal:2,1", seed=9)
    assert isinstance(a, SessionWorkload)
    plans = [a.session(s) for s in range(20)]
    assert plans == [b.session(s) for s in reversed(range(20))][::-1]  # order of asking: none
    assert plans != [SyntheticSessions("uniform:1,6", 20, 8, seed=10).session(s) for s in range(20)]
    assert {len(p.turns) for p in plans} > {1}  # the turn count is drawn per session
    for p in plans:
        assert p.turns[0].think_s == 0.0 and all(t.think_s >= 0 for t in p.turns)
        for t in p.turns:
            assert isinstance(t.content, str) and len(t.content.split()) == t.prompt_tokens
            assert t.max_tokens == 8
    assert a.session(3) is not a.session(3) and a.session(3) == a.session(3)


def test_a_synthetic_system_prompt_is_the_same_in_every_session() -> None:
    w = SyntheticSessions(2, 5, 4, seed=1, system_tokens=12)
    plans = [w.session(s) for s in range(3)]
    assert {p.system for p in plans} == {plans[0].system}
    assert plans[0].system is not None and len(plans[0].system.split()) == 12
    assert all(p.system_tokens == 12 for p in plans)
    assert SyntheticSessions(2, 5, 4, seed=1).session(0).system is None
    assert w.describe()["system_tokens"] == 12


def test_a_drawn_turn_count_is_clamped() -> None:
    assert len(SyntheticSessions(MAX_TURNS * 10, 1, 1).session(0).turns) == MAX_TURNS
    assert len(SyntheticSessions(0, 1, 1).session(0).turns) == 1


def test_sharegpt_conversations_are_replayed_whole() -> None:
    w = ShareGPTSessions.from_file(SHAREGPT, think_time=1.5, seed=2)
    # Entries b2 (no reply) and d4 (empty) give no session; c3 and e5 start at their first
    # human turn (c3's system turn and e5's opening reply are not user messages).
    assert len(w) == 3
    assert w.describe()["skipped"] == 2 and w.describe()["turns"] == 4
    plans = {tuple(t.content for t in w.session(s).turns): w.session(s) for s in range(3)}
    assert set(plans) == {
        ("What is the capital of France?",),
        ("Count to five.", "Now backwards."),
        ("Tell me a joke about cats please.",),
    }
    two = plans[("Count to five.", "Now backwards.")]
    # Each turn asks for as many tokens as its recorded reply has words.
    assert [t.max_tokens for t in two.turns] == [5, 5]
    assert [t.think_s for t in two.turns] == [0.0, 1.5]
    assert all(t.prompt_tokens is None for t in two.turns)  # a file's text asks no length
    # Sessions cycle through the conversations, in an order fixed by the seed.
    assert [w.session(s) for s in range(3)] == [w.session(s + 3) for s in range(3)]
    again = ShareGPTSessions.from_file(SHAREGPT, think_time=1.5, seed=2)
    assert [again.session(s) for s in range(6)] == [w.session(s) for s in range(6)]


def test_sharegpt_output_tokens_replace_the_recorded_lengths(tmp_path: Path) -> None:
    w = ShareGPTSessions.from_file(SHAREGPT, output_tokens=3)
    assert all(t.max_tokens == 3 for s in range(3) for t in w.session(s).turns)


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ([{"conversations": [{"from": "human"}]}], 'conversations[0] must have a string "value"'),
        ([{"nope": []}], 'expected an object with a "conversations" list'),
        ([{"conversations": [{"from": "human", "value": "hi"}]}], "no usable conversations"),
    ],
)
def test_a_bad_sharegpt_file_is_a_spec_error_naming_the_entry(
    tmp_path: Path, entries: list[object], error: str
) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(entries))
    with pytest.raises(SpecError, match=r"bad\.json") as e:
        ShareGPTSessions.from_file(p)
    assert error in str(e.value)


def test_a_conversation_resends_its_history_with_the_replies_received() -> None:
    plan = SessionPlan(
        turns=(Turn("hello there", 5, prompt_tokens=2), Turn("and then", 7, 0.5, 2)),
        system="be brief",
        system_tokens=2,
    )
    conv = Conversation(plan, session=4)
    first = conv.item()
    assert (first.session, first.turn, first.max_tokens, first.prompt_tokens) == (4, 0, 5, 4)
    assert first.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    )
    assert conv.replied(Reply("hi you"), completion_tokens=2) == 0.5
    second = conv.item()
    assert (second.turn, second.max_tokens, second.prompt_tokens) == (1, 7, 2 + 2 + 2 + 2)
    assert [m["content"] for m in second.messages] == [
        "be brief",
        "hello there",
        "hi you",
        "and then",
    ]
    assert second.prompt == "be brief\nhello there\nhi you\nand then"
    assert conv.replied(Reply("done"), completion_tokens=None) is None  # the last turn
    assert conv.turns_left == 0


def test_tool_calls_are_answered_up_to_the_step_limit() -> None:
    plan = SessionPlan(
        turns=(Turn("find it", 4), Turn("thanks", 4, think_s=2.0)),
        tools=({"type": "function", "function": {"name": "find"}},),
        tool_latency_s=(0.1, 0.2),
        tool_result="found",
        max_tool_steps=1,
    )
    conv = Conversation(plan, 0)
    conv.item()
    call = Reply("", (ToolCall("c1", "find", '{"q": 1}'),))
    assert conv.replied(call, 3) == 0.1  # the tool's latency, then its result is sent
    step = conv.item()
    assert step.turn == 1 and step.prompt_tokens is None and step.tools == plan.tools
    assert step.messages[-2:] == (
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "find", "arguments": '{"q": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
    )
    # A second call in the same user turn is past the limit: kept as text, the user goes on.
    assert conv.replied(Reply("maybe", (ToolCall("c2", "find", "{}"),)), 3) == 2.0
    nxt = conv.item()
    assert nxt.messages[-2:] == (
        {"role": "assistant", "content": "maybe"},
        {"role": "user", "content": "thanks"},
    )
    # The next user turn has its own steps, and the session's next latency.
    assert conv.replied(call, 3) == 0.2


def test_a_plan_without_turns_is_refused() -> None:
    with pytest.raises(ValueError, match="session 3 has no turns"):
        Conversation(SessionPlan(turns=()), 3)


def spec(workload: dict[str, object]) -> RunSpec:
    return load_spec({"workload": workload, "load": {"requests": 4}})


def test_the_spec_builds_sessions_and_fills_in_the_synthetic_turns() -> None:
    w = spec({"sessions": {"think_time": "uniform:1,3"}}).workload
    assert w.sessions is not None and w.sessions.turns is not None
    assert w.sessions.turns.mean == 4
    assert spec({"sessions": {"turns": 2, "system_tokens": 10}}).workload.sessions is not None
    shared = spec({"source": "sharegpt", "path": str(SHAREGPT), "sessions": {}}).workload
    assert shared.sessions is not None and shared.sessions.turns is None


@pytest.mark.parametrize(
    ("workload", "error"),
    [
        ({"sessions": {"turns": 0}}, "at least one turn"),
        ({"sessions": {"turns": 5000}}, "turns"),
        ({"sessions": {"think_time": 200000}}, "over a day"),
        ({"sessions": {"think_time": -1}}, "think_time"),
        ({"sessions": {"system_tokens": -1}}, "system_tokens"),
        ({"sessions": {"turn": 3}}, "turn"),
        (
            {"source": "sharegpt", "path": str(SHAREGPT), "sessions": {"turns": 3}},
            "sessions.turns is for synthetic sessions",
        ),
        (
            {"source": "sharegpt", "path": str(SHAREGPT), "sessions": {"system_tokens": 3}},
            "sessions.system_tokens is for synthetic sessions",
        ),
        (
            {"source": "jsonl", "path": str(SHAREGPT), "sessions": {}},
            "sessions is for source synthetic or sharegpt",
        ),
    ],
)
def test_spec_errors_name_the_field(workload: dict[str, object], error: str) -> None:
    with pytest.raises(SpecError) as e:
        spec(workload)
    msg = str(e.value)
    assert error in msg and "sessions" in msg
    assert "Traceback" not in msg


def test_with_a_calibrated_scale_only_the_first_turn_asks_a_prompt_length() -> None:
    # A real tokenizer's chat template adds tokens to every message and the server re-tokenises
    # the replies resent: a later turn's prompt is no sum of its parts, so it asks none.
    costs = (1.0,) * len(DEFAULT_VOCABULARY)
    scale = TokenScale(TOKENIZER, ("the",), (3.0,), costs, exact=True)
    plan = SyntheticSessions(3, 5, 4, seed=1, system_tokens=6, scale=scale).session(0)
    assert [t.prompt_tokens for t in plan.turns] == [5, None, None]
    conv = Conversation(plan, session=0)
    assert conv.item().prompt_tokens == 6 + 5
    conv.replied(Reply("a b c d"), completion_tokens=4)
    assert conv.item().prompt_tokens is None
    # A word a token (no scale), as the simulator counts: the sum is exact, every turn asks it.
    words = SyntheticSessions(3, 5, 4, seed=1, system_tokens=6).session(0)
    assert [t.prompt_tokens for t in words.turns] == [5, 5, 5]


def test_a_messages_text_is_its_parts_of_type_text() -> None:
    parts = (
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "input_text", "text": "not a chat part"},
        {"type": "text", "text": "here"},
    )
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": "ok"}]
    assert flatten(messages) == "look\nhere\nok"  # the completions prompt
    assert convert.text_of(parts) == "look\nhere"  # what Anthropic's system field gets, say
