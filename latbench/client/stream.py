"""One streaming request in, one record out.

The loop only timestamps and splits: each piece of bytes is stamped with the time of the socket
read that brought it (client/reads.py), the SSE parser cuts it into event payloads, and the API
kind decodes each payload once. Every failure becomes an `ErrorKind` on the record, which keeps
whatever had been measured before it.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass, replace
from time import monotonic_ns
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

from latbench.client.apis import ApiKind, MalformedEvent, RequestOptions
from latbench.client.reads import BodyFramingError, ReadClock, framing_detail
from latbench.client.retry import (
    NO_RETRY,
    RetryPolicy,
    fold,
    retry_after_s,
    should_retry,
    status_kind,
)
from latbench.client.sse import MAX_EVENT_BYTES, MAX_LINE_BYTES, OversizedEvent, SSEParser
from latbench.records.record import Phase, Record
from latbench.shared.errors import ErrorKind
from latbench.workload.workload import WorkItem

ERROR_BODY_LIMIT = 2048
BODY_SHOWN = 120  # bytes of a body that is not an event stream, shown in the detail
# How long the start of a body that brings no token (an error, an HTML page) is waited for: a
# server that stalls there must not turn the record into a first-token timeout.
BODY_WAIT_S = 0.5
LOCATION_SHOWN = 300  # characters of a redirect's Location named in an error
DETAIL_LIMIT = 1000  # characters of an error detail kept in a record (a server writes them)
EVENT_STREAM = "text/event-stream"
IDLE_SLACK = 1 / 64  # how late (a fraction of it) the idle timeout may fire; see the loop


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. `idle` is the longest gap allowed between two events after the first token."""

    connect: float = 10.0
    first_token: float = 60.0
    idle: float = 30.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bytes the SSE parser may hold for one response (target.stream_limits): past either cap the
    request ends as `oversized_event`."""

    max_line_bytes: int = MAX_LINE_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES


JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Everything fixed for one run's requests: where, how, and with which options."""

    base_url: str
    api: ApiKind
    options: RequestOptions
    headers: dict[str, str]
    timeouts: Timeouts
    retry: RetryPolicy = NO_RETRY
    limits: StreamLimits = StreamLimits()

    def __post_init__(self) -> None:
        # The body goes out as pre-encoded bytes, which aiohttp would label
        # application/octet-stream; vLLM (0.32 and later) refuses that with a 400.
        if not any(k.lower() == "content-type" for k in self.headers):
            object.__setattr__(self, "headers", {**self.headers, "Content-Type": JSON})

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.api.path


class _Deadline:
    """Which timeout is armed, so that a TimeoutError can be named."""

    __slots__ = ("kind",)

    def __init__(self) -> None:
        self.kind = ErrorKind.TIMEOUT_FIRST_TOKEN


