"""Token accounting at the edges (issue 15, item 5): which events carry tokens, and of what kind.

A chat delta's `tool_calls` are tool-call events ('t'), apart from the answer; an event that only
carries a usage increment takes the kind of the phase the stream is in; a stream that ends
without its end marker is cut, whatever it said before. The parser's verdicts are checked on
single events, the stream's on transcripts replayed by the simulator over a real socket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from kit.client import one

from latbench import ErrorKind
from latbench.client import API_KINDS, Endpoint, RequestOptions, Timeouts
from latbench.client.apis import Event, MalformedEvent
from latbench.records import Record
from latbench.sim import SimConfig, SimProcess
from latbench.summary import summarize
from latbench.workload import WorkItem

CHAT = API_KINDS["chat"]
ITEM = WorkItem(
    prompt="one two",
    messages=({"role": "user", "content": "one two"},),
    prompt_tokens=2,
    max_tokens=8,
)


def chunk(delta: dict[str, Any], completion: int | None = None, finish: str | None = None) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-t",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if completion is not None:
        obj["usage"] = {"prompt_tokens": 5, "completion_tokens": completion}
    return orjson.dumps(obj)


NAMED = {"function": {"name": "get_weather", "arguments": ""}}


def call(**function: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": 0, "function": function}]}


@pytest.mark.parametrize(
    ("delta", "kind"),
    [
        # The first delta of a call: id, type and the generated name.
        ({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", **NAMED}]}, "t"),
        (call(arguments='{"city": "'), "t"),
        (call(arguments=""), None),  # nothing generated in it
        ({"tool_calls": [{"index": 0, "id": "call_1", "type": "function"}]}, None),
        ({"tool_calls": []}, None),
        ({"function_call": {"name": "get_weather", "arguments": ""}}, "t"),  # the functions API
        # Content is the answer, whatever else the delta holds.
        ({"content": "Sure", **call(arguments="{")}, "c"),
        ({"reasoning": "hmm"}, "r"),
        ({}, None),
    ],
)
def test_a_chat_delta_is_content_reasoning_or_a_tool_call(
    delta: dict[str, Any], kind: str | None
) -> None:
    assert CHAT.parse(chunk(delta, 3)) == Event(kind, 3, 5)


def test_a_malformed_tool_call_delta_is_named() -> None:
    with pytest.raises(MalformedEvent, match=r"delta\.tool_calls is not a list"):
        CHAT.parse(chunk({"tool_calls": {"index": 0}}))


def sse(*events: bytes) -> str:
    return "".join(f"data: {e.decode()}\n\n" for e in events)


TRANSCRIPTS = {
    # Tokens that come only as usage increments, with no typed event ever: content, as before.
    "untyped": sse(
        chunk({"role": "assistant", "content": ""}, 0),
        chunk({}, 1),
        chunk({}, 3, "length"),
        b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}',
        b"[DONE]",
    ),
    # Tool call first, then an empty delta with a token, then the answer: the empty delta is of
    # the tool call, and TTFO is the answer's first event, not the call's.
    "call_then_answer": sse(
        chunk(call(name="lookup"), 1),
        chunk({}, 2),
        chunk({"content": "Found"}, 3, "stop"),
        b"[DONE]",
    ),
    # The body ends cleanly before any finish_reason or [DONE]: cut.
    "ends_early": sse(chunk({"content": "a"}, 1), chunk({"content": "b"}, 2)),
}


@pytest.fixture(scope="module")
def replaying(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    folder = tmp_path_factory.mktemp("tokens")
    for name, body in TRANSCRIPTS.items():
        head = (
            "# api: chat\n# source: https://platform.openai.com/docs/api-reference/chat-streaming\n"
        )
        (folder / f"{name}.sse").write_text(f"{head}@ 10ms\n{body}")
    with SimProcess(SimConfig(replay=[folder])) as sim:
        yield sim


async def replay(sim: SimProcess, http: aiohttp.ClientSession, name: str) -> Record:
    ep = Endpoint(
        base_url=sim.url,
        api=CHAT,
        options=RequestOptions(model="m", vllm_extensions=False, ignore_eos=False, extra_body={}),
        headers={"x-latbench-replay": name},
        timeouts=Timeouts(first_token=5, idle=5, total=10),
    )
    return await one(http, ep, ITEM)


async def test_untyped_token_events_stay_content(replaying: SimProcess, http) -> None:
    rec = await replay(replaying, http, "untyped")
    assert rec.ok, rec.error_detail
    assert (rec.ev_kind, tuple(rec.ev_n or ())) == ("cc", (1, 2))
    assert rec.usage_completion_tokens == 3


async def test_an_empty_delta_takes_the_tool_calls_kind_and_ttfo_skips_it(
    replaying: SimProcess, http
) -> None:
    rec = await replay(replaying, http, "call_then_answer")
    assert rec.ok, rec.error_detail
    assert rec.ev_kind == "ttc"
    s = summarize([rec])
    assert dict(s.tokens.by_kind) == {"reasoning": 0, "content": 1, "tool_call": 2}
    assert s.tokens.tool_call_requests == 1
    # Every event came in one piece: TTFT, TTFO and the first tool call share its instant, and
    # each is there as its own figure.
    assert s.latency["ttfo"].mean == s.latency["ttft"].mean == s.tokens.ttft_tool_call.mean
    assert s.tokens.to_dict()["tool_calls"]["tokens"] == 2


async def test_a_stream_that_ends_before_its_end_marker_is_cut_and_keeps_its_events(
    replaying: SimProcess, http
) -> None:
    rec = await replay(replaying, http, "ends_early")
    assert rec.error is ErrorKind.STREAM_TRUNCATED
    assert rec.error_detail == "the stream closed before its end marker"
    assert rec.ev_kind == "cc" and rec.usage_completion_tokens == 2


@pytest.mark.parametrize("api", ["chat", "anthropic", "responses"])
async def test_the_simulators_tool_call_is_counted_apart_in_every_api(
    sim: Callable[..., SimProcess], http: aiohttp.ClientSession, api: str
) -> None:
    # 8 tokens: 5 of answer, then a call of 3 (its name, two argument pieces), 10 ms apart.
    personality = {"chat": "openai"}.get(api, api)
    proc = sim(api=personality, tool_call_tokens=3, ttft=0.02, itl=0.01)
    ep = Endpoint(
        base_url=proc.url,
        api=API_KINDS[api],
        options=RequestOptions(model="sim-model", vllm_extensions=True, ignore_eos=True,
                               extra_body={}),
        headers={"anthropic-version": "2023-06-01"},
        timeouts=Timeouts(first_token=5, idle=5, total=10),
    )  # fmt: skip
    rec = await one(http, ep, ITEM)
    assert rec.ok, rec.error_detail
    assert rec.ev_kind == "ccccc" + "ttt"
    assert rec.usage_completion_tokens == 8
    s = summarize([rec])
    assert dict(s.tokens.by_kind) == {"reasoning": 0, "content": 5, "tool_call": 3}
    assert s.tokens.tool_call_requests == 1
    # TTFO is the answer's first token; the call's first token is the sixth event (50 ms later
    # on the simulator's timetable; the same instant at worst, had one read brought both).
    ttfo, first_call = s.latency["ttfo"].mean, s.tokens.ttft_tool_call.mean
    assert ttfo is not None and first_call is not None
    assert first_call * 1e9 == pytest.approx(rec.ev_t[5] - rec.t_sent, abs=1)
    assert first_call >= ttfo
    assert s.latency["ttft"].mean == ttfo
