"""The simulator as an agent's model (request.py `tool_plan`), over real sockets, in each format.

A request that offers tools gets a reply ending with a call of its first tool, until `tool_steps`
tool results follow its last user message; then it answers in text. The history's tool calls and
results are checked as each API checks them, and a wrong shape is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from conftest import Serve
from kit.sim import truth

from latbench.client.preflight import ANTHROPIC_VERSION

HEADERS = {"anthropic-version": ANTHROPIC_VERSION}
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": SCHEMA}},
    {"type": "function", "function": {"name": "other", "parameters": SCHEMA}},
]
ANTHROPIC_TOOLS = [
    {"name": "search", "input_schema": SCHEMA},
    {"name": "other", "input_schema": SCHEMA},
]
RESPONSES_TOOLS = [
    {"type": "function", "name": "search", "parameters": SCHEMA},
    {"type": "function", "name": "other", "parameters": SCHEMA},
]
PATH = {"chat": "/v1/chat/completions", "anthropic": "/v1/messages", "responses": "/v1/responses"}
PERSONALITY = {"chat": "openai", "anthropic": "anthropic", "responses": "responses"}


async def events(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    async with http.post(url, json={**body, "stream": True}, headers=HEADERS) as r:
        assert r.status == 200, await r.text()
        raw = await r.read()
    datas = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    return [orjson.loads(d) for d in datas if d != b"[DONE]"]


async def refusal(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with http.post(url, json=body, headers=HEADERS) as r:
        assert r.status == 400, await r.text()
        error = (await r.json())["error"]
    return error["message"]


async def last_truth(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    return (await truth(url, http))[-1]


def chat_turns(results: int) -> list[dict[str, Any]]:
    """A user message, then `results` rounds of a call and its result."""
    out: list[dict[str, Any]] = [{"role": "user", "content": "find it"}]
    for i in range(results):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "search", "arguments": "{}"},
        }
        out += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "result words"},
        ]
    return out


def anthropic_turns(results: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "user", "content": "find it"}]
    for i in range(results):
        use = {"type": "tool_use", "id": f"t{i}", "name": "search", "input": {"q": "x"}}
        result = {"type": "tool_result", "tool_use_id": f"t{i}", "content": "result words"}
        out += [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    return out


def responses_turns(results: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "user", "content": "find it"}]
    for i in range(results):
        out += [
            {"type": "function_call", "call_id": f"f{i}", "name": "search", "arguments": "{}"},
            {"type": "function_call_output", "call_id": f"f{i}", "output": "result words"},
        ]
    return out


def body(api: str, results: int, max_tokens: int = 10) -> dict[str, Any]:
    if api == "chat":
        return {"messages": chat_turns(results), "tools": CHAT_TOOLS, "max_tokens": max_tokens}
    if api == "anthropic":
        return {
            "messages": anthropic_turns(results),
            "tools": ANTHROPIC_TOOLS,
            "max_tokens": max_tokens,
        }
    return {
        "input": responses_turns(results),
        "tools": RESPONSES_TOOLS,
        "max_output_tokens": max_tokens,
    }


def reply(api: str, payloads: list[Any]) -> tuple[str | None, str, str]:
    """(the tool called or None, its arguments, the finish reason) of a streamed reply."""
    if api == "chat":
        calls = [c for p in payloads for c in (p["choices"][0]["delta"].get("tool_calls") or [])]
        name = calls[0]["function"]["name"] if calls else None
        args = "".join(c["function"]["arguments"] for c in calls)
        return name, args, payloads[-1]["choices"][0]["finish_reason"]
    if api == "anthropic":
        blocks = [p["content_block"] for p in payloads if p["type"] == "content_block_start"]
        uses = [b for b in blocks if b["type"] == "tool_use"]
        args = "".join(
            p["delta"]["partial_json"]
            for p in payloads
            if p["type"] == "content_block_delta" and p["delta"]["type"] == "input_json_delta"
        )
        (delta,) = [p for p in payloads if p["type"] == "message_delta"]
        return (uses[0]["name"] if uses else None), args, delta["delta"]["stop_reason"]
    items = [p["item"] for p in payloads if p["type"] == "response.output_item.added"]
    calls = [i for i in items if i["type"] == "function_call"]
    args = "".join(
        p["delta"] for p in payloads if p["type"] == "response.function_call_arguments.delta"
    )
    return (calls[0]["name"] if calls else None), args, payloads[-1]["response"]["status"]


STOPPED_FOR_A_CALL = {"chat": "tool_calls", "anthropic": "tool_use", "responses": "completed"}
CUT_AT_MAX_TOKENS = {"chat": "length", "anthropic": "max_tokens", "responses": "incomplete"}


@pytest.mark.parametrize("api", ["chat", "anthropic", "responses"])
async def test_tools_get_a_call_then_after_the_result_a_text_answer(
    serve: Serve, http, api: str
) -> None:
    url = await serve(api=PERSONALITY[api])
    name, args, finish = reply(api, await events(http, url + PATH[api], body(api, 0)))
    assert name == "search"  # the first tool offered
    # The default call is 8 tokens: its name's event, then 7 words of JSON arguments.
    assert len(orjson.loads(args)["query"].split()) == 7
    assert finish == STOPPED_FOR_A_CALL[api]
    assert (await last_truth(http, url))["tool_call"] == "search"

    name, args, finish = reply(api, await events(http, url + PATH[api], body(api, 1)))
    assert (name, args, finish) == (None, "", CUT_AT_MAX_TOKENS[api])
    assert (await last_truth(http, url))["tool_call"] is None


@pytest.mark.parametrize("api", ["chat", "anthropic", "responses"])
async def test_tool_steps_results_before_the_answer(serve: Serve, http, api: str) -> None:
    url = await serve(api=PERSONALITY[api], tool_steps=2, tool_call_tokens=3)
    for results, called in ((1, "search"), (2, None), (3, None)):
        name, args, _ = reply(api, await events(http, url + PATH[api], body(api, results)))
        assert name == called
        if called:
            assert len(orjson.loads(args)["query"].split()) == 2  # tool_call_tokens: 3 tokens
    # A new user message starts the count again.
    follow = body(api, 2)
    key = "input" if api == "responses" else "messages"
    follow[key] = [*follow[key], {"role": "user", "content": "and now?"}]
    name, _, _ = reply(api, await events(http, url + PATH[api], follow))
    assert name == "search"


async def test_anthropic_results_then_new_text_in_one_user_message_is_a_new_turn(
    serve: Serve, http
) -> None:
    # Anthropic's alternation puts the results and the user's next words in one message.
    url = await serve(api="anthropic")
    request = body("anthropic", 1)
    last = request["messages"][-1]
    last["content"] = [*last["content"], {"type": "text", "text": "and now?"}]
    name, _, _ = reply("anthropic", await events(http, url + PATH["anthropic"], request))
    assert name == "search"


async def test_a_non_streamed_reply_holds_the_named_call(serve: Serve, http) -> None:
    url = await serve()
    async with http.post(url + PATH["chat"], json=body("chat", 0)) as r:
        choice = (await r.json())["choices"][0]
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "search" and choice["finish_reason"] == "tool_calls"


async def test_tool_definitions_and_history_count_as_prompt_tokens(serve: Serve, http) -> None:
    url = await serve()
    tools = [{"type": "function", "function": {"name": "search", "description": "two words"}}]
    messages = chat_turns(1)  # "find it", a call (search {}), its result "result words"
    await events(http, url + PATH["chat"], {"messages": messages, "tools": tools, "max_tokens": 2})
    # search two words | find it | search {} | result words
    assert (await last_truth(http, url))["prompt_tokens"] == 9


CHAT_BAD = [
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": {"search": {}}}, "tools"),
    (
        {
            "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "s"}}]}
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        {
            "messages": [
                {"role": "assistant", "tool_calls": [{"function": {"name": "s", "arguments": ""}}]}
            ]
        },
        "messages[0].tool_calls[0].id",
    ),
    ({"messages": [{"role": "tool", "content": "r"}]}, "messages[0].tool_call_id"),
]
ANTHROPIC_BAD = [
    ({"tools": [{"name": "s"}]}, "tools.0.input_schema"),
    ({"tools": [{"input_schema": {}}]}, "tools.0.name"),
    (
        {
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "s"}]}
            ]
        },
        "messages.0.content.0.input",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "r"}]}]},
        "messages.0.content.0.tool_use_id",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "t", "name": "s", "input": {}}],
                }
            ]
        },
        "messages.0.content.0",
    ),
]
RESPONSES_BAD = [
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "name": ""}]}, "tools[0].name"),
    (
        {"input": [{"type": "function_call", "call_id": "f", "name": "s", "arguments": {}}]},
        "input[0].arguments",
    ),
    ({"input": [{"type": "function_call_output", "call_id": "f"}]}, "input[0].output"),
    ({"input": [{"type": "function_call_output", "output": "r"}]}, "input[0].call_id"),
]


@pytest.mark.parametrize(
    ("api", "change", "field"),
    [("chat", c, f) for c, f in CHAT_BAD]
    + [("anthropic", c, f) for c, f in ANTHROPIC_BAD]
    + [("responses", c, f) for c, f in RESPONSES_BAD],
)
async def test_a_malformed_tool_shape_is_a_400_naming_the_field(
    serve: Serve, http, api: str, change: dict[str, Any], field: str
) -> None:
    url = await serve(api=PERSONALITY[api])
    message = await refusal(http, url + PATH[api], {**body(api, 0), **change})
    assert message.startswith(field + " ") or message.startswith(field + ":"), message
