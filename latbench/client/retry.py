"""Refusals for load (429, 529, 503 with Retry-After) and the opt-in policy for retrying them.

Pure functions, so each rule can be tested without a server: how a refusal is classified, how
long the server asked us to wait, whether and when to retry, and how the attempts of one request
fold into one record. The loop that sleeps and resends lives with the streaming client.

Retries never hide latency: the folded record keeps the first attempt's `t_sent`, so TTFT, E2E
and the rest count every refusal and every wait; see docs/metrics.md, "Retried requests".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time

from latbench.records.record import Record
from latbench.shared.errors import ErrorKind

RETRYABLE = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_retries` 0 turns retries off (the default). Without a Retry-After the n-th retry
    waits `backoff * 2**(n-1)`; no wait may exceed `max_wait`: a server that asks for longer
    (a spent quota, say) gets no retry, and the refusal is the record's outcome."""

    max_retries: int = 0
    backoff: float = 1.0
    max_wait: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `retry` (from 1); None: do not retry."""
        if retry > self.max_retries:
            return None
        wait = retry_after if retry_after is not None else self.backoff * 2 ** (retry - 1)
        return wait if wait <= self.max_wait else None


NO_RETRY = RetryPolicy()


def status_kind(status: int, retry_after: float | None) -> ErrorKind:
    """The error kind of a non-2xx status. 503 alone is any unavailability (a proxy without a
    backend, say); with Retry-After it is the server shedding load, like Anthropic's 529. A 3xx
    is a redirect, never followed (nor retried): the target is not where the spec says."""
    if 300 <= status < 400:
        return ErrorKind.REDIRECTED
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status == 529 or (status == 503 and retry_after is not None):
        return ErrorKind.OVERLOADED
    return ErrorKind.HTTP_STATUS


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a refusal asks for: OpenAI's `retry-after-ms`, else `Retry-After` as seconds or
    an HTTP date. None when absent or unreadable; never negative."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            value = parsedate_to_datetime(raw).timestamp() - time()
        except (TypeError, ValueError, IndexError):
            return None
    return max(value, 0.0) if math.isfinite(value) else None


def should_retry(rec: Record) -> bool:
    """Only a refusal that produced no token: once output has streamed, a new attempt would be a
    different generation, not the same request served late."""
    return rec.error in RETRYABLE and not rec.ev_t


def fold(first: Record, last: Record, attempts: int) -> Record:
    """One request's record from its first and last attempts. With one attempt `last` is that
    attempt, possibly with its outcome replaced (cancelled while waiting to retry)."""
    if attempts == 1:
        return last
    return dataclasses.replace(
        last,
        t_sent=first.t_sent,
        sent_late=first.sent_late,  # the bound of that t_sent
        attempts=attempts,
        first_status=first.status,
        first_error=first.error,
        t_first_end=first.t_end,
        t_last_sent=last.t_sent,
    )
