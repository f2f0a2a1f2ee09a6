"""The simulator's other wire formats: Anthropic Messages and OpenAI Responses.

A *personality* (`SimConfig.api`) decides what the server is: `openai` (vLLM's
`/v1/completions` and `/v1/chat/completions`), `anthropic` (`/v1/messages`, Anthropic's model list,
`x-api-key` and `anthropic-version` headers) or `responses` (`/v1/responses`).

Each format has an encoder, one per request, that turns the engine's token events into that
format's SSE bytes: `opening()` right after the headers, `token_event(...)` once per token event
(block and item boundaries ride in the same write as the token that crosses them, as the role
chunk does for vLLM), `closing(...)` at a normal end, `error_event()` for a mid-stream failure,
`end()` for the bare end marker, `full(...)` for a non-streamed body. Event shapes follow the
providers' documentation: https://docs.anthropic.com/en/docs/build-with-claude/streaming and
https://platform.openai.com/docs/api-reference/responses-streaming.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

if TYPE_CHECKING:
    from latbench.sim.engine import Plan
    from latbench.sim.request import GenRequest

Personality = Literal["openai", "anthropic", "responses"]
# Each generation path and the API kind (as latbench names it) served there.
PATHS: dict[str, str] = {
    "completions": "/v1/completions",
    "chat": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "responses": "/v1/responses",
}
PERSONALITY_APIS: dict[Personality, tuple[str, ...]] = {
    "openai": ("completions", "chat"),
    "anthropic": ("anthropic",),
    "responses": ("responses",),
}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_SIGNATURE = "c2ltdWxhdGVkIHNpZ25hdHVyZQ=="  # base64, as real signatures are; meaningless here


class ApiError(Exception):
    """A request the server refuses: its HTTP status, message and the offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class Encoder(Protocol):
    def opening(self) -> bytes: ...

    def token_event(self, kind: str, text: str, finish: str | None, completion: int) -> bytes: ...

    def closing(self, completion: int, finish: str) -> bytes: ...

    def error_event(self) -> bytes: ...

    def end(self) -> bytes: ...

    def full(self, plan: Plan, reasoning: str, content: str) -> dict[str, Any]: ...


def named_event(name: str, obj: dict[str, Any]) -> bytes:
    """Both formats name each SSE event after its JSON `type`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    etype = ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": etype, "message": message}}


def anthropic_models(model: str, created: int) -> dict[str, Any]:
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    entry = {"type": "model", "id": model, "display_name": model, "created_at": iso}
    return {"data": [entry], "has_more": False, "first_id": model, "last_id": model}


# --- request bodies ---------------------------------------------------------------------------


def _words(value: object, where: str) -> int:
    """Words in a string, or in the `text` of each part of a list of content parts."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        total = 0
        for part in value:
            if not isinstance(part, dict):
                raise ApiError(400, f"{where}: each content part must be an object", where)
            text = part.get("text")
            if isinstance(text, str):
                total += len(text.split())
        return total
    raise ApiError(400, f"{where}: must be a string or a list of content parts", where)


def anthropic_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: Field required, a non-empty list", "messages")
    total = 0 if body.get("system") is None else _words(body["system"], "system")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            # As Anthropic answers: system prompts go in the top-level `system` field.
            raise ApiError(
                400,
                f"messages.{i}.role: Input should be 'user' or 'assistant', got {role!r}; "
                "the Messages API takes a top-level `system` parameter",
                "messages",
            )
        total += _words(m.get("content"), f"messages.{i}.content")
    return total


def responses_prompt_tokens(body: dict[str, Any]) -> int:
    items = body.get("input")
    if items is None:
        raise ApiError(400, "Missing required parameter: 'input'.", "input")
    total = 0 if body.get("instructions") is None else _words(body["instructions"], "instructions")
    if isinstance(items, str):
        return total + len(items.split())
    if not isinstance(items, list) or not items:
        raise ApiError(400, "input must be a string or a non-empty list of items", "input")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"input[{i}] must be an object", "input")
        total += _words(item.get("content", ""), f"input[{i}].content")
    return total