async def stream_request(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    item: WorkItem,
    *,
    run_id: str,
    seq: int,
    phase: Phase,
    t_intended: int,
) -> Record:
    if ep.retry.max_retries:
        return await _with_retries(
            session, ep, item, run_id=run_id, seq=seq, phase=phase, t_intended=t_intended
        )
    api = ep.api
    to = ep.timeouts
    parser = SSEParser(ep.limits.max_line_bytes, ep.limits.max_event_bytes)
    ev_t: list[int] = []
    ev_kind: list[str] = []
    ev_n: list[int] = []
    n_known = True  # every token event so far had a usage delta
    last_completion = 0
    usage_completion: int | None = None
    usage_prompt: int | None = None
    finish_reason: str | None = None
    t_headers: int | None = None
    status: int | None = None
    error: ErrorKind | None = None
    detail: str | None = None
    retry_after: float | None = None
    done = False

    loop = asyncio.get_running_loop()
    armed = _Deadline()
    armed_at = 0.0
    try:
        body = orjson.dumps(api.body(item, ep.options))
    except Exception as e:
        # Nothing can be sent, yet the request was due: a record, never a vanished user.
        detail = f"cannot build the request body: {type(e).__name__}: {e}"
        now = monotonic_ns()
        return Record.unanswered(
            run_id, seq, phase, api.name, t_intended, now, ErrorKind.CLIENT_ERROR,
            detail[:DETAIL_LIMIT], t_end=now, max_tokens=item.max_tokens,
        )  # fmt: skip
    t_sent = monotonic_ns()
    start = loop.time()
    total_at = start + to.total
    try:
        async with asyncio.timeout_at(min(start + to.first_token, total_at)) as cm:
            # A redirect is never followed: the secret headers would go with it to a server
            # the run was not pointed at, and what was measured would be that server.
            async with session.post(
                ep.url, data=body, headers=ep.headers, allow_redirects=False
            ) as resp:
                clock = ReadClock(resp)
                t_headers = clock.headers_ns if clock.headers_ns is not None else monotonic_ns()
                status = resp.status
                ctype = None if status >= 300 else _not_event_stream(resp)
                if (status >= 300 or ctype is not None) and not cm.expired():
                    # No token comes from this body: its short read (BODY_WAIT_S) is bounded
                    # on its own, not by the first-token deadline.
                    cm.reschedule(None)
                until = min(loop.time() + BODY_WAIT_S, total_at)
                if status >= 300:
                    retry_after = retry_after_s(resp.headers)
                    error = status_kind(status, retry_after)
                    if error is ErrorKind.REDIRECTED:
                        detail = _redirect_detail(resp)
                    else:
                        detail = await _error_body(resp, until)
                elif ctype is not None:
                    error = ErrorKind.MALFORMED_STREAM
                    detail = await _not_sse_detail(resp, ctype, until)
                else:
                    # One HTTP chunk at a time (as the server framed its events), not all that is
                    # buffered: a backlog then keeps each event's own read time.
                    async for piece, _ in resp.content.iter_chunks():
                        if not piece:
                            continue
                        now = clock.stamp(len(piece))
                        try:
                            datas = parser.feed(piece)
                            over = None
                        except OversizedEvent as e:
                            # The events completed before it in this piece still count.
                            datas, over = e.events, e
                        for data in datas:
                            ev = api.parse(data)
                            delta = 0
                            if ev.completion_tokens is not None:
                                if ev.completion_tokens < last_completion:
                                    raise MalformedEvent(
                                        "the cumulative completion token count went down, "
                                        f"from {last_completion} to {ev.completion_tokens}"
                                    )
                                usage_completion = ev.completion_tokens
                                delta = ev.completion_tokens - last_completion
                                last_completion = ev.completion_tokens
                            # Anthropic reports input usage first, output usage at the end.
                            if ev.prompt_tokens is not None:
                                usage_prompt = ev.prompt_tokens
                            # A token-bearing event has text, or a usage delta (vLLM can emit a
                            # token whose text is empty, yet count it).
                            if ev.kind is not None or (delta > 0 and not ev.usage_only):
                                ev_t.append(now)
                                ev_kind.append(ev.kind or "c")
                                if ev.completion_tokens is None:
                                    n_known = False
                                ev_n.append(delta)
                            if ev.finish_reason is not None:
                                finish_reason = ev.finish_reason
                            if ev.error is not None:
                                error, detail = ev.error_kind, ev.error
                                break
                            if ev.done:
                                done = True
                                break
                        if done or error is not None:
                            break
                        if over is not None:
                            error, detail = ErrorKind.OVERSIZED_EVENT, str(over)
                            break
                        if ev_t and armed.kind is not ErrorKind.TIMEOUT_TOTAL:
                            # Re-arming the timer on every read cost more than the rest of the
                            # read: arm it IDLE_SLACK of the idle timeout past the deadline, and
                            # again only once that slack is used up. It may fire that much
                            # late, never early.
                            idle_at = loop.time() + to.idle
                            if armed.kind is ErrorKind.TIMEOUT_FIRST_TOKEN or idle_at > armed_at:
                                armed_at = idle_at + to.idle * IDLE_SLACK
                                armed.kind = ErrorKind.TIMEOUT_IDLE
                                if armed_at >= total_at:
                                    armed_at, armed.kind = total_at, ErrorKind.TIMEOUT_TOTAL
                                cm.reschedule(armed_at)
                    # Closed without the end marker. A finish_reason means the generation itself
                    # ended and only the final [DONE] was lost: not an error.
                    if not done and error is None and finish_reason is None:
                        error = ErrorKind.STREAM_TRUNCATED
                        detail = "the stream closed before its end marker"
    except aiohttp.ConnectionTimeoutError:
        error, detail = ErrorKind.TIMEOUT_CONNECT, f"no connection within {to.connect:g} s"
    except TimeoutError:
        error = armed.kind if loop.time() < total_at - 1e-3 else ErrorKind.TIMEOUT_TOTAL
        detail = _timeout_detail(error, to)
    except MalformedEvent as e:
        error, detail = ErrorKind.MALFORMED_STREAM, str(e)
    except aiohttp.ClientConnectorError as e:
        refused = e.os_error.errno == errno.ECONNREFUSED if e.os_error else False
        error = ErrorKind.CONNECT_REFUSED if refused else ErrorKind.CONNECT_ERROR
        detail = str(e)
    except BodyFramingError as e:
        error, detail = ErrorKind.MALFORMED_STREAM, str(e)
    except aiohttp.ClientPayloadError as e:
        error, detail = ErrorKind.STREAM_TRUNCATED, str(e) or type(e).__name__
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError) as e:
        # However the peer went (a close or a reset), after the headers it cut a stream short.
        error = ErrorKind.STREAM_TRUNCATED if t_headers else ErrorKind.CONNECTION_RESET
        detail = str(e) or type(e).__name__
    except aiohttp.ClientResponseError as e:
        # Its message is the parser's: the reason, then the offending bytes on later lines.
        error, detail = ErrorKind.MALFORMED_STREAM, framing_detail(e.message, "bad HTTP response")
    except HttpProcessingError as e:
        # aiohttp's pure-Python parser raises its own framing errors into the body.
        error, detail = ErrorKind.MALFORMED_STREAM, framing_detail(e.message or repr(e))
    except asyncio.CancelledError:
        # The runner cancels in-flight requests only when the run is aborted; it wants the partial
        # record back rather than the exception.
        error, detail = ErrorKind.CANCELLED, "the run was stopped while this request was in flight"
    except Exception as e:
        error, detail = ErrorKind.CLIENT_ERROR, f"{type(e).__name__}: {e}"
    if detail is not None and len(detail) > DETAIL_LIMIT:
        detail = detail[: DETAIL_LIMIT - 3] + "..."
    t_end = monotonic_ns()

    return Record(
        run_id=run_id,
        seq=seq,
        phase=phase,
        api=api.name,
        t_intended=t_intended,
        t_sent=t_sent,
        t_headers=t_headers,
        t_end=t_end,
        ev_t=tuple(ev_t),
        ev_kind="".join(ev_kind),
        ev_n=tuple(ev_n) if n_known and ev_t else None,
        status=status,
        finish_reason=finish_reason,
        usage_prompt_tokens=usage_prompt,
        usage_completion_tokens=usage_completion,
        max_tokens=item.max_tokens,
        error=error,
        error_detail=detail,
        retry_after_s=retry_after,
    )


