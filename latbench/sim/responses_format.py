"""OpenAI's Responses API as the simulator speaks it: its request body and its stream.

The stream is `response.created` and `response.in_progress`, then one output item per run of
reasoning (a `reasoning` item with a summary) or content (a `message` item with `output_text`)
events, each opened and closed with its `added`/`done` events, then `response.completed` (or
`response.incomplete` at the token limit). Every event carries a `sequence_number`. Event shapes
follow OpenAI's documentation: https://platform.openai.com/docs/api-reference/responses-streaming.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from latbench.sim.formats import TOOL_NAME, ApiError, named_event
from latbench.sim.prompt import Prompt, name_of, object_of, text_of

if TYPE_CHECKING:
    from latbench.sim.engine import Plan
    from latbench.sim.request import GenRequest


def responses_prompt(body: dict[str, Any], prompt: Prompt) -> None:
    """Read a Responses API body into `prompt` (prompt.py): tools, instructions, then the input
    items: messages (text and `input_image` parts), `function_call` and `function_call_output`."""
    _tools(body.get("tools"), prompt)
    items = body.get("input")
    if items is None:
        raise ApiError(400, "Missing required parameter: 'input'.", "input")
    instructions = body.get("instructions")
    if instructions is not None:
        _content(instructions, "instructions", prompt)
    if isinstance(items, str):
        prompt.user_turn()
        prompt.words(items)
        return
    if not isinstance(items, list) or not items:
        raise ApiError(400, "input must be a string or a non-empty list of items", "input")
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{at} must be an object", "input")
        kind = item.get("type", "message")
        if kind == "function_call":
            text_of(item.get("call_id"), f"{at}.call_id")
            prompt.words(name_of(item.get("name"), f"{at}.name"))
            prompt.words(text_of(item.get("arguments"), f"{at}.arguments"))
        elif kind == "function_call_output":
            text_of(item.get("call_id"), f"{at}.call_id")
            prompt.words(text_of(item.get("output"), f"{at}.output"))
            prompt.tool_result()
        else:
            if item.get("role") == "user":
                prompt.user_turn()
            _content(item.get("content", ""), f"{at}.content", prompt)


def _content(value: object, where: str, prompt: Prompt) -> None:
    if isinstance(value, str):
        prompt.words(value)
        return
    if not isinstance(value, list):
        raise ApiError(400, f"{where}: must be a string or a list of content parts", where)
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ApiError(400, f"{at}: each content part must be an object", at)
        if part.get("type") == "input_image":
            prompt.data_url(part.get("image_url"), f"{at}.image_url")
        elif isinstance(part.get("text"), str):
            prompt.words(part["text"])


def _tools(tools: object, prompt: Prompt) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be a list", "tools")
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ApiError(
                400,
                f'{at} must be an object with "type": "function" (the simulator calls '
                "function tools only)",
                at,
            )
        name = name_of(tool.get("name"), f"{at}.name")
        schema = tool.get("parameters")
        if schema is not None:
            object_of(schema, f"{at}.parameters")
        prompt.tool(name, tool.get("description"), schema)


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
        if kind == "tool_call":
            # The name went out in the item's opening; an empty first piece sends nothing more.
            if not text:
                return out
            return out + self._ev(
                "response.function_call_arguments.delta",
                item_id=self._item["id"],
                output_index=index,
                delta=text,
            )
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
        if kind == "tool_call":
            self._item = _call_item("in_progress", "", self._req.tool_name)
            return self._ev("response.output_item.added", output_index=index, item=self._item)
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
        if self._kind == "tool_call":
            args = text or "{}"
            item = {**self._item, "status": "completed", "arguments": args}
            out = self._ev(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=args,
            )
        elif self._kind == "reasoning":
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

    def full(
        self, plan: Plan, reasoning: str, content: str, tool_args: str | None
    ) -> dict[str, Any]:
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
        if tool_args is not None:
            self._done.append(_call_item("completed", tool_args, self._req.tool_name))
        usage = self._usage(plan.completion_tokens)
        if plan.finish_reason == "length":
            details = {"reason": "max_output_tokens"}
            return self._response("incomplete", incomplete_details=details, usage=usage)
        return self._response("completed", usage=usage)


def _call_item(status: str, arguments: str, name: str | None) -> dict[str, Any]:
    """A function_call output item: the tool the request offered, else the simulator's own."""
    return {
        "id": f"fc_{uuid.uuid4().hex}",
        "type": "function_call",
        "status": status,
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": name or TOOL_NAME,
        "arguments": arguments,
    }
