"""What the simulator's wire formats share: the personalities, the refusal, the encoder interface.

A *personality* (`SimConfig.api`) decides what the server is: `openai` (vLLM's
`/v1/completions` and `/v1/chat/completions`), `anthropic` (`/v1/messages`, Anthropic's model list,
`x-api-key` and `anthropic-version` headers) or `responses` (`/v1/responses`).

Each format has an encoder, one per request, that turns the engine's token events into that
format's SSE bytes: `opening()` right after the headers, `token_event(...)` once per token event
(block and item boundaries ride in the same write as the token that crosses them, as the role
chunk does for vLLM), `closing(...)` at a normal end, `error_event()` for a mid-stream failure,
`end()` for the bare end marker, `full(...)` for a non-streamed body. The encoders live one format
a module: vllm_format.py, anthropic_format.py and responses_format.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

if TYPE_CHECKING:
    from latbench.sim.engine import Plan

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
# The tool a response calls when its request offers none (SimConfig.tool_call_tokens).
TOOL_NAME = "lookup"


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

    def full(
        self, plan: Plan, reasoning: str, content: str, tool_args: str | None
    ) -> dict[str, Any]: ...


def named_event(name: str, obj: dict[str, Any]) -> bytes:
    """Anthropic's and the Responses API's streams name each SSE event after its JSON `type`."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