async def _with_retries(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    item: WorkItem,
    *,
    run_id: str,
    seq: int,
    phase: Phase,
    t_intended: int,
) -> Record:
    """Send, and resend refusals as `ep.retry` allows; one record with the first send's t_sent.

    No retry starts whose wait would end past the total timeout counted from the first send.
    """
    once = replace(ep, retry=NO_RETRY)
    policy = ep.retry

    async def attempt() -> Record:
        return await stream_request(
            session, once, item, run_id=run_id, seq=seq, phase=phase, t_intended=t_intended
        )

    first = last = await attempt()
    attempts = 1
    deadline = first.t_sent + int(ep.timeouts.total * 1e9)
    while should_retry(last):
        wait = policy.delay(attempts, last.retry_after_s)
        if wait is None or monotonic_ns() + wait * 1e9 >= deadline:
            break
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            # Aborted while waiting: the runner wants the record, as stream_request gives it.
            detail = f"the run was stopped while waiting to retry after: {last.error_detail}"
            last = replace(
                last, error=ErrorKind.CANCELLED, error_detail=detail, t_end=monotonic_ns()
            )
            break
        last = await attempt()
        attempts += 1
    return fold(first, last, attempts)


def location(resp: aiohttp.ClientResponse) -> str | None:
    """A redirect's Location as an error may name it: at most LOCATION_SHOWN characters (a
    server writes it)."""
    where = resp.headers.get("Location")
    if where is not None and len(where) > LOCATION_SHOWN:
        where = where[: LOCATION_SHOWN - 3] + "..."
    return where


