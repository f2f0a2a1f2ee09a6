"""Multi-turn sessions: what a conversation's turns ask for, before any reply is known.

A single-request workload maps a request index n to a `WorkItem`. A session cannot: turn k's
request carries the conversation so far, and the replies in it are the ones the server actually
sent, known only at run time. So a session workload maps a session index s to a `SessionPlan`
(its turns' new user messages, output lengths and think times, drawn deterministically from
(seed, s)), and the worker that runs the session (load/worker.py) builds each turn's request
from the plan and the replies it has read, with `conversation_item`.

Messages are in the Chat Completions format, the neutral form the API kinds convert from
(workload/item.py). A tool-calling session (`SessionPlan.tools`) answers each tool call in a
reply with `tool_result` after `tool_latency_s`, then sends the next request with no new user
message, up to `max_tool_steps` such steps per user turn: the agent loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from latbench.workload.item import WorkItem


class ToolCall(NamedTuple):
    """One tool call read from a reply: its id (made up when the API sent none), the function's
    name and its arguments as the JSON text the model generated."""

    id: str
    name: str
    arguments: str


class Reply(NamedTuple):
    """What a response said, as the next turn must resend it: its answer text and tool calls
    (client/apis: `ApiKind.reply` reads them off the stream's event payloads)."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn: its new message (a string, or content parts with images), the output
    length it asks for, and how long the user thinks after the previous reply before sending
    it (0 for the first turn)."""

    content: str | tuple[dict[str, Any], ...]
    max_tokens: int
    think_s: float = 0.0
    prompt_tokens: int | None = None  # the new message's length, target tokens; None: not asked
    images: int = 0
    image_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """A session's turns and what every request of it carries besides them."""

    turns: tuple[Turn, ...]
    system: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_latency_s: float = 0.0
    tool_result: str = ""
    max_tool_steps: int = 0


@runtime_checkable
class SessionWorkload(Protocol):
    def session(self, s: int) -> SessionPlan:
        """Session s's plan; the same for the same (seed, s)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description, stored in results files."""
        ...


def assistant_message(reply: Reply) -> dict[str, Any]:
    """The reply as the assistant's message in the conversation resent next turn."""
    msg: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in reply.tool_calls
        ]
    return msg


def tool_messages(reply: Reply, result: str) -> list[dict[str, Any]]:
    """The canned answer to each of the reply's tool calls."""
    return [{"role": "tool", "tool_call_id": c.id, "content": result} for c in reply.tool_calls]


def flatten(messages: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """The conversation's text as one prompt, for completions APIs (images and tool calls are
    left out: a completions API takes neither)."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list | tuple):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return "\n".join(parts)


def conversation_item(
    history: list[dict[str, Any]],
    plan: SessionPlan,
    *,
    session: int,
    turn: int,
    max_tokens: int,
    prompt_tokens: int | None = None,
    images: int = 0,
    image_bytes: int = 0,
) -> WorkItem:
    """Turn `turn`'s request: the system prompt, then the conversation so far (`history`, which
    ends with the new user message or the tool results being answered)."""
    messages: tuple[dict[str, Any], ...] = tuple(history)
    if plan.system is not None:
        messages = ({"role": "system", "content": plan.system}, *messages)
    return WorkItem(
        prompt=flatten(messages),
        messages=messages,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        tools=plan.tools,
        session=session,
        turn=turn,
        images=images,
        image_bytes=image_bytes,
    )
