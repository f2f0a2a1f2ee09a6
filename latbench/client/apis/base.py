"""What an API kind is: how to build a request body, and how to read one stream event.

Each kind is a small object with no hidden state: `parse` returns everything the shared streaming
loop needs to know about one event, and the loop does the timing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from latbench.records.record import CONTENT, REASONING, TOOL_CALL
from latbench.shared.errors import ErrorKind
from latbench.workload import WorkItem
from latbench.workload.session import Reply


class MalformedEvent(Exception):
    """An event that is not the API's JSON; the message says what was wrong."""


class Event(NamedTuple):
    # 'r' (reasoning), 'c' (content) or 't' (tool call) when the event carries generated text,
    # else None.
    kind: str | None = None
    # Cumulative usage, when the event reports it.
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False  # the stream's end marker
    error: str | None = None  # the server reported an error inside the stream
    # A usage-only event (no choice): its usage is the request's total, not a per-event delta.
    usage_only: bool = False
    # How to classify `error` when the API says more than "an error" (rate limit, overload).
    error_kind: ErrorKind = ErrorKind.SERVER_ERROR_EVENT


NOTHING = Event()
# The events of the typed streams (Anthropic's, Responses'), made once: they come per token.
CONTENT_EVENT = Event(CONTENT)
REASONING_EVENT = Event(REASONING)
TOOL_CALL_EVENT = Event(TOOL_CALL)

# Token counts above this are no count any server makes, and past it a float (as JSON numbers
# often become) no longer holds every integer.
MAX_COUNT = 2**53
MAX_REASON = 200  # characters of a finish reason; real ones are a word or two


def count(value: object, field: str) -> int | None:
    """A usage count as the record may hold it: an int (not a bool) in [0, 2**53], or absent.
    Anything else would crash the runner's integer arrays or poison the totals downstream.
    Parsers on the per-event path test `type(v) is int and 0 <= v <= MAX_COUNT` inline and call
    this only for the error: the call was ~8% of a chat event's parse."""
    if value is None or (type(value) is int and 0 <= value <= MAX_COUNT):
        return value
    if type(value) is int and value > MAX_COUNT:
        raise MalformedEvent(f"{field} is {value}, over 2**53")
    raise MalformedEvent(f"{field} is {_show(value)}, not a non-negative integer")


def reason(value: object, field: str) -> str | None:
    """A finish reason: a short string, or absent. The record keeps it and the summary counts
    runs by it, so an object or a megabyte of text is refused here."""
    if value is None or (type(value) is str and len(value) <= MAX_REASON):
        return value
    if type(value) is str:
        raise MalformedEvent(f"{field} is a string of {len(value):,} characters")
    raise MalformedEvent(f"{field} is {_show(value)}, not a string")


def load_object(data: bytes) -> dict[str, Any]:
    """An event's JSON object; anything else is a MalformedEvent quoting its start."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise MalformedEvent(f"event is not JSON ({e}): {data[:120]!r}") from None
    if not isinstance(obj, dict):
        raise MalformedEvent(f"event is not a JSON object: {data[:120]!r}")
    return obj


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class RequestOptions(NamedTuple):
    model: str
    # vLLM/SGLang extensions (ignore_eos, min_tokens, continuous usage): servers that reject unknown
    # fields (OpenAI itself) get none of them.
    vllm_extensions: bool
    ignore_eos: bool
    extra_body: dict[str, Any]


def finish_body(body: dict[str, Any], item: WorkItem, opts: RequestOptions) -> dict[str, Any]:
    """The end of every kind's body: vLLM's sampling extensions where the server takes them
    (Anthropic and OpenAI get none), so that each request generates exactly max_tokens; then the
    spec's extra_body, last, over everything. vLLM 0.32's /v1/responses reads `ignore_eos`; its
    /v1/messages drops both fields unread, so there the model stops when it likes and the
    summary's requested-vs-received says so (tests/e2e/test_vllm_apis.py)."""
    if opts.vllm_extensions and opts.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = item.max_tokens
    body.update(opts.extra_body)
    return body


class ApiKind(Protocol):
    name: str
    path: str

    def body(self, item: WorkItem, opts: RequestOptions) -> dict[str, Any]: ...

    def parse(self, data: bytes) -> Event: ...

    def reply(self, payloads: Sequence[bytes]) -> Reply:
        """What the response said (its answer text and tool calls), from its event payloads as
        the stream delivered them: for the next turn of a session, never on the timed path."""
        ...
