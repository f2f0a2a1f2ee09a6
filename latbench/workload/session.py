"""Multi-turn sessions: what a conversation's turns ask for, before any reply is known.

A single-request workload maps a request index n to a `WorkItem`. A session cannot: turn k's
request carries the conversation so far, and the replies in it are the ones the server actually
sent, known only at run time. So a session workload maps a session index s to a `SessionPlan`
(its turns' new user messages, output lengths and think times, drawn deterministically from
(seed, s)), and the worker that runs the session (load/worker.py) builds each turn's request
from the plan and the replies it has read: `Conversation` holds a running session's history and
says what its next request is (`conversation_item`) and how long to wait for it.

Messages are in the Chat Completions format, the neutral form the API kinds convert from
(workload/item.py). A tool-calling session (`SessionPlan.tools`) answers each tool call in a
reply with `tool_result` after `tool_latency_s`, then sends the next request with no new user
message, up to `max_tool_steps` such steps per user turn: the agent loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from latbench.workload.item import WorkItem

MAX_WAIT_S = 86_400.0  # a drawn think time or tool latency is clamped to a day


def wait_seconds(x: float) -> float:
    """A drawn wait (think time, tool latency) as a session waits it: 0 to a day, and a day for
    a draw that is not finite (a heavy-tailed distribution can overflow)."""
    return min(MAX_WAIT_S, max(0.0, x)) if math.isfinite(x) else MAX_WAIT_S


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
    """A session's turns and what every request of it carries besides them.

    `tool_latency_s` is how long the client's tool takes before its result is sent: one figure
    for every step, or one per tool step of the session in order (the last repeated past the
    end), so an agent workload can draw each step's latency from (seed, s) ahead of time and
    the loop stays deterministic. `system_tokens` is the system prompt's length when it was
    built to one (target tokens), so each turn can state the length it asks for."""

    turns: tuple[Turn, ...]
    system: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_latency_s: float | tuple[float, ...] = 0.0
    tool_result: str = ""
    max_tool_steps: int = 0
    system_tokens: int | None = None

    def tool_latency(self, step: int) -> float:
        """The latency of the session's `step`th tool step (0, 1, ...), in seconds."""
        lat = self.tool_latency_s
        if isinstance(lat, tuple):
            return lat[min(step, len(lat) - 1)] if lat else 0.0
        return lat


@runtime_checkable
class SessionWorkload(Protocol):
    def session(self, s: int) -> SessionPlan:
        """Session s's plan; the same for the same (seed, s)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description, stored in results files."""
        ...


class FixedSessions:
    """Session workload of given plans: session s is plan s, cycling past the end (hand-built
    sessions, for tests and for callers that plan their own)."""

    def __init__(self, plans: tuple[SessionPlan, ...] | list[SessionPlan]) -> None:
        if not plans:
            raise ValueError("FixedSessions needs at least one plan")
        self.plans = tuple(plans)

    def session(self, s: int) -> SessionPlan:
        return self.plans[s % len(self.plans)]

    def describe(self) -> dict[str, Any]:
        return {"kind": "fixed_sessions", "sessions": len(self.plans)}


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


def text_of(content: object) -> str:
    """A neutral message's text: its string content, or its parts of type "text" joined by
    newlines (images and any other part left out). The one reading of a message's text: the
    completions prompt (`flatten`) and the API kinds that take text apart (client/apis/convert.py)
    use it."""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        return "\n".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def flatten(messages: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> str:
    """The conversation's text as one prompt, for completions APIs (images and tool calls are
    left out: a completions API takes neither)."""
    return "\n".join(text_of(m.get("content")) for m in messages)


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


class Conversation:
    """One session as it runs: the history it resends (with the replies actually received) and
    what its next request is. The worker (load/worker.py) asks `item()` for each request and
    hands `replied()` what came back, which says how long to wait before the next one (the
    user's think time, or the tool's latency) or that the session is over.

    Each request states the prompt length it asks for (`WorkItem.prompt_tokens`) while every
    part asks one: the system prompt's and each user message's asked lengths plus each reply's
    `usage.completion_tokens`. That sum is the server's count only where lengths add across
    messages (a word a token, as the simulator counts); a workload counted in a real tokenizer's
    tokens asks a length for its first turn only (workload/sessions.py), which ends the sum.
    After a tool step it is unknown (the tool calls' and results' lengths are not counted)."""

    def __init__(self, plan: SessionPlan, session: int) -> None:
        if not plan.turns:
            raise ValueError(f"session {session} has no turns")
        self.plan = plan
        self.session = session
        self.history: list[dict[str, Any]] = []
        self.turn = 0  # the next request's index in the session; tool steps count
        self._user = 0  # the plan's next user turn
        self._steps = 0  # tool steps answered since the last user message
        self._tool_steps = 0  # in the whole session: which of the plan's latencies comes next
        self._answering = False  # the next request answers tool calls, with no user message
        self._max_tokens = plan.turns[0].max_tokens
        self._asked: int | None = 0 if plan.system is None else plan.system_tokens
        self._images = 0
        self._image_bytes = 0

    @property
    def answering(self) -> bool:
        """The next request answers tool calls (a tool step), with no new user message."""
        return self._answering

    @property
    def turns_left(self) -> int:
        """User turns of the plan not sent yet."""
        return len(self.plan.turns) - self._user

    def item(self) -> WorkItem:
        """The next request: the conversation so far plus a new user message, or plus the tool
        results it answers."""
        if not self._answering:
            t = self.plan.turns[self._user]
            self._user += 1
            self.history.append({"role": "user", "content": t.content})
            self._asked = _plus(self._asked, t.prompt_tokens)
            # A history resends every image it holds: the request carries them all.
            self._images += t.images
            self._image_bytes += t.image_bytes
            self._max_tokens = t.max_tokens
        item = conversation_item(
            self.history,
            self.plan,
            session=self.session,
            turn=self.turn,
            max_tokens=self._max_tokens,
            prompt_tokens=self._asked,
            images=self._images,
            image_bytes=self._image_bytes,
        )
        self.turn += 1
        return item

    def replied(self, reply: Reply, completion_tokens: int | None) -> float | None:
        """The last request's reply, into the history; the wait before the next request in
        seconds (counted from the reply's end), or None when the session is over."""
        plan = self.plan
        if reply.tool_calls and plan.tools and self._steps < plan.max_tool_steps:
            self.history.append(assistant_message(reply))
            self.history.extend(tool_messages(reply, plan.tool_result))
            wait = plan.tool_latency(self._tool_steps)
            self._steps += 1
            self._tool_steps += 1
            self._answering = True
            self._asked = None
            return wait
        # A tool call left unanswered is not resent: a chat API refuses an assistant's tool call
        # that no tool result follows.
        self.history.append(assistant_message(Reply(reply.text)))
        self._asked = None if reply.tool_calls else _plus(self._asked, completion_tokens)
        self._answering = False
        self._steps = 0
        if self._user >= len(plan.turns):
            return None
        return plan.turns[self._user].think_s


def _plus(total: int | None, part: int | None) -> int | None:
    return None if total is None or part is None else total + part
