"""vLLM's wire format (OpenAI-compatible completions and chat chunks), as the simulator sends it.

SSE framed exactly as vLLM frames it: `data: <json>\\n\\n` ..., then `data: [DONE]\\n\\n`.
The other APIs' encoders are in anthropic_format.py and responses_format.py; all meet the `Encoder`
interface in formats.py.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from latbench.sim.formats import TOOL_NAME
from latbench.sim.replies import error_type

if TYPE_CHECKING:
    from latbench.sim.engine import Plan
    from latbench.sim.request import GenRequest

_DONE = b"data: [DONE]\n\n"


class Chunks:
    """Builds one request's SSE events and JSON bodies, shaped like vLLM's (an `Encoder`)."""

    __slots__ = ("_call_id", "_chat", "_head", "_prompt", "_req", "_started")

    def __init__(self, req: GenRequest) -> None:
        self._req = req
        self._started = False
        self._call_id: str | None = None  # the tool call's, once it has begun
        self._chat = req.api == "chat"
        self._prompt = req.prompt_tokens
        kind = ("chatcmpl", "chat.completion.chunk") if self._chat else ("cmpl", "text_completion")
        self._head = {
            "id": f"{kind[0]}-{uuid.uuid4().hex}",
            "object": kind[1],
            "created": int(time.time()),
            "model": req.model,
        }

    def usage(self, completion: int) -> dict[str, int]:
        p = self._prompt
        return {"prompt_tokens": p, "total_tokens": p + completion, "completion_tokens": completion}

    def role(self) -> bytes:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._event(choice, 0)

    def token(self, kind: str, text: str, finish: str | None, completion: int) -> bytes:
        if self._chat:
            if kind == "tool_call":
                delta = self._tool_call(text)
            else:
                delta = {"reasoning_content": text} if kind == "reasoning" else {"content": text}
            if finish == "stop" and self._call_id is not None:
                finish = "tool_calls"
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        return self._event(choice, completion)

    def _tool_call(self, text: str) -> dict[str, Any]:
        """A tool_calls delta: the call's id, type and name first (as OpenAI's, with empty
        arguments), then pieces of its arguments."""
        if self._call_id is None:
            self._call_id = f"chatcmpl-tool-{uuid.uuid4().hex}"
            call: dict[str, Any] = {
                "id": self._call_id,
                "type": "function",
                "index": 0,
                "function": {"name": self._req.tool_name or TOOL_NAME, "arguments": text},
            }
        else:
            call = {"index": 0, "function": {"arguments": text}}
        return {"tool_calls": [call]}

    def final_usage(self, completion: int) -> bytes:
        return _sse({**self._head, "choices": [], "usage": self.usage(completion)})

    # The Encoder interface (latbench.sim.formats).
    def opening(self) -> bytes:
        return b""  # vLLM sends nothing before the first token

    def token_event(self, kind: str, text: str, finish: str | None, completion: int) -> bytes:
        data = self.token(kind, text, finish, completion)
        if self._chat and not self._started:
            data = self.role() + data  # one write: both leave in the same segment
        self._started = True
        return data

    def closing(self, completion: int, finish: str) -> bytes:
        usage = self.final_usage(completion) if self._req.include_usage else b""
        return usage + _DONE

    def error_event(self) -> bytes:
        error = {"message": "Simulated fault: error mid-stream.", "type": error_type(500)}
        return _sse({"error": {**error, "code": 500}}) + _DONE

    def end(self) -> bytes:
        return _DONE

    def _event(self, choice: dict[str, Any], completion: int) -> bytes:
        obj: dict[str, Any] = {**self._head, "choices": [choice]}
        if self._req.continuous_usage:
            obj["usage"] = self.usage(completion)
        elif not self._chat:
            obj["usage"] = None
        return _sse(obj)

    def full(
        self, plan: Plan, reasoning: str, content: str, tool_args: str | None
    ) -> dict[str, Any]:
        head = {**self._head, "object": "chat.completion" if self._chat else "text_completion"}
        finish: str = plan.finish_reason
        if self._chat:
            calls = []
            if tool_args is not None:
                function = {"name": self._req.tool_name or TOOL_NAME, "arguments": tool_args}
                calls = [
                    {
                        "id": f"chatcmpl-tool-{uuid.uuid4().hex}",
                        "type": "function",
                        "function": function,
                    }
                ]
                finish = "tool_calls" if finish == "stop" else finish
            message = {
                "role": "assistant",
                "content": content,
                "reasoning_content": reasoning or None,
                "tool_calls": calls,
            }
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": content}
        choice.update(logprobs=None, finish_reason=finish, stop_reason=None)
        return {**head, "choices": [choice], "usage": self.usage(plan.completion_tokens)}


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"
