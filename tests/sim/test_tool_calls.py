"""The simulator's tool calls (`tool_call_tokens`): the last tokens of a response are one call of
its tool, in each format as the provider streams one, and whole in a non-streamed answer.

The call's first event carries its name (chat's first `tool_calls` delta, Anthropic's `tool_use`
block start, the Responses `function_call` item's opening), the later ones pieces of its
arguments, which put together are a JSON object. Its tokens are part of max_tokens.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from conftest import Serve

from latbench.sim import events_for

# A 3-token call alone: the name's event, then two argument pieces of one word each.
ARGS = '{"query":" of and"}'


ANTHROPIC = {"anthropic-version": "2023-06-01"}


async def sse(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    """The JSON payloads of a streamed answer, `[DONE]` left out."""
    async with http.post(url, json=body, headers=ANTHROPIC) as r:
        assert r.status == 200, await r.text()
        raw = await r.read()
    datas = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    return [orjson.loads(d) for d in datas if d != b"[DONE]"]


MESSAGES = [{"role": "user", "content": "one two three"}]


async def test_chat_streams_the_call_after_the_answer(serve: Serve, http) -> None:
    url = await serve(tool_call_tokens=3)
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    events = await sse(http, url + "/v1/chat/completions", body)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert [d.get("content") for d in deltas[:3]] == ["", " the", " of"]  # role chunk, answer
    calls = [d["tool_calls"][0] for d in deltas[3:]]
    assert len(calls) == 3
    first = calls[0]
    assert first["type"] == "function" and first["id"].startswith("chatcmpl-tool-")
    assert first["function"] == {"name": "lookup", "arguments": ""}
    assert "name" not in calls[1]["function"]
    args = "".join(c["function"]["arguments"] for c in calls)
    assert orjson.loads(args) == {"query": " to in"}
    assert events[-1]["choices"][0]["finish_reason"] == "length"


async def test_anthropic_streams_a_tool_use_block(serve: Serve, http) -> None:
    url = await serve(api="anthropic", tool_call_tokens=3)
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 3, "stream": True}
    events = await sse(http, url + "/v1/messages", body)
    (start,) = [e for e in events if e["type"] == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "lookup"
    pieces = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(pieces) == ARGS
    assert all(pieces)  # no empty piece: each event is one token event
    assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"]


async def test_responses_streams_a_function_call_item(serve: Serve, http) -> None:
    url = await serve(api="responses", tool_call_tokens=3)
    body = {"model": "sim-model", "input": MESSAGES, "max_output_tokens": 3, "stream": True}
    events = await sse(http, url + "/v1/responses", body)
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["type"], i["name"]) for i in added] == [("function_call", "lookup")]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == ARGS
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == ARGS
    final = events[-1]["response"]
    assert final["output"][0]["arguments"] == ARGS and final["usage"]["output_tokens"] == 3


async def test_a_non_streamed_answer_holds_the_whole_call(serve: Serve, http) -> None:
    url = await serve(tool_call_tokens=2)
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 4}
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        message = (await r.json())["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert call["function"] == {"name": "lookup", "arguments": '{"query":" to"}'}
    assert message["content"] == " the of"

    url = await serve(api="anthropic", tool_call_tokens=1)
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 2}
    async with http.post(url + "/v1/messages", json=body, headers=ANTHROPIC) as r:
        blocks = (await r.json())["content"]
    assert blocks[-1]["type"] == "tool_use" and blocks[-1]["input"] == {}  # a name, no pieces

    url = await serve(api="responses", tool_call_tokens=3)
    body = {"model": "sim-model", "input": MESSAGES, "max_output_tokens": 4}
    async with http.post(url + "/v1/responses", json=body) as r:
        output = (await r.json())["output"]
    assert output[-1]["type"] == "function_call"
    assert output[-1]["arguments"] == '{"query":" and to"}'


def test_the_call_is_part_of_the_events_count() -> None:
    # 8 tokens at 3 a event: 1 reasoning, 4 of answer, 3 of a call -> 1 + 2 + 1 events.
    assert events_for(8, 1, 3, tool_call=3) == 4
    assert events_for(2, 0, 1, tool_call=5) == 2  # the call takes what is left