# --- Anthropic Messages -----------------------------------------------------------------------


def _anthropic_stop(finish: str) -> str:
    return "max_tokens" if finish == "length" else "end_turn"


class AnthropicStream:
    __slots__ = ("_block", "_id", "_kind", "_req")

    def __init__(self, req: GenRequest) -> None:
        self._req = req
        self._id = f"msg_{uuid.uuid4().hex[:24]}"
        self._block = -1
        self._kind: str | None = None

    def _message(self, content: list[Any], stop: str | None, output_tokens: int) -> dict[str, Any]:
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._req.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": self._req.prompt_tokens, "output_tokens": output_tokens},
        }

    def opening(self) -> bytes:
        # The API counts one output token before any is streamed; message_delta has the total.
        start = {"type": "message_start", "message": self._message([], None, 1)}
        return named_event("message_start", start) + named_event("ping", {"type": "ping"})

    def token_event(self, kind: str, text: str, finish: str | None, completion: int) -> bytes:
        out = b""
        thinking = kind == "reasoning"
        if kind != self._kind:
            out += self._close_block()
            self._block += 1
            self._kind = kind
            block = (
                {"type": "thinking", "thinking": ""} if thinking else {"type": "text", "text": ""}
            )
            start = {"type": "content_block_start", "index": self._block, "content_block": block}
            out += named_event("content_block_start", start)
        delta = (
            {"type": "thinking_delta", "thinking": text}
            if thinking
            else {"type": "text_delta", "text": text}
        )
        body = {"type": "content_block_delta", "index": self._block, "delta": delta}
        return out + named_event("content_block_delta", body)

    def _close_block(self) -> bytes:
        if self._kind is None:
            return b""
        out = b""
        if self._kind == "reasoning":
            signature = {"type": "signature_delta", "signature": _SIGNATURE}
            body = {"type": "content_block_delta", "index": self._block, "delta": signature}
            out += named_event("content_block_delta", body)
        stop = {"type": "content_block_stop", "index": self._block}
        return out + named_event("content_block_stop", stop)

    def closing(self, completion: int, finish: str) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": _anthropic_stop(finish), "stop_sequence": None},
            "usage": {"output_tokens": completion},
        }
        return (
            self._close_block()
            + named_event("message_delta", delta)
            + named_event("message_stop", {"type": "message_stop"})
        )

    def error_event(self) -> bytes:
        # The documented example: what a 529 would be, had the stream not started yet.
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return named_event("error", error)

    def end(self) -> bytes:
        return named_event("message_stop", {"type": "message_stop"})

    def full(self, plan: Plan, reasoning: str, content: str) -> dict[str, Any]:
        blocks: list[dict[str, Any]] = []
        if reasoning:
            blocks.append({"type": "thinking", "thinking": reasoning, "signature": _SIGNATURE})
        blocks.append({"type": "text", "text": content})
        return self._message(blocks, _anthropic_stop(plan.finish_reason), plan.completion_tokens)


# --- OpenAI Responses -------------------------------------------------------------------------