def _redirect_detail(resp: aiohttp.ClientResponse) -> str:
    where = location(resp)
    if where is None:
        return f"HTTP {resp.status} redirect without a Location; not followed"
    return f"HTTP {resp.status} redirect to {where}; not followed"


def _not_event_stream(resp: aiohttp.ClientResponse) -> str | None:
    """The Content-Type of a 2xx that is not an event stream; None if it is one, or says nothing.

    vLLM, OpenAI, Anthropic and the simulator all send `text/event-stream` (with a charset or
    not). A missing Content-Type is let through: the SSE and API parsers still judge the body,
    and a server or proxy that streams correctly but omits the header should not be refused."""
    ctype = resp.headers.get("Content-Type")
    if ctype is None:
        return None
    if ctype.partition(";")[0].strip().lower() == EVENT_STREAM:
        return None
    return ctype


async def _body_start(resp: aiohttp.ClientResponse, limit: int, until: float) -> tuple[bytes, str]:
    """Up to `limit` bytes of a body that brings no token (what comes before `until`, loop time),
    and their text, decoded leniently. A body that stalls or breaks gives what it had: the record
    already says why the body was read at all."""
    raw = bytearray()
    try:
        async with asyncio.timeout_at(until):
            while len(raw) < limit and (piece := await resp.content.read(limit - len(raw))):
                raw += piece
    except (aiohttp.ClientError, HttpProcessingError, TimeoutError, OSError):
        pass
    return bytes(raw), raw.decode("utf-8", "replace").strip()


async def _not_sse_detail(resp: aiohttp.ClientResponse, ctype: str, until: float) -> str:
    _, shown = await _body_start(resp, BODY_SHOWN, until)
    head = f"not an event stream: HTTP {resp.status} with Content-Type {ctype[:100]!r}"
    return f"{head}, body starts {shown!r}" if shown else head


def _timeout_detail(kind: ErrorKind, to: Timeouts) -> str:
    return {
        ErrorKind.TIMEOUT_FIRST_TOKEN: f"no token within {to.first_token:g} s",
        ErrorKind.TIMEOUT_IDLE: f"no event for {to.idle:g} s after a token",
        ErrorKind.TIMEOUT_TOTAL: f"not finished within {to.total:g} s",
    }.get(kind, str(kind))


async def _error_body(resp: aiohttp.ClientResponse, until: float) -> str:
    raw, msg = await _body_start(resp, ERROR_BODY_LIMIT, until)
    try:
        obj: Any = orjson.loads(raw)
        if isinstance(obj, dict):
            err = obj.get("error", obj)
            msg = err.get("message", msg) if isinstance(err, dict) else str(err)
    except orjson.JSONDecodeError:
        pass
    return f"HTTP {resp.status}: {msg}" if msg else f"HTTP {resp.status}"
