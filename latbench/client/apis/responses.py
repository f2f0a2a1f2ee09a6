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
from latbench.shared.errors import ErrorKind
from latbench.workload import WorkItem
from latbench.workload.session import Reply

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
            "input": list(item.messages),
            "max_output_tokens": item.max_tokens,
            "stream": True,
            # A benchmark's responses are not worth keeping on the provider's side.
            "store": False,
        }
        return finish_body(body, item, opts)

    def reply(self, payloads: Sequence[bytes]) -> Reply:
        # Text only, for now; tool calls (function_call items) come with the agent workload.
        text = []
        for data in payloads:
            try:
                obj = load_object(data)
            except MalformedEvent:
                continue
            delta = obj.get("delta")
            if obj.get("type") == "response.output_text.delta" and isinstance(delta, str):
                text.append(delta)
        return Reply("".join(text))

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
