"""One streaming request in, one record out.

The loop only timestamps and splits: each piece of bytes is stamped with the time of the socket
read that brought it (client/reads.py), the SSE parser cuts it into event payloads, and the API
kind decodes each payload once. Every failure becomes an `ErrorKind` on the record, which keeps
whatever had been measured before it.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from time import monotonic_ns

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

from latbench.client.apis import ApiKind, MalformedEvent, RequestOptions
from latbench.client.nonstream import (
    error_body_detail,
    not_event_stream,
    not_sse_detail,
    redirect_detail,
)
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
from latbench.workload import WorkItem

# How long the start of a body that brings no token (an error, an HTML page) is waited for: a
# server that stalls there must not turn the record into a first-token timeout.
BODY_WAIT_S = 0.5
DETAIL_LIMIT = 1000  # characters of an error detail kept in a record (a server writes them)
IDLE_SLACK = 1 / 64  # how late (a fraction of it) the idle timeout may fire; see the loop
# A piece that ends with one of these ends with the blank line that completes an SSE event.
_BLANK_LINE_ENDS = (b"\n\n", b"\n\r\n", b"\r\r")
_PEER_GONE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError)


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


class _Exchange:
    """What one request's exchange has given so far. The steps below fill it in; a failure in any
    of them keeps what was measured before it, and names the timeout that was `armed`."""

    __slots__ = (
        "armed",
        "detail",
        "error",
        "ev_kind",
        "ev_late",
        "ev_n",
        "ev_t",
        "finish_reason",
        "n_known",
        "retry_after",
        "sent",
        "status",
        "t_headers",
        "usage_completion",
        "usage_prompt",
    )

    def __init__(self) -> None:
        self.armed = ErrorKind.TIMEOUT_FIRST_TOKEN
        self.status: int | None = None
        self.t_headers: int | None = None
        self.ev_t: list[int] = []
        self.ev_kind: list[str] = []
        self.ev_n: list[int] = []
        self.ev_late: list[int] | None = None  # per event, when every read had a kernel stamp
        self.sent: tuple[int, int] | None = None  # (t_sent, sent_late) from the kernel or write
        self.n_known = True  # every token event so far had a usage delta
        self.usage_completion: int | None = None
        self.usage_prompt: int | None = None
        self.finish_reason: str | None = None
        self.error: ErrorKind | None = None
        self.detail: str | None = None
        self.retry_after: float | None = None


async def stream_request(
    session: aiohttp.ClientSession,
    ep: Endpoint,
    item: WorkItem,
    *,
    run_id: str,
    seq: int,
    phase: Phase,
    t_intended: int,
    keep: list[bytes] | None = None,
    trace_id: str | None = None,
) -> Record:
    """Send `item`, read the head, read the body into events, and record it all: one record,
    whatever happened. `keep`, when given, receives the body's event payloads (the last
    attempt's), for a session's next turn to read the reply from (`ApiKind.reply`).

    Every request carries a W3C `traceparent` with `trace_id` (default: a new random one; a
    retry keeps its request's) and the sampled flag, and an `X-Request-Id` of the run id and
    `seq`: a server that traces (vLLM with `--otlp-traces-endpoint`) exports its span of the
    request under that trace id, which joins it to this record (`summary.spans`)."""
    if trace_id is None:
        trace_id = os.urandom(16).hex()
    if ep.retry.max_retries:
        once = replace(ep, retry=NO_RETRY)
        return await _with_retries(
            lambda: stream_request(
                session, once, item, run_id=run_id, seq=seq, phase=phase, t_intended=t_intended,
                keep=keep, trace_id=trace_id,
            ),
            ep.retry,
            ep.timeouts.total,
        )  # fmt: skip
    if keep is not None:
        keep.clear()
    api = ep.api
    got = _Exchange()
    loop = asyncio.get_running_loop()
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
    # A new span id per attempt, as a retried call is a new child of the same trace.
    headers = {
        **ep.headers,
        "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01",
        "X-Request-Id": f"{run_id}-{seq}",
    }
    # Where the connection's socket says when the request left (client/reads.py), that replaces
    # this instant; it stays only for a request that got no response to read.
    t_sent = monotonic_ns()
    start = loop.time()
    total_at = start + ep.timeouts.total
    try:
        async with asyncio.timeout_at(min(start + ep.timeouts.first_token, total_at)) as cm:
            # A redirect is never followed: the secret headers would go with it to a server
            # the run was not pointed at, and what was measured would be that server.
            async with session.post(
                ep.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                clock = ReadClock(resp)
                got.sent = clock.sent
                if await _read_head(resp, clock, cm, got, total_at):
                    await _read_events(resp, clock, cm, ep, got, total_at, keep)
    except (Exception, asyncio.CancelledError) as e:
        before_total = loop.time() < total_at - 1e-3
        got.error, got.detail = _failure(e, got, ep.timeouts, before_total)
    return _finish(got, ep, item, run_id, seq, phase, t_intended, t_sent, trace_id)


async def _read_head(
    resp: aiohttp.ClientResponse,
    clock: ReadClock,
    cm: asyncio.Timeout,
    got: _Exchange,
    total_at: float,
) -> bool:
    """Note the status and when the head came. True when the body is an event stream to read;
    otherwise the error is classified and its detail read from the body's start."""
    got.t_headers = clock.headers_ns if clock.headers_ns is not None else monotonic_ns()
    got.status = status = resp.status
    ctype = None if status >= 300 else not_event_stream(resp)
    if status < 300 and ctype is None:
        return True
    if not cm.expired():
        # No token comes from this body: its short read (BODY_WAIT_S) is bounded on its own, not
        # by the first-token deadline.
        cm.reschedule(None)
    until = min(asyncio.get_running_loop().time() + BODY_WAIT_S, total_at)
    if status >= 300:
        got.retry_after = retry_after_s(resp.headers)
        got.error = status_kind(status, got.retry_after)
        if got.error is ErrorKind.REDIRECTED:
            got.detail = redirect_detail(resp)
        else:
            got.detail = await error_body_detail(resp, until)
    elif ctype is not None:
        got.error = ErrorKind.MALFORMED_STREAM
        got.detail = await not_sse_detail(resp, ctype, until)
    return False


async def _read_events(
    resp: aiohttp.ClientResponse,
    clock: ReadClock,
    cm: asyncio.Timeout,
    ep: Endpoint,
    got: _Exchange,
    total_at: float,
    keep: list[bytes] | None = None,
) -> None:
    """Read the event stream to its end marker, stamping each event with its read's time.

    This is the hot path: per read and per event it works on locals only (no call, await or
    allocation beyond the parse itself), and hands them to `got` once, however it ends.

    Each event's error bound (`ev_late`) is the bound of the piece that completed it
    (`clock.late`), except that an event ending its piece, where the piece ends its read, is
    exact, and so is the last token event when the end marker came in its read (neither under TLS:
    `clock.exact` is never set there, nor `clock.read`, client/reads.py). Whether an event
    ends its piece is read off the piece: the last payload of the piece made an event, and the
    piece ends with the blank line that completes one."""
    api = ep.api
    to = ep.timeouts
    loop = asyncio.get_running_loop()
    parser = SSEParser(ep.limits.max_line_bytes, ep.limits.max_event_bytes)
    ev_t, ev_kind, ev_n = got.ev_t, got.ev_kind, got.ev_n
    ev_late: list[int] | None = []
    late = 0
    tok_read = -1  # the read that completed the last token event, when one piece of one read
    n_known = True
    typed = False  # an event with a kind of its own has come
    last_completion = 0
    usage_completion: int | None = None
    usage_prompt: int | None = None
    finish_reason: str | None = None
    error: ErrorKind | None = None
    detail: str | None = None
    done = False
    armed_at = 0.0
    try:
        # One HTTP chunk at a time (as the server framed its events), not all that is buffered:
        # a backlog then keeps each event's own read time.
        async for piece, _ in resp.content.iter_chunks():
            if not piece:
                continue
            now = clock.stamp(len(piece))
            late = clock.late
            first = last = len(ev_t)
            try:
                datas = parser.feed(piece)
                over = None
            except OversizedEvent as e:
                # The events completed before it in this piece still count.
                datas, over = e.events, e
            if keep is not None:
                keep.extend(datas)
            for data in datas:
                last = len(ev_t)
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
                # A token-bearing event has text, or a usage delta (vLLM can emit a token whose
                # text is empty, yet count it: a reasoning parser's swallowed tag, a tool parser's
                # buffered call). Such a token is of the phase the stream is in: the previous
                # event's kind, and before any typed event the first typed event's, filled in
                # when it comes; content if none ever does. Labelled content, an empty delta in
                # the middle of reasoning would end TTFO there.
                kind = ev.kind
                if kind is not None or (delta > 0 and not ev.usage_only):
                    if kind is None:
                        kind = ev_kind[-1] if typed else "c"
                    elif not typed:
                        typed = True
                        ev_kind[:] = kind * len(ev_kind)
                    ev_t.append(now)
                    ev_kind.append(kind)
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
            if ev_late is not None and len(ev_t) > first:
                if late < 0:
                    ev_late = None  # a read without a kernel stamp: no bound for this record
                else:
                    ev_late.extend([late] * (len(ev_t) - first))
                    if (
                        clock.exact
                        and over is None
                        and len(ev_t) > last
                        and piece.endswith(_BLANK_LINE_ENDS)
                    ):
                        ev_late[-1] = 0
                tok_read = clock.read
            if done and ev_late and tok_read >= 0 and clock.read == tok_read:
                # The end marker came in the read of the last token: closing events written
                # right after it (client/reads.py), so that token arrived with the read's stamp.
                ev_late[-1] = 0
            if done or error is not None:
                break
            if over is not None:
                error, detail = ErrorKind.OVERSIZED_EVENT, str(over)
                break
            if ev_t and got.armed is not ErrorKind.TIMEOUT_TOTAL:
                # Re-arming the timer on every read cost more than the rest of the read: arm it
                # IDLE_SLACK of the idle timeout past the deadline, and again only once that
                # slack is used up. It may fire that much late, never early.
                idle_at = loop.time() + to.idle
                if got.armed is ErrorKind.TIMEOUT_FIRST_TOKEN or idle_at > armed_at:
                    armed_at = idle_at + to.idle * IDLE_SLACK
                    got.armed = ErrorKind.TIMEOUT_IDLE
                    if armed_at >= total_at:
                        armed_at, got.armed = total_at, ErrorKind.TIMEOUT_TOTAL
                    cm.reschedule(armed_at)
        # Closed without the end marker: cut (METRICS.md), even after a finish_reason. vLLM,
        # SGLang and OpenAI always end with it, and what comes between (the usage chunk that
        # include_usage asks for) would be lost unseen; servers that left it out (TGI, llama-box
        # in 2024) fixed that as a bug. What was measured stays on the record.
        if not done and error is None:
            error = ErrorKind.STREAM_TRUNCATED
            detail = "the stream closed before its end marker" + (
                "" if finish_reason is None else f" (after finish_reason {finish_reason!r})"
            )
    finally:
        if ev_late is not None and len(ev_late) < len(ev_t):
            # A parse that failed mid-piece: its events so far have the piece's bound.
            ev_late = ev_late + [late] * (len(ev_t) - len(ev_late)) if late >= 0 else None
        got.ev_late = ev_late
        got.n_known = n_known
        got.usage_completion = usage_completion
        got.usage_prompt = usage_prompt
        got.finish_reason = finish_reason
        got.error, got.detail = error, detail


def _failure(
    e: BaseException, got: _Exchange, to: Timeouts, before_total: bool
) -> tuple[ErrorKind, str]:
    """The error kind and detail of an exception that ended the exchange (`before_total`: it
    ended before the total timeout was due)."""
    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return ErrorKind.TIMEOUT_CONNECT, f"no connection within {to.connect:g} s"
    if isinstance(e, TimeoutError):
        kind = got.armed if before_total else ErrorKind.TIMEOUT_TOTAL
        return kind, _timeout_detail(kind, to)
    if isinstance(e, MalformedEvent):
        return ErrorKind.MALFORMED_STREAM, str(e)
    if isinstance(e, aiohttp.ClientConnectorError):
        refused = e.os_error.errno == errno.ECONNREFUSED if e.os_error else False
        return ErrorKind.CONNECT_REFUSED if refused else ErrorKind.CONNECT_ERROR, str(e)
    if isinstance(e, BodyFramingError):
        return ErrorKind.MALFORMED_STREAM, str(e)
    if isinstance(e, aiohttp.ClientPayloadError):
        return ErrorKind.STREAM_TRUNCATED, str(e) or type(e).__name__
    if isinstance(
        e, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionResetError
    ):
        # However the peer went (a close or a reset), after the headers it cut a stream short.
        kind = ErrorKind.STREAM_TRUNCATED if got.t_headers else ErrorKind.CONNECTION_RESET
        return kind, str(e) or type(e).__name__
    if isinstance(e, aiohttp.ClientResponseError):
        # Its message is the parser's: the reason, then the offending bytes on later lines.
        return ErrorKind.MALFORMED_STREAM, framing_detail(e.message, "bad HTTP response")
    if isinstance(e, HttpProcessingError):
        # aiohttp's pure-Python parser raises its own framing errors into the body.
        return ErrorKind.MALFORMED_STREAM, framing_detail(e.message or repr(e))
    if isinstance(e, asyncio.CancelledError):
        # The runner cancels in-flight requests only when the run is aborted; it wants the
        # partial record back rather than the exception.
        return ErrorKind.CANCELLED, "the run was stopped while this request was in flight"
    return ErrorKind.CLIENT_ERROR, f"{type(e).__name__}: {e}"


def _timeout_detail(kind: ErrorKind, to: Timeouts) -> str:
    return {
        ErrorKind.TIMEOUT_FIRST_TOKEN: f"no token within {to.first_token:g} s",
        ErrorKind.TIMEOUT_IDLE: f"no event for {to.idle:g} s after a token",
        ErrorKind.TIMEOUT_TOTAL: f"not finished within {to.total:g} s",
    }.get(kind, str(kind))


def _finish(
    got: _Exchange,
    ep: Endpoint,
    item: WorkItem,
    run_id: str,
    seq: int,
    phase: Phase,
    t_intended: int,
    t_sent: int,
    trace_id: str,
) -> Record:
    """The record of what `got` holds, ended now."""
    detail = got.detail
    if detail is not None and len(detail) > DETAIL_LIMIT:
        detail = detail[: DETAIL_LIMIT - 3] + "..."
    t_end = monotonic_ns()
    sent_late = None
    if got.sent is not None:
        t_sent, sent_late = got.sent
    return Record(
        run_id=run_id,
        seq=seq,
        phase=phase,
        api=ep.api.name,
        t_intended=t_intended,
        t_sent=t_sent,
        t_headers=got.t_headers,
        t_end=t_end,
        ev_t=tuple(got.ev_t),
        ev_kind="".join(got.ev_kind),
        ev_n=tuple(got.ev_n) if got.n_known and got.ev_t else None,
        status=got.status,
        finish_reason=got.finish_reason,
        usage_prompt_tokens=got.usage_prompt,
        usage_completion_tokens=got.usage_completion,
        max_tokens=item.max_tokens,
        prompt_tokens=item.prompt_tokens,
        error=got.error,
        error_detail=detail,
        retry_after_s=got.retry_after,
        sent_late=sent_late,
        ev_late=tuple(got.ev_late) if got.ev_late is not None and got.ev_t else None,
        session=item.session,
        turn=item.turn,
        images=item.images,
        image_bytes=item.image_bytes,
        trace_id=trace_id,
    )


async def _with_retries(
    attempt: Callable[[], Awaitable[Record]], policy: RetryPolicy, total_s: float
) -> Record:
    """Send, and resend refusals as `policy` allows; one record with the first send's t_sent.

    No retry starts whose wait would end past the total timeout (`total_s`) counted from the
    first send.
    """
    first = last = await attempt()
    attempts = 1
    deadline = first.t_sent + int(total_s * 1e9)
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
