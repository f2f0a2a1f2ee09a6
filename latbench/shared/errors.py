"""Errors, in one tree.

    LatbenchError                 anything latbench raises on purpose
    ├── SpecError                 the run spec (file, flags or API body) is invalid
    ├── TargetError               the target cannot be benchmarked at all (unreachable, no model)
    └── RecordsError              a records file cannot be read

Per-request failures are not exceptions that escape a run: they become an `ErrorKind` in the
request's record, next to whatever that request had measured.
"""

from __future__ import annotations

from enum import StrEnum


class LatbenchError(Exception):
    """Base of every error latbench raises on purpose."""


class SpecError(LatbenchError):
    """The run spec is invalid; the message names the field and what is allowed."""


class TargetError(LatbenchError):
    """The target cannot be benchmarked (unreachable, wrong URL, unknown model)."""


class RecordsError(LatbenchError):
    """A records file is unreadable or of an unknown schema."""


class ErrorKind(StrEnum):
    """Why a request failed (METRICS.md, Errors). Stored in the record as its string value."""

    HTTP_STATUS = "http_status"  # non-2xx; the record's status holds the code
    # Turned away for load, a kind of its own so retries and capacity limits are counted apart:
    RATE_LIMITED = "rate_limited"  # HTTP 429, or a rate-limit error event inside the stream
    OVERLOADED = "overloaded"  # HTTP 529, 503 with Retry-After, or an overloaded error event
    CONNECT_REFUSED = "connect_refused"
    CONNECT_ERROR = "connect_error"  # DNS, TLS, unreachable host
    CONNECTION_RESET = "connection_reset"  # reset or closed by the peer after connecting
    TIMEOUT_CONNECT = "timeout_connect"
    TIMEOUT_FIRST_TOKEN = "timeout_first_token"
    TIMEOUT_IDLE = "timeout_idle"  # too long between two events after the first token
    TIMEOUT_TOTAL = "timeout_total"
    MALFORMED_STREAM = "malformed_stream"  # not SSE, or an event that is not the API's JSON
    # A line or event over the parser's cap (target.stream_limits): read no further.
    OVERSIZED_EVENT = "oversized_event"
    REDIRECTED = "redirected"  # a 3xx: never followed (secrets stay with the target); detail: where
    STREAM_TRUNCATED = "stream_truncated"  # the stream ended before its end marker
    SERVER_ERROR_EVENT = "server_error_event"  # the server sent an error inside the stream
    CANCELLED = "cancelled"  # the run was stopped or aborted while the request was in flight
    # Still in flight `load.overtime` after the duration ended: cut by latbench, but a failure of
    # the server to finish in time, so it counts in the failed share (cancelled does not).
    OVERTIME = "overtime"
    LOST = "lost"  # the worker process sending it died; nothing after t_sent is known
    CLIENT_ERROR = "client_error"  # a failure inside latbench itself; the detail says which
