"""OpenAI-compatible streaming: `/v1/completions` and `/v1/chat/completions`.

Both end with `data: [DONE]`. Usage comes in a final chunk with empty `choices` when the request
asks for `stream_options.include_usage`; vLLM's `continuous_usage_stats` adds cumulative usage to
every chunk, which is how per-event token counts are known. A chat delta's `tool_calls` (a
function's name, pieces of its arguments) are tool-call events: generated tokens, apart from the
answer's `content`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from latbench.client.apis.base import (
    MAX_COUNT,
    MAX_REASON,
    NOTHING,
    Event,
    MalformedEvent,
    RequestOptions,
    count,
    finish_body,
    load_object,
    reason,
)
from latbench.records.record import CONTENT, REASONING, TOOL_CALL
from latbench.workload import WorkItem
from latbench.workload.session import Reply, ToolCall

DONE = b"[DONE]"


def _common(item: WorkItem, opts: RequestOptions) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": opts.model,
        "max_tokens": item.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if opts.vllm_extensions:
        body["stream_options"]["continuous_usage_stats"] = True
    return finish_body(body, item, opts)


def _usage(obj: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = obj.get("usage")
    if usage is None:  # OpenAI sends `"usage": null` on every chunk but the last
        return None, None
    if not isinstance(usage, dict):
        raise MalformedEvent(f"usage is not an object: {usage!r:.120}")
    # Checked inline, on every event of a continuous-usage stream: `count` only words the error.
    completion = usage.get("completion_tokens")
    if completion is not None and not (type(completion) is int and 0 <= completion <= MAX_COUNT):
        count(completion, "usage.completion_tokens")
    prompt = usage.get("prompt_tokens")
    if prompt is not None and not (type(prompt) is int and 0 <= prompt <= MAX_COUNT):
        count(prompt, "usage.prompt_tokens")
    return completion, prompt


def _error(obj: dict[str, Any]) -> Event | None:
    err = obj.get("error")
    if err is None:
        return None
    msg = err.get("message", err) if isinstance(err, dict) else err
    return Event(error=str(msg))


def _first_choice(obj: dict[str, Any]) -> dict[str, Any] | None:
    choices = obj.get("choices")
    if not choices:
        return None
    if not isinstance(choices, list):
        raise MalformedEvent(f"choices is not a list: {choices!r:.120}")
    c = choices[0]
    if not isinstance(c, dict):
        raise MalformedEvent(f"choices[0] is not an object: {c!r:.120}")
    return c


def _parse(data: bytes, kind_of: Callable[[dict[str, Any]], str | None]) -> Event:
    """One chunk of either endpoint; `kind_of` reads the generated text's kind from a choice."""
    if data == DONE:
        return Event(done=True)
    obj = load_object(data)
    if (err := _error(obj)) is not None:
        return err
    completion, prompt = _usage(obj)
    c = _first_choice(obj)
    if c is None:
        return NOTHING if completion is None else Event(None, completion, prompt, usage_only=True)
    finish = c.get("finish_reason")
    if finish is not None and not (type(finish) is str and len(finish) <= MAX_REASON):
        reason(finish, "choices[0].finish_reason")  # raises, naming the field
    return Event(kind_of(c), completion, prompt, finish)


def _completion_kind(c: dict[str, Any]) -> str | None:
    return CONTENT if c.get("text") else None


def _chat_kind(c: dict[str, Any]) -> str | None:
    delta = c.get("delta") or {}
    if not isinstance(delta, dict):
        raise MalformedEvent(f"choices[0].delta is not an object: {delta!r:.120}")
    if delta.get("content"):
        return CONTENT
    # vLLM has used both names for the reasoning parser's output.
    if delta.get("reasoning_content") or delta.get("reasoning"):
        return REASONING
    calls = delta.get("tool_calls")
    if calls:
        return _tool_call_kind(calls)
    if delta.get("function_call"):  # the deprecated functions API's one call
        return _tool_call_kind([{"function": delta["function_call"]}])
    return None


def _tool_call_kind(calls: object) -> str | None:
    """TOOL_CALL when a `tool_calls` delta carries generated text: a function's name (the first
    delta of a call) or a piece of its arguments. The id and type alone are the server's."""
    if not isinstance(calls, list):
        raise MalformedEvent(f"choices[0].delta.tool_calls is not a list: {calls!r:.120}")
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and (fn.get("name") or fn.get("arguments")):
            return TOOL_CALL
    return None


def _choices(payloads: Sequence[bytes]) -> list[dict[str, Any]]:
    """Each chunk's first choice, skipping the end marker and what is not a JSON object (the
    record already says how the stream failed)."""
    out = []
    for data in payloads:
        if data == DONE:
            continue
        try:
            c = _first_choice(load_object(data))
        except MalformedEvent:
            continue
        if c is not None:
            out.append(c)
    return out


class Completions:
    name = "completions"
    path = "/v1/completions"

    def body(self, item: WorkItem, opts: RequestOptions) -> dict[str, Any]:
        return {"prompt": item.prompt, **_common(item, opts)}

    def parse(self, data: bytes) -> Event:
        return _parse(data, _completion_kind)

    def reply(self, payloads: Sequence[bytes]) -> Reply:
        return Reply("".join(str(c.get("text") or "") for c in _choices(payloads)))


class Chat:
    name = "chat"
    path = "/v1/chat/completions"

    def body(self, item: WorkItem, opts: RequestOptions) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": list(item.messages)}
        if item.tools:
            body["tools"] = list(item.tools)
        return {**body, **_common(item, opts)}

    def parse(self, data: bytes) -> Event:
        return _parse(data, _chat_kind)

    def reply(self, payloads: Sequence[bytes]) -> Reply:
        text: list[str] = []
        calls: dict[int, list[str]] = {}  # tool call index -> [id, name, arguments]
        for c in _choices(payloads):
            delta = c.get("delta")
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for i, call in enumerate(delta.get("tool_calls") or ()):
                if not isinstance(call, dict):
                    continue
                index = call.get("index", i)
                got = calls.setdefault(index if isinstance(index, int) else i, ["", "", ""])
                if isinstance(call.get("id"), str):
                    got[0] = call["id"]
                fn = call.get("function")
                if isinstance(fn, dict):
                    if isinstance(fn.get("name"), str):
                        got[1] += fn["name"]
                    if isinstance(fn.get("arguments"), str):
                        got[2] += fn["arguments"]
        tool_calls = tuple(
            ToolCall(got[0] or f"call_{index}", got[1], got[2])
            for index, got in sorted(calls.items())
        )
        return Reply("".join(text), tool_calls)
