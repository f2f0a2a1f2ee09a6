"""Anthropic Messages API: `POST /v1/messages` with `stream: true`.

The stream (https://docs.anthropic.com/en/docs/build-with-claude/streaming) names each event in
its JSON `type`: `message_start` (input usage), then per content block `content_block_start`,
`content_block_delta`s and `content_block_stop`, then `message_delta` (stop reason and the
cumulative output usage) and `message_stop`, the end marker; `ping` and `error` can come at any
point. There is no `[DONE]`. A `thinking_delta` is reasoning, a `text_delta` is content, and a
tool call (a `tool_use` block: the name in its start, the arguments in `input_json_delta`s) is
a tool-call event; the `signature_delta` that closes a thinking block carries no generated text.
Unknown event types are ignored, as Anthropic's versioning policy asks of clients.

Requests are converted from the neutral Chat Completions messages (`convert_messages`): the
system prompt to the top level, images to base64 `image` blocks, tool calls to `tool_use` blocks
and tool results to `tool_result` blocks, as https://docs.anthropic.com/en/docs/build-with-claude/
tool-use and vLLM 0.32's /v1/messages (which converts them back to chat messages) read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from latbench.client.apis.base import (
    CONTENT_EVENT,
    MAX_COUNT,
    NOTHING,
    REASONING_EVENT,
    TOOL_CALL_EVENT,
    Event,
    MalformedEvent,
    RequestOptions,
    count,
    finish_body,
    load_object,
    reason,
)
from latbench.client.apis.convert import (
    ConversionError,
    arguments,
    arguments_object,
    function,
    image_url,
    parts_of,
    split_data_url,
    text_of,
)
from latbench.shared.errors import ErrorKind
from latbench.workload import WorkItem
from latbench.workload.session import Reply, ToolCall

_DONE = Event(done=True)
# Anthropic error types that say "turned away for load", as its HTTP 429 and 529 do.
ERROR_KINDS = {
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "overloaded_error": ErrorKind.OVERLOADED,
}


def prompt_tokens(usage: dict[str, Any]) -> int | None:
    """Every prompt token the server processed: `input_tokens` excludes the cached ones, which
    OpenAI-style `prompt_tokens` include, so the cache fields are added back."""
    parts = [
        count(usage.get(k), f"usage.{k}")
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    if parts[0] is None:
        return None
    total = sum(p for p in parts if p is not None)
    if total > MAX_COUNT:
        raise MalformedEvent(f"usage input tokens add up to {total}, over 2**53")
    return total


class Messages:
    name = "anthropic"
    path = "/v1/messages"

    def body(self, item: WorkItem, opts: RequestOptions) -> dict[str, Any]:
        system, messages = convert_messages(item.messages)
        body: dict[str, Any] = {
            "model": opts.model,
            "max_tokens": item.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        if item.tools:
            body["tools"] = [convert_tool(t) for t in item.tools]
        return finish_body(body, item, opts)

    def reply(self, payloads: Sequence[bytes]) -> Reply:
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # content block index -> [id, name, arguments]
        for data in payloads:
            try:
                obj = load_object(data)
            except MalformedEvent:
                continue
            kind, index = obj.get("type"), obj.get("index")
            if kind == "content_block_start":
                block = obj.get("content_block")
                if isinstance(block, dict) and block.get("type") == "tool_use":
                    # A start normally holds `input: {}` and the deltas the arguments; a start
                    # that holds them whole (no deltas follow) is read the same.
                    given = block.get("input")
                    calls[index if isinstance(index, int) else len(calls)] = [
                        str(block.get("id") or ""),
                        str(block.get("name") or ""),
                        orjson.dumps(given).decode() if given else "",
                    ]
                elif isinstance(block, dict) and block.get("type") == "text":
                    text.append(str(block.get("text") or ""))
            elif kind == "content_block_delta":
                delta = obj.get("delta")
                if not isinstance(delta, dict):
                    continue
                if delta.get("type") == "text_delta":
                    text.append(str(delta.get("text") or ""))
                elif delta.get("type") == "input_json_delta" and index in calls:
                    calls[index][2] += str(delta.get("partial_json") or "")
        tool_calls = tuple(
            ToolCall(got[0] or f"toolu_{index}", got[1], got[2])
            for index, got in sorted(calls.items())
        )
        return Reply("".join(text), tool_calls)

    def parse(self, data: bytes) -> Event:
        obj = load_object(data)
        kind = obj.get("type")
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if not isinstance(delta, dict):
                raise MalformedEvent(f"content_block_delta without a delta object: {data[:120]!r}")
            dtype = delta.get("type")
            if dtype == "text_delta":
                return CONTENT_EVENT if delta.get("text") else NOTHING
            if dtype == "thinking_delta":
                return REASONING_EVENT if delta.get("thinking") else NOTHING
            if dtype == "input_json_delta":
                # The first one of a block is often empty: it carries nothing generated.
                return TOOL_CALL_EVENT if delta.get("partial_json") else NOTHING
            # signature_delta closes a thinking block; citations repeat what the text said.
            return NOTHING
        if kind == "message_delta":
            usage = obj.get("usage") or {}
            delta = obj.get("delta") or {}
            if not isinstance(usage, dict) or not isinstance(delta, dict):
                raise MalformedEvent(
                    f"message_delta with a malformed usage or delta: {data[:120]!r}"
                )
            return Event(
                None,
                count(usage.get("output_tokens"), "usage.output_tokens"),
                prompt_tokens(usage),
                reason(delta.get("stop_reason"), "delta.stop_reason"),
                usage_only=True,
            )
        if kind == "message_start":
            message = obj.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            # Its output_tokens is a placeholder (1) until message_delta gives the real count.
            return Event(prompt_tokens=prompt_tokens(usage)) if isinstance(usage, dict) else NOTHING
        if kind == "message_stop":
            return _DONE
        if kind == "error":
            return _error(obj.get("error"))
        if kind == "content_block_start":
            return _block_start(obj.get("content_block"))
        if not isinstance(kind, str):
            raise MalformedEvent(f"event without a string type: {data[:120]!r}")
        return NOTHING  # ping, content_block_stop, and types added after this was written


def _block_start(block: object) -> Event:
    if not isinstance(block, dict):
        return NOTHING
    btype = block.get("type")
    # A block normally starts empty; text it already holds was generated all the same.
    if btype == "text":
        return CONTENT_EVENT if block.get("text") else NOTHING
    if btype == "thinking":
        return REASONING_EVENT if block.get("thinking") else NOTHING
    if btype == "redacted_thinking":
        return REASONING_EVENT  # encrypted reasoning, delivered whole in its start event
    if btype in ("tool_use", "server_tool_use"):
        return TOOL_CALL_EVENT if block.get("name") else NOTHING  # the name was generated
    return NOTHING


def _error(err: object) -> Event:
    if not isinstance(err, dict):
        return Event(error=f"error event: {err!r:.200}")
    etype = str(err.get("type", "error"))
    return Event(
        error=f"{etype}: {err.get('message', '')}",
        error_kind=ERROR_KINDS.get(etype, ErrorKind.SERVER_ERROR_EVENT),
    )


def convert_messages(messages: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the Messages API's `messages`, from the neutral (Chat Completions)
    format. System messages go to the top-level `system`. Content parts become blocks (`text`;
    `image_url` becomes an `image` block with a base64 source, or a url source). An assistant's
    `tool_calls` become `tool_use` blocks after its text, and `tool` messages become
    `tool_result` blocks of a user message. Consecutive messages of one role are merged into one:
    the API wants every `tool_result` answering a turn's calls in the one user message right
    after it, results first, and a user message following tool results is one role twice."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system" or role == "developer":
            system.append(text_of(m.get("content")))
            continue
        if role == "tool":
            role, content = "user", [_tool_result(m)]
        elif role == "assistant":
            content = _assistant(m)
            if not content:
                # A reply with no text and no call (its tokens all reasoning, or none): the API
                # refuses an empty message anywhere but last, and the user turns around it merge.
                continue
        elif role == "user":
            content = m.get("content")
            content = content if isinstance(content, str) else _blocks(content)
        else:
            raise ConversionError(f"a message with role {role!r}, which the Messages API lacks")
        if out and out[-1]["role"] == role:
            prev = out[-1]
            prev["content"] = _as_blocks(prev["content"]) + _as_blocks(content)
        else:
            out.append({"role": role, "content": content})
    return "\n\n".join(system), out


def convert_tool(tool: dict[str, Any]) -> dict[str, Any]:
    name, description, schema = function(tool)
    out: dict[str, Any] = {"name": name, "input_schema": schema}
    if description is not None:
        out["description"] = description
    return out


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _blocks(content: object) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts_of(content):
        ptype = part.get("type")
        if ptype == "text":
            blocks.append({"type": "text", "text": str(part.get("text") or "")})
        elif ptype == "image_url":
            url = image_url(part)
            data = split_data_url(url)
            source = (
                {"type": "url", "url": url}
                if data is None
                else {"type": "base64", "media_type": data[0], "data": data[1]}
            )
            blocks.append({"type": "image", "source": source})
        else:
            raise ConversionError(f"a content part of type {ptype!r}, which latbench cannot send")
    return blocks


def _assistant(m: dict[str, Any]) -> str | list[dict[str, Any]]:
    calls = m.get("tool_calls") or ()
    content = m.get("content")
    if not calls:
        return content if isinstance(content, str) else _blocks(content)
    # The API refuses an empty text block: a reply that was only a tool call has none.
    blocks = [b for b in _blocks(content) if b["type"] != "text" or b["text"]]
    for call in calls:
        call_id, name, args = arguments(call)
        blocks.append(
            {"type": "tool_use", "id": call_id, "name": name, "input": arguments_object(args)}
        )
    return blocks


def _tool_result(m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    return {
        "type": "tool_result",
        "tool_use_id": str(m.get("tool_call_id") or ""),
        "content": content if isinstance(content, str) else _blocks(content),
    }
