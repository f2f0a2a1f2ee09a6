"""Anthropic Messages API: `POST /v1/messages` with `stream: true`.

The stream (https://docs.anthropic.com/en/docs/build-with-claude/streaming) names each event in
its JSON `type`: `message_start` (input usage), then per content block `content_block_start`,
`content_block_delta`s and `content_block_stop`, then `message_delta` (stop reason and the
cumulative output usage) and `message_stop`, the end marker; `ping` and `error` can come at any
point. There is no `[DONE]`. A `thinking_delta` is reasoning, a `text_delta` is content, and a
tool call (a `tool_use` block: the name in its start, the arguments in `input_json_delta`s) is
a tool-call event; the `signature_delta` that closes a thinking block carries no generated text.
Unknown event types are ignored, as Anthropic's versioning policy asks of clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
from latbench.shared.errors import ErrorKind
from latbench.workload import WorkItem
from latbench.workload.session import Reply

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
        # The Messages API takes system prompts as a top-level field, not as a message role.
        system = [m["content"] for m in item.messages if m["role"] == "system"]
        body: dict[str, Any] = {
            "model": opts.model,
            "max_tokens": item.max_tokens,
            "messages": [m for m in item.messages if m["role"] != "system"],
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        return finish_body(body, item, opts)

    def reply(self, payloads: Sequence[bytes]) -> Reply:
        # Text only, for now; tool calls (tool_use blocks) come with the agent workload.
        text = []
        for data in payloads:
            try:
                obj = load_object(data)
            except MalformedEvent:
                continue
            delta = obj.get("delta") if obj.get("type") == "content_block_delta" else None
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text.append(str(delta.get("text") or ""))
        return Reply("".join(text))

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
