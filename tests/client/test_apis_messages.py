"""Each API kind's request body from the neutral Chat Completions messages, and the reply (text
and tool calls) read back from a stream the simulator replays over a real socket.

The conversation under test is an agent's: a system prompt, a user message with an image, an
assistant reply that called two tools at once, both results, and a new user message. Anthropic
wants the system prompt at the top level, images as base64 `image` blocks, calls as `tool_use`
blocks with parsed inputs and every result in the one user message after them; the Responses API
wants `input_text`/`input_image` parts and `function_call`/`function_call_output` items.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from time import monotonic_ns
from typing import Any

import aiohttp
import orjson
import pytest
from kit import paths
from kit.vllm import VLLM_ENV, VLLM_PYTHON, needs_vllm

from latbench.client import (
    API_KINDS,
    NO_RETRY,
    Endpoint,
    RequestOptions,
    Timeouts,
    stream_request,
)
from latbench.client.apis.convert import ConversionError
from latbench.sim import SimConfig, SimProcess
from latbench.workload import WorkItem
from latbench.workload.session import Reply, ToolCall, assistant_message, tool_messages
from latbench.workload.tools import builtin_tools

OPTS = RequestOptions(model="m", vllm_extensions=False, ignore_eos=False, extra_body={})
PNG_B64 = "iVBORw0KGgo="
TOOLS = builtin_tools(2)
CALLS = (
    ToolCall("call_a", "get_weather", '{"location": "Paris, France"}'),
    ToolCall("call_b", "search_web", '{"query": "paris'),  # cut short: not JSON
)
PARIS = {"location": "Paris, France"}
ARGS = [c.arguments for c in CALLS]
CONVERSATION: tuple[dict[str, Any], ...] = (
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        ],
    },
    assistant_message(Reply("Checking.", CALLS)),
    *tool_messages(Reply("", CALLS), "sunny"),
    {"role": "user", "content": "Thanks. And tomorrow?"},
)


def item(messages: tuple[dict[str, Any], ...] = CONVERSATION) -> WorkItem:
    return WorkItem("", messages, None, 16, tools=TOOLS)


def test_anthropic_body_converts_an_agent_conversation() -> None:
    body = API_KINDS["anthropic"].body(item(), OPTS)
    assert body["system"] == "You are terse."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    user, assistant, results = body["messages"]
    assert user["content"] == [
        {"type": "text", "text": "Weather here?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
    ]
    assert assistant["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": PARIS},
        # Arguments that are not a JSON object are resent as {}: the call keeps its id and name.
        {"type": "tool_use", "id": "call_b", "name": "search_web", "input": {}},
    ]  # fmt: skip
    # Both results, then the next user message, in the one user message after the calls.
    assert results["content"] == [
        {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_b", "content": "sunny"},
        {"type": "text", "text": "Thanks. And tomorrow?"},
    ]
    fn = TOOLS[0]["function"]
    assert body["tools"][0] == {
        "name": fn["name"],
        "description": fn["description"],
        "input_schema": fn["parameters"],
    }
    assert len(body["tools"]) == 2


def test_anthropic_body_of_a_plain_chat_is_unchanged() -> None:
    plain = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"})
    body = API_KINDS["anthropic"].body(WorkItem("", plain, None, 4), OPTS)
    assert body["messages"] == list(plain)
    assert "system" not in body and "tools" not in body


def test_anthropic_leaves_out_an_empty_reply_and_merges_the_user_turns() -> None:
    history = (
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": ""},  # e.g. every token was reasoning
        {"role": "user", "content": "two"},
    )
    body = API_KINDS["anthropic"].body(WorkItem("", history, None, 4), OPTS)
    text = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert body["messages"] == [{"role": "user", "content": text}]


def test_responses_body_converts_an_agent_conversation() -> None:
    body = API_KINDS["responses"].body(item(), OPTS)
    url = f"data:image/png;base64,{PNG_B64}"
    assert body["input"] == [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": url, "detail": "auto"},
            ],
        },
        {"role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": ARGS[0]},
        {"type": "function_call", "call_id": "call_b", "name": "search_web", "arguments": ARGS[1]},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": "sunny"},
        {"role": "user", "content": "Thanks. And tomorrow?"},
    ]  # fmt: skip
    fn = TOOLS[1]["function"]
    assert body["tools"][1] == {
        "type": "function",
        "name": fn["name"],
        "description": fn["description"],
        "parameters": fn["parameters"],
        "strict": False,
    }


def test_a_schema_without_a_type_is_an_object_and_none_is_empty() -> None:
    bare = ({"type": "function", "function": {"name": "a", "parameters": {"properties": {}}}},)
    bare += ({"type": "function", "function": {"name": "b"}},)
    item = WorkItem("", ({"role": "user", "content": "x"},), None, 4, tools=bare)
    for api, key in (("anthropic", "input_schema"), ("responses", "parameters")):
        schemas = [t[key] for t in API_KINDS[api].body(item, OPTS)["tools"]]
        assert schemas == [{"type": "object", "properties": {}}] * 2, api


def test_chat_body_sends_the_neutral_format_as_is() -> None:
    body = API_KINDS["chat"].body(item(), OPTS)
    assert body["messages"] == list(CONVERSATION)
    assert body["tools"] == list(TOOLS)


def test_completions_body_sends_the_flattened_prompt() -> None:
    body = API_KINDS["completions"].body(WorkItem("one two", CONVERSATION, None, 4), OPTS)
    assert body["prompt"] == "one two"
    assert "messages" not in body and "tools" not in body


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_a_message_no_api_can_carry_is_refused_by_name(api: str) -> None:
    odd = ({"role": "critic", "content": "hm"},)
    with pytest.raises(ConversionError, match="role 'critic'"):
        API_KINDS[api].body(WorkItem("", odd, None, 4), OPTS)
    audio = ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},)
    with pytest.raises(ConversionError, match="'input_audio'"):
        API_KINDS[api].body(WorkItem("", audio, None, 4), OPTS)


def test_anthropic_refuses_a_data_url_that_is_not_base64() -> None:
    bad = ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]},)
    with pytest.raises(ConversionError, match="data URL"):
        API_KINDS["anthropic"].body(WorkItem("", bad, None, 4), OPTS)


# The replies of the recorded tool-call streams (tests/transcripts), read off a real socket.
REPLIES = {
    "anthropic_tool_use": Reply(
        "Okay, let's check the weather for San Francisco, CA:",
        (
            ToolCall(
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "get_weather",
                '{"location": "San Francisco, CA", "unit": "fahrenheit"}',
            ),
        ),
    ),
    "responses_function_call": Reply(
        "", (ToolCall("call_1234xyz", "get_weather", '{"location":"Paris, France"}'),)
    ),
    "anthropic_text": None,  # text only: no tool calls
}


@pytest.fixture(scope="module")
def replaying() -> Iterator[str]:
    with SimProcess(SimConfig(replay=[paths.TRANSCRIPTS])) as sim:
        yield sim.url


@pytest.mark.parametrize("name", sorted(REPLIES))
async def test_reply_reads_tool_calls_from_a_replayed_stream(replaying: str, name: str) -> None:
    api = name.split("_")[0]
    ep = Endpoint(
        base_url=replaying,
        api=API_KINDS[api],
        options=OPTS,
        headers={"x-latbench-replay": name},
        timeouts=Timeouts(first_token=5, idle=5, total=10),
        retry=NO_RETRY,
    )
    kept: list[bytes] = []
    async with aiohttp.ClientSession() as http:
        hi = WorkItem("hi", ({"role": "user", "content": "hi"},), 1, 8)
        rec = await stream_request(
            http, ep, hi, run_id="t", seq=0, phase="measure", t_intended=monotonic_ns(), keep=kept
        )
    assert rec.error is None and kept
    reply = API_KINDS[api].reply(kept)
    want = REPLIES[name]
    if want is None:
        assert reply.tool_calls == () and reply.text
        return
    assert reply == want
    # And the reply resent next turn carries the call in the API's own shape.
    history = (
        {"role": "user", "content": "hi"},
        assistant_message(reply),
        *tool_messages(reply, "72F"),
    )
    body = API_KINDS[api].body(WorkItem("", history, None, 8), OPTS)
    call = want.tool_calls[0]
    if api == "anthropic":
        use = body["messages"][1]["content"][-1]
        assert use == {
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": {"location": "San Francisco, CA", "unit": "fahrenheit"},
        }
        assert body["messages"][2]["content"][0]["tool_use_id"] == call.id
    else:
        assert body["input"][1] == {
            "type": "function_call",
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
        }
        assert body["input"][2]["call_id"] == call.id


def test_parallel_calls_are_read_apart() -> None:
    """Two tool calls in one reply: each its own id, name and arguments, in output order."""
    anthropic = [
        b'{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t0","name":"a","input":{}}}',
        b'{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"b","input":{}}}',
        b'{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"x\\":"}}',
        b'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}',
        b'{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"1}"}}',
        b"not json",
    ]  # fmt: skip
    got = API_KINDS["anthropic"].reply(anthropic)
    assert got.tool_calls == (ToolCall("t0", "a", '{"x":1}'), ToolCall("t1", "b", "{}"))
    responses = [
        b'{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","call_id":"c0","name":"a","arguments":""}}',
        b'{"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","call_id":"c1","name":"b","arguments":""}}',
        b'{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{\\"y"}',
        b'{"type":"response.function_call_arguments.delta","output_index":0,"delta":"{}"}',
        # The done event's whole arguments win over the pieces read.
        b'{"type":"response.function_call_arguments.done","output_index":1,"arguments":"{\\"y\\":2}"}',
    ]  # fmt: skip
    got = API_KINDS["responses"].reply(responses)
    assert got.tool_calls == (ToolCall("c0", "a", "{}"), ToolCall("c1", "b", '{"y":2}'))


# vLLM's own reading of both formats (its /v1/messages and /v1/responses convert them back to
# chat messages before the chat template): the conversation must come back out as it went in.
VLLM_READS = """
import json, sys
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
from vllm.entrypoints.anthropic.serving import AnthropicServingMessages
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.entrypoints.openai.responses.utils import construct_input_messages
bodies = json.load(sys.stdin)
a = AnthropicMessagesRequest.model_validate(bodies["anthropic"])
anthropic = []
AnthropicServingMessages._convert_messages(a.messages, anthropic)
r = ResponsesRequest.model_validate(bodies["responses"])
responses = construct_input_messages(request_input=r.input)
tools = {"anthropic": [t.name for t in a.tools], "responses": [t.name for t in r.tools]}
print(json.dumps({"anthropic": anthropic, "responses": responses, "tools": tools}, default=str))
"""


@needs_vllm
def test_vllm_reads_both_formats_back_as_the_conversation_sent() -> None:
    bodies = {api: API_KINDS[api].body(item(), OPTS) for api in ("anthropic", "responses")}
    assert VLLM_PYTHON is not None
    out = subprocess.run(
        [VLLM_PYTHON, "-c", VLLM_READS],
        input=orjson.dumps(bodies),
        capture_output=True,
        timeout=300,
        env={**os.environ, **VLLM_ENV},
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    got = orjson.loads(out.stdout.splitlines()[-1])
    names = ["get_weather", "search_web"]
    assert got["tools"] == {"anthropic": names, "responses": names}
    sent = [dict(m) for m in CONVERSATION]
    # Anthropic's input is an object: the call whose arguments were not JSON comes back as {}.
    sent[2] = {**sent[2], "tool_calls": [*sent[2]["tool_calls"][:1], _args(sent[2], 1, "{}")]}
    assert got["anthropic"] == sent[1:]  # its system prompt travels at the top level
    # The Responses parts keep their own type names; the rest is the conversation as sent.
    user = got["responses"][1]
    assert [p["type"] for p in user["content"]] == ["input_text", "input_image"]
    assert got["responses"][:1] + got["responses"][2:] == sent[:1] + list(CONVERSATION[2:])


def _args(msg: dict[str, Any], i: int, arguments: str) -> dict[str, Any]:
    call = msg["tool_calls"][i]
    return {**call, "function": {**call["function"], "arguments": arguments}}
