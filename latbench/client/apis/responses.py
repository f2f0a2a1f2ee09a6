"""OpenAI Responses API: `POST /v1/responses` with `stream: true` (OpenAI, and vLLM's).

The stream (https://platform.openai.com/docs/api-reference/responses-streaming) is typed by each
event's JSON `type`. Generated text comes as `response.output_text.delta` (content, as is
`response.refusal.delta`) and as `response.reasoning_summary_text.delta` or, from servers that
stream raw reasoning such as vLLM, `response.reasoning_text.delta` (reasoning). The stream ends
with `response.completed` or `response.incomplete`, which carry the usage, or fails with
`response.failed` or an `error` event. A tool call is generated too, apart from the answer: the
`response.output_item.added` that opens a `function_call` item (its name) and each
`response.function_call_arguments.delta` (and the MCP and custom-tool equivalents) are tool-call
events. There is no `[DONE]`; every other event type (lifecycle, item and part boundaries,
`*.done` repeats of the text) carries no new tokens.

Requests are converted from the neutral Chat Completions messages (`convert_input`) to input
items as https://platform.openai.com/docs/api-reference/responses and vLLM 0.32's
/v1/responses (entrypoints/openai/responses/utils.py) read them: messages with `input_text` and
`input_image` parts, an assistant's tool calls as `function_call` items and tool results as
`function_call_output` items; tools as `{"type": "function", "name", ...}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from latbench.client.apis.base import (
    CONTENT_EVENT,
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
    function,
    image_url,
    parts_of,
    text_of,
)
from latbench.shared.errors import ErrorKind
from latbench.workload import WorkItem
from latbench.workload.session import Reply, ToolCall

_TOKEN_EVENTS = {
    "response.output_text.delta": CONTENT_EVENT,
    "response.refusal.delta": CONTENT_EVENT,
    "response.reasoning_summary_text.delta": REASONING_EVENT,
    "response.reasoning_text.delta": REASONING_EVENT,
    "response.function_call_arguments.delta": TOOL_CALL_EVENT,
    "response.mcp_call_arguments.delta": TOOL_CALL_EVENT,
    "response.custom_tool_call_input.delta": TOOL_CALL_EVENT,
}
# Output items whose opening event already holds generated text (the tool's name).
_CALL_ITEMS = frozenset({"function_call", "custom_tool_call"})
TERMINAL = ("response.completed", "response.incomplete")
ERROR_KINDS = {"rate_limit_exceeded": ErrorKind.RATE_LIMITED}


class Responses:
    name = "responses"
    path = "/v1/responses"

    def body(self, item: WorkItem, opts: RequestOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": opts.model,
            "input": convert_input(item.messages),
            "max_output_tokens": item.max_tokens,
            "stream": True,
            # A benchmark's responses are not worth keeping on the provider's side.
            "store": False,
        }
        if item.tools:
            body["tools"] = [convert_tool(t) for t in item.tools]
        return finish_body(body, item, opts)

    def reply(self, payloads: Sequence[bytes]) -> Reply:
        text: list[str] = []
        calls: dict[object, list[str]] = {}  # output index -> [call_id, name, arguments]
        for data in payloads:
            try:
                obj = load_object(data)
            except MalformedEvent:
                continue
            kind, at = obj.get("type"), obj.get("output_index")
            if kind == "response.output_text.delta" and isinstance(obj.get("delta"), str):
                text.append(obj["delta"])
            elif kind == "response.output_item.added":
                item = obj.get("item")
                if isinstance(item, dict) and item.get("type") == "function_call":
                    calls[at] = [
                        str(item.get("call_id") or ""),
                        str(item.get("name") or ""),
                        str(item.get("arguments") or ""),
                    ]
            elif kind == "response.function_call_arguments.delta" and at in calls:
                calls[at][2] += str(obj.get("delta") or "")
            elif (
                kind == "response.function_call_arguments.done"
                and at in calls
                and isinstance(obj.get("arguments"), str)
            ):
                calls[at][2] = obj["arguments"]  # the whole arguments: they win over the pieces
        tool_calls = tuple(
            ToolCall(got[0] or f"call_{n}", got[1], got[2]) for n, got in enumerate(calls.values())
        )
        return Reply("".join(text), tool_calls)

    def parse(self, data: bytes) -> Event:
        obj = load_object(data)
        kind = obj.get("type")
        if not isinstance(kind, str):
            raise MalformedEvent(f"event without a string type: {data[:120]!r}")
        token = _TOKEN_EVENTS.get(kind)
        if token is not None:
            return token if obj.get("delta") else NOTHING
        if kind in TERMINAL:
            return _terminal(obj, kind)
        if kind == "response.failed":
            response = obj.get("response")
            err = response.get("error") if isinstance(response, dict) else None
            return _error(err if isinstance(err, dict) else {"message": "response.failed"})
        if kind == "error":
            return _error(obj)
        if kind == "response.output_item.added":
            item = obj.get("item")
            if isinstance(item, dict) and item.get("type") in _CALL_ITEMS and item.get("name"):
                return TOOL_CALL_EVENT
        return NOTHING


def _terminal(obj: dict[str, Any], kind: str) -> Event:
    response = obj.get("response")
    if not isinstance(response, dict):
        raise MalformedEvent(f"{kind} without a response object")
    usage = response.get("usage")
    if usage is None:
        usage = {}
    elif not isinstance(usage, dict):
        raise MalformedEvent(f"{kind} with a usage that is not an object: {usage!r:.120}")
    status = reason(response.get("status"), "response.status")
    # vLLM (0.32) ends a response cut short with `response.completed` whose status is
    # `incomplete`, where OpenAI sends `response.incomplete`: the reason is the finish either way.
    if kind == "response.incomplete" or status == "incomplete":
        details = response.get("incomplete_details")
        why = details.get("reason") if isinstance(details, dict) else None
        finish = reason(why, "response.incomplete_details.reason") or "incomplete"
    else:
        finish = status or "completed"
    # output_tokens includes reasoning tokens, streamed or hidden (output_tokens_details).
    return Event(
        None,
        count(usage.get("output_tokens"), "usage.output_tokens"),
        count(usage.get("input_tokens"), "usage.input_tokens"),
        finish,
        done=True,
        usage_only=True,
    )


def _error(err: dict[str, Any]) -> Event:
    code = err.get("code")
    return Event(
        error=f"{code or 'error'}: {err.get('message', '')}",
        error_kind=ERROR_KINDS.get(str(code), ErrorKind.SERVER_ERROR_EVENT),
    )


def convert_input(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Responses API's `input` items, from the neutral (Chat Completions) messages."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role == "tool":
            out.append(
                {
                    "type": "function_call_output",
                    "call_id": str(m.get("tool_call_id") or ""),
                    "output": text_of(content),
                }
            )
        elif role == "assistant":
            # The assistant's earlier output is resent as text (vLLM reads its first part only);
            # a reply that was only a tool call has none, and sends no empty message.
            if text := text_of(content):
                out.append({"role": "assistant", "content": text})
            for call in m.get("tool_calls") or ():
                call_id, name, args = arguments(call)
                out.append(
                    {"type": "function_call", "call_id": call_id, "name": name, "arguments": args}
                )
        elif role in ("system", "developer", "user"):
            out.append(
                {"role": role, "content": content if isinstance(content, str) else _parts(content)}
            )
        else:
            raise ConversionError(f"a message with role {role!r}, which the Responses API lacks")
    return out


def convert_tool(tool: dict[str, Any]) -> dict[str, Any]:
    name, description, schema = function(tool)
    # strict: false says so outright: OpenAI's strict mode wants every property required and
    # no additional ones, which a workload's schemas need not meet.
    out: dict[str, Any] = {"type": "function", "name": name, "parameters": schema, "strict": False}
    if description is not None:
        out["description"] = description
    return out


def _parts(content: object) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in parts_of(content):
        ptype = part.get("type")
        if ptype == "text":
            parts.append({"type": "input_text", "text": str(part.get("text") or "")})
        elif ptype == "image_url":
            parts.append({"type": "input_image", "image_url": image_url(part), "detail": "auto"})
        else:
            raise ConversionError(f"a content part of type {ptype!r}, which latbench cannot send")
    return parts
