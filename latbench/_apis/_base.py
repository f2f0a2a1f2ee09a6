"""What an API kind is: how to build a request body, and how to read one stream event.

Each kind is a small object with no hidden state: `parse` returns everything the shared streaming
loop needs to know about one event, and the loop does the timing.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from latbench._errors import ErrorKind
from latbench._workload import WorkItem


class MalformedEvent(Exception):
    """An event that is not the API's JSON; the message says what was wrong."""


class Event(NamedTuple):
    # 'r' (reasoning) or 'c' (content) when the event carries generated text, else None.
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


class RequestOptions(NamedTuple):
    model: str
    # vLLM/SGLang extensions (ignore_eos, min_tokens, continuous usage): servers that reject unknown
    # fields (OpenAI itself) get none of them.
    vllm_extensions: bool
    ignore_eos: bool
    extra_body: dict[str, Any]


class ApiKind(Protocol):
    name: str
    path: str

    def body(self, item: WorkItem, opts: RequestOptions) -> dict[str, Any]: ...

    def parse(self, data: bytes) -> Event: ...
