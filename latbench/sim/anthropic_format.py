"""Anthropic's Messages API as the simulator speaks it: its request body, errors, model list and
stream.

The stream is `message_start` and a `ping`, then one content block per run of reasoning
(`thinking`, closed by a `signature_delta`) or content (`text`) events, then `message_delta` with
the stop reason and usage, and `message_stop`. Event shapes follow Anthropic's documentation:
https://docs.anthropic.com/en/docs/build-with-claude/streaming.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from latbench.sim.formats import TOOL_NAME, ApiError, named_event
from latbench.sim.prompt import Prompt, name_of, object_of, text_of

if TYPE_CHECKING:
    from latbench.sim.engine import Plan
    from latbench.sim.request import GenRequest

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_SIGNATURE = "c2ltdWxhdGVkIHNpZ25hdHVyZQ=="  # base64, as real signatures are; meaningless here


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    etype = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


def anthropic_models(model: str, created: int) -> dict[str, Any]:
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    entry = {"type": "model", "id": model, "display_name": model, "created_at": iso}
    return {"data": [entry], "has_more": False, "first_id": model, "last_id": model}


def anthropic_prompt(body: dict[str, Any], prompt: Prompt) -> None:
    """Read a Messages API body into `prompt` (prompt.py): tools, system, then the messages'
    text, images (`image` blocks with a base64 source), `tool_use` and `tool_result` blocks."""
    _tools(body.get("tools"), prompt)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: Field required, a non-empty list", "messages")
    if body.get("system") is not None:
        _content(body["system"], "system", prompt)
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
        _content(m.get("content"), f"messages.{i}.content", prompt, role)


def _content(value: object, where: str, prompt: Prompt, role: str | None = None) -> None:
    """Blocks of a message (`role`), of `system` or of a tool result (None). In a user message,
    tool results answer the last call and anything else is the user's turn: results count from
    the last such block, as an agent sends them (results first, then any new text)."""
    if isinstance(value, str):
        if role == "user":
            prompt.user_turn()
        prompt.words(value)
        return
    if not isinstance(value, list):
        raise ApiError(400, f"{where}: must be a string or a list of content blocks", where)
    for j, block in enumerate(value):
        at = f"{where}.{j}"
        if not isinstance(block, dict):
            raise ApiError(400, f"{at}: each content block must be an object", at)
        kind = block.get("type")
        if role == "user" and kind != "tool_result":
            prompt.user_turn()
        if kind == "image":
            source = object_of(block.get("source"), f"{at}.source")
            if source.get("type") != "base64":
                raise ApiError(
                    400,
                    f"{at}.source.type: the simulator takes base64 images only, got "
                    f"{source.get('type')!r}; it fetches no URLs",
                    f"{at}.source.type",
                )
            prompt.image(source.get("media_type"), source.get("data"), f"{at}.source")
        elif kind == "tool_use":
            if role != "assistant":
                raise ApiError(400, f"{at}: tool_use blocks belong to assistant messages", at)
            text_of(block.get("id"), f"{at}.id")
            prompt.words(name_of(block.get("name"), f"{at}.name"))
            prompt.json_words(object_of(block.get("input"), f"{at}.input"))
        elif kind == "tool_result":
            if role != "user":
                raise ApiError(400, f"{at}: tool_result blocks belong to user messages", at)
            text_of(block.get("tool_use_id"), f"{at}.tool_use_id")
            if block.get("content") is not None:
                _content(block["content"], f"{at}.content", prompt)
            prompt.tool_result()
        elif isinstance(block.get("text"), str):
            prompt.words(block["text"])


def _tools(tools: object, prompt: Prompt) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise ApiError(400, "tools: Input should be a valid list", "tools")
    for i, tool in enumerate(tools):
        at = f"tools.{i}"
        tool = object_of(tool, at)
        name = name_of(tool.get("name"), f"{at}.name")
        schema = object_of(tool.get("input_schema"), f"{at}.input_schema")
        prompt.tool(name, tool.get("description"), schema)


def _anthropic_stop(finish: str, tool_call: bool = False) -> str:
    if finish == "length":
        return "max_tokens"
    return "tool_use" if tool_call else "end_turn"


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
            block: dict[str, Any] = (
                {"type": "thinking", "thinking": ""} if thinking else {"type": "text", "text": ""}
            )
            if kind == "tool_call":
                # The name comes in the block's start, the arguments in input_json_delta events.
                block = {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": self._req.tool_name or TOOL_NAME,
                    "input": {},
                }
            start = {"type": "content_block_start", "index": self._block, "content_block": block}
            out += named_event("content_block_start", start)
        if kind == "tool_call":
            if not text:
                return out
            piece = {"type": "input_json_delta", "partial_json": text}
            body = {"type": "content_block_delta", "index": self._block, "delta": piece}
            return out + named_event("content_block_delta", body)
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
            "delta": {
                "stop_reason": _anthropic_stop(finish, self._kind == "tool_call"),
                "stop_sequence": None,
            },
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

    def full(
        self, plan: Plan, reasoning: str, content: str, tool_args: str | None
    ) -> dict[str, Any]:
        blocks: list[dict[str, Any]] = []
        if reasoning:
            blocks.append({"type": "thinking", "thinking": reasoning, "signature": _SIGNATURE})
        blocks.append({"type": "text", "text": content})
        if tool_args is not None:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": self._req.tool_name or TOOL_NAME,
                    "input": orjson.loads(tool_args),
                }
            )
        stop = _anthropic_stop(plan.finish_reason, tool_args is not None)
        return self._message(blocks, stop, plan.completion_tokens)