class ResponsesStream:
    __slots__ = (
        "_created",
        "_done",
        "_id",
        "_item",
        "_kind",
        "_last",
        "_reasoning",
        "_req",
        "_seq",
        "_text",
    )

    def __init__(self, req: GenRequest) -> None:
        self._req = req
        self._id = f"resp_{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._seq = 0
        self._kind: str | None = None
        self._item: dict[str, Any] = {}
        self._text: list[str] = []
        self._done: list[dict[str, Any]] = []  # finished output items
        self._reasoning = 0  # reasoning tokens so far
        self._last = 0  # completion tokens at the previous event

    def _ev(self, kind: str, **fields: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return named_event(kind, obj)

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "model": self._req.model,
            "output": list(self._done),
            "usage": None,
            **extra,
        }

    def _usage(self, completion: int) -> dict[str, Any]:
        p = self._req.prompt_tokens
        return {
            "input_tokens": p,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": self._reasoning},
            "total_tokens": p + completion,
        }

    def opening(self) -> bytes:
        response = self._response("in_progress")
        return self._ev("response.created", response=response) + self._ev(
            "response.in_progress", response=response
        )

    def token_event(self, kind: str, text: str, finish: str | None, completion: int) -> bytes:
        out = b""
        if kind == "reasoning":
            self._reasoning += completion - self._last
        self._last = completion
        if kind != self._kind:
            out += self._close_item() + self._open_item(kind)
        self._text.append(text)
        index = len(self._done)
        if kind == "reasoning":
            return out + self._ev(
                "response.reasoning_summary_text.delta",
                item_id=self._item["id"],
                output_index=index,
                summary_index=0,
                delta=text,
            )
        return out + self._ev(
            "response.output_text.delta",
            item_id=self._item["id"],
            output_index=index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _open_item(self, kind: str) -> bytes:
        self._kind = kind
        self._text = []
        index = len(self._done)
        if kind == "reasoning":
            self._item = {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": []}
            part = {"type": "summary_text", "text": ""}
            return self._ev(
                "response.output_item.added", output_index=index, item=self._item
            ) + self._ev(
                "response.reasoning_summary_part.added",
                item_id=self._item["id"],
                output_index=index,
                summary_index=0,
                part=part,
            )
        self._item = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": []}
        return self._ev("response.output_item.added", output_index=index, item=self._item) + (
            self._ev(
                "response.content_part.added",
                item_id=self._item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        )

    def _close_item(self) -> bytes:
        if self._kind is None:
            return b""
        text = "".join(self._text)
        item_id = self._item["id"]
        index = len(self._done)
        if self._kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            item = {**self._item, "summary": [part]}
            out = self._ev(
                "response.reasoning_summary_text.done",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                text=text,
            ) + self._ev(
                "response.reasoning_summary_part.done",
                item_id=item_id,
                output_index=index,
                summary_index=0,
                part=part,
            )
        else:
            part = {"type": "output_text", "text": text, "annotations": []}
            item = {**self._item, "status": "completed", "content": [part]}
            out = self._ev(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            ) + self._ev(
                "response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part,
            )
        self._done.append(item)
        self._kind = None
        return out + self._ev("response.output_item.done", output_index=index, item=item)

    def closing(self, completion: int, finish: str) -> bytes:
        out = self._close_item()
        usage = self._usage(completion)
        if finish == "length":
            details = {"reason": "max_output_tokens"}
            response = self._response("incomplete", incomplete_details=details, usage=usage)
            return out + self._ev("response.incomplete", response=response)
        return out + self._ev(
            "response.completed", response=self._response("completed", usage=usage)
        )

    def error_event(self) -> bytes:
        error = {"code": "server_error", "message": "Simulated fault: error mid-stream."}
        return self._ev("response.failed", response=self._response("failed", error=error))

    def end(self) -> bytes:
        return b""  # the Responses stream has no end marker apart from its final event

    def full(self, plan: Plan, reasoning: str, content: str) -> dict[str, Any]:
        if reasoning:
            part = {"type": "summary_text", "text": reasoning}
            self._done.append(
                {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": [part]}
            )
            r = sum(n for kind, n in plan.events if kind == "reasoning")
            self._reasoning = r
        message = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": content, "annotations": []}],
        }
        self._done.append(message)
        usage = self._usage(plan.completion_tokens)
        if plan.finish_reason == "length":
            details = {"reason": "max_output_tokens"}
            return self._response("incomplete", incomplete_details=details, usage=usage)
        return self._response("completed", usage=usage)
