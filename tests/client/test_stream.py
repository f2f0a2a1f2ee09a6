"""One streaming request against the simulator over loopback: timing, token accounting, and the
classification of every fault, each keeping what it had measured."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from time import monotonic_ns
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web
from kit import hostile
from kit.client import one

from latbench import ErrorKind
from latbench.client import (
    API_KINDS,
    Endpoint,
    RequestOptions,
    RetryPolicy,
    StampingConnector,
    StreamLimits,
    Timeouts,
    resolve_endpoint,
)
from latbench.client.reads import ReadClock, StampedResponseHandler
from latbench.client.sse import SSEParser
from latbench.shared import rxstamp
from latbench.sim import SimConfig, create_app
from latbench.spec import TargetSpec, WorkloadSpec
from latbench.workload import WorkItem


@pytest.fixture
async def stamping() -> AsyncIterator[aiohttp.ClientSession]:
    # The workers' connector: its connections stamp their reads (latbench/client/reads.py).
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=StampingConnector(), timeout=timeout) as s:
        yield s


def endpoint(
    url: str, api: str = "chat", *, extensions: bool = True, **timeouts: float
) -> Endpoint:
    return Endpoint(
        base_url=url,
        api=API_KINDS[api],
        options=RequestOptions(
            model="sim-model", vllm_extensions=extensions, ignore_eos=True, extra_body={}
        ),
        headers={},
        timeouts=Timeouts(**timeouts),
    )


ITEM = WorkItem(
    prompt="one two three",
    messages=({"role": "user", "content": "one two three"},),
    prompt_tokens=3,
    max_tokens=8,
)


def post(session: aiohttp.ClientSession, ep: Endpoint) -> Any:
    """ITEM's request, for a test that reads the response itself."""
    return session.post(
        ep.url, data=orjson.dumps(ep.api.body(ITEM, ep.options)), headers=ep.headers
    )


async def token_stamps(r: aiohttp.ClientResponse, ep: Endpoint, clock: ReadClock) -> list[int]:
    """Each token event's stamp, read as `stream_request` reads them: an HTTP chunk at a time."""
    parser, stamps = SSEParser(), []
    async for piece, _ in r.content.iter_chunks():
        if piece:
            now = clock.stamp(len(piece))
            stamps += [now for d in parser.feed(piece) if ep.api.parse(d).kind is not None]
    return stamps


async def server_writes(session: aiohttp.ClientSession, url: str) -> list[int]:
    """When the simulator handed each event of its one request to the socket."""
    async with session.get(url + "/sim/truth?raw=1") as t:
        (truth,) = (await t.json())["requests"]
    return list(truth["events_ns"])


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_timing_and_tokens_match_the_simulator(sim, stamping, api: str) -> None:
    server = sim(ttft=0.05, itl=0.01)
    rec = await one(stamping, endpoint(server.url, api), ITEM)
    assert rec.ok, rec.error_detail
    assert rec.status == 200 and rec.finish_reason == "length"
    assert len(rec.ev_t) == 8 and rec.ev_kind == "c" * 8
    assert rec.ev_n == (1,) * 8  # continuous usage gives a delta per event
    assert rec.usage_completion_tokens == 8 and rec.usage_prompt_tokens == 3
    ttft = (rec.ev_t[0] - rec.t_sent) / 1e6
    # The simulator sends on absolute deadlines over loopback. A few ms cover the connection
    # set-up of a first request and scheduler jitter on a shared 2-core machine. Single gaps are
    # not compared: one late read merges two events into one piece (a 0 gap after a long one);
    # what must hold is that every event lands near its own deadline, 10 ms after the last one's.
    assert 50 <= ttft < 75, ttft
    offsets = [(t - rec.ev_t[0]) / 1e6 for t in rec.ev_t]
    assert all(abs(off - 10 * i) < 15 for i, off in enumerate(offsets)), offsets
    assert rec.t_sent <= rec.t_headers <= rec.ev_t[0] <= rec.ev_t[-1] <= rec.t_end


async def test_events_are_stamped_at_the_socket_read_not_when_the_task_gets_to_them(
    sim, stamping
) -> None:
    # A busy worker's task reads its response late, behind other callbacks. Here it is late on
    # purpose: the body is left unread while the connection goes on reading it off the socket.
    server = sim(ttft=0.01, itl=0.02)
    ep = endpoint(server.url, "completions")
    t_sent = monotonic_ns()
    async with post(stamping, ep) as r:
        clock = ReadClock(r)
        await asyncio.sleep(0.4)  # the whole stream (10 ms + 7 x 20 ms) is in by now
        late = monotonic_ns()
        stamps = await token_stamps(r, ep, clock)
    written = await server_writes(stamping, server.url)
    assert len(stamps) == len(written) == ITEM.max_tokens
    assert clock.headers_ns is not None and t_sent < clock.headers_ns <= stamps[0]
    # Each event has the time of its own read: after its write, well before the task read it,
    # and 20 ms after the one before (a stamp taken by the task would put all eight at `late`).
    assert all(w <= s < late - 150_000_000 for w, s in zip(written, stamps, strict=True))
    assert all(s - w < 50_000_000 for w, s in zip(written, stamps, strict=True))
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
    assert sum(gaps) / len(gaps) == pytest.approx(20, abs=3), gaps


@pytest.mark.skipif(not rxstamp.AVAILABLE, reason="kernel receive stamps are Linux's")
async def test_kernel_stamps_hold_while_the_whole_worker_is_descheduled(sim, stamping) -> None:
    # A worker the OS does not run reads nothing: only the kernel's own arrival stamp knows when
    # the bytes came. Here the loop is blocked outright while the stream arrives.
    server = sim(ttft=0.01, itl=0.02)
    ep = endpoint(server.url, "completions")
    async with post(stamping, ep) as r:
        clock = ReadClock(r)
        time.sleep(0.4)  # blocks the event loop: no read happens until it ends
        late = monotonic_ns()
        stamps = await token_stamps(r, ep, clock)
    written = await server_writes(stamping, server.url)
    # The events the loop read only after it woke are still stamped near their writes (writes
    # that reach a blocked socket may share a read, whose stamp is its newest segment's).
    assert len(stamps) == len(written) == ITEM.max_tokens
    assert all(w <= s < late - 100_000_000 for w, s in zip(written, stamps, strict=True))


@pytest.mark.skipif(not rxstamp.AVAILABLE, reason="kernel receive stamps are Linux's")
async def test_a_response_already_whole_when_its_task_runs_keeps_its_read_times(
    sim, stamping
) -> None:
    # At high load a short stream can be read in full, and its connection given back to the
    # pool, before the request's task resumes: the stamps must still be the reads', not the
    # task's. The loop is blocked from 5 ms after the send until well after the stream ended.
    server = sim(ttft=0.01, itl=0.001)
    loop = asyncio.get_running_loop()
    loop.call_later(0.005, time.sleep, 0.3)
    rec = await one(stamping, endpoint(server.url, "completions"), ITEM)
    unblocked = rec.t_sent + 300_000_000
    assert rec.ok and len(rec.ev_t) == ITEM.max_tokens, rec.error_detail
    assert rec.t_headers is not None and rec.t_headers < unblocked - 200_000_000
    assert all(t < unblocked - 200_000_000 for t in rec.ev_t), [t - rec.t_sent for t in rec.ev_t]


@pytest.fixture
def tls_sim() -> Iterator[tuple[str, ssl.SSLContext]]:
    """The simulator over TLS, on its own thread and event loop (hosted APIs are HTTPS), with a
    client context that trusts its certificate."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(create_app(SimConfig(ttft=0.01, itl=0.02)))

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        return int(runner.addresses[0][1])

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    yield f"https://127.0.0.1:{port}", client_ctx
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.mark.skipif(not rxstamp.AVAILABLE, reason="kernel receive stamps are Linux's")
async def test_kernel_stamps_hold_through_tls(tls_sim) -> None:
    # Under TLS the stdlib loop reads the socket with `recv_into` (for its TLS protocol), and the
    # response protocol sees decrypted bytes: the stamps must still be the kernel's.
    url, ctx = tls_sim
    async with aiohttp.ClientSession(connector=StampingConnector(ssl=ctx)) as session:
        ep = endpoint(url, "completions")
        async with post(session, ep) as r:
            clock = ReadClock(r)
            time.sleep(0.4)  # blocks this loop; the server's thread goes on writing
            late = monotonic_ns()
            stamps = await token_stamps(r, ep, clock)
        written = await server_writes(session, url)
    assert len(stamps) == len(written) == ITEM.max_tokens
    # Events that waited in the socket together share the newest one's stamp: never early.
    assert all(w <= s < late - 150_000_000 for w, s in zip(written, stamps, strict=True))


async def test_multi_token_events_and_reasoning(sim, stamping) -> None:
    server = sim(ttft=0.01, itl=0.005, tokens_per_event=3, reasoning_tokens=3)
    rec = await one(stamping, endpoint(server.url, "chat"), ITEM)
    assert rec.ok, rec.error_detail
    assert rec.usage_completion_tokens == 8
    assert sum(rec.ev_n or ()) == 8
    assert rec.ev_kind[0] == "r" and "c" in rec.ev_kind


async def test_without_extensions_token_counts_come_from_final_usage(sim, stamping) -> None:
    server = sim(ttft=0.01, itl=0.002)
    rec = await one(stamping, endpoint(server.url, "completions", extensions=False), ITEM)
    assert rec.ok
    assert rec.ev_n is None  # no per-event usage was sent
    assert rec.usage_completion_tokens == 8 and len(rec.ev_t) == 8


FAULTS = [
    ({"kind": "http_status", "status": 500}, ErrorKind.HTTP_STATUS, 0),
    ({"kind": "http_status", "status": 429}, ErrorKind.RATE_LIMITED, 0),
    ({"kind": "malformed", "after": 3}, ErrorKind.MALFORMED_STREAM, 3),
    ({"kind": "truncate", "after": 4}, ErrorKind.STREAM_TRUNCATED, 4),
    ({"kind": "error_event", "after": 2}, ErrorKind.SERVER_ERROR_EVENT, 2),
    ({"kind": "stall_first"}, ErrorKind.TIMEOUT_FIRST_TOKEN, 0),
    ({"kind": "stall_mid", "after": 3}, ErrorKind.TIMEOUT_IDLE, 3),
]


@pytest.mark.parametrize(
    ("fault", "kind", "events_kept"),
    FAULTS,
    ids=[f[0]["kind"] + str(f[0].get("status", "")) for f in FAULTS],
)
async def test_each_fault_is_classified_and_keeps_what_was_measured(
    sim, stamping, fault: dict[str, object], kind: ErrorKind, events_kept: int
) -> None:
    server = sim(ttft=0.01, itl=0.002, faults=[fault])
    rec = await one(stamping, endpoint(server.url, "chat", first_token=0.5, idle=0.3), ITEM)
    assert rec.error is kind, rec.error_detail
    assert rec.error_detail
    assert len(rec.ev_t) == events_kept
    if "status" in fault:
        assert rec.status == fault["status"]
        assert str(fault["status"]) in rec.error_detail


async def test_total_timeout(sim, stamping) -> None:
    server = sim(ttft=0.01, itl=0.05)
    rec = await one(stamping, endpoint(server.url, total=0.2), ITEM)
    assert rec.error is ErrorKind.TIMEOUT_TOTAL
    assert 0 < len(rec.ev_t) < 8


async def test_connection_refused(stamping) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: bind, note it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = await one(stamping, endpoint(f"http://127.0.0.1:{port}"), ITEM)
    assert rec.error is ErrorKind.CONNECT_REFUSED
    assert rec.t_headers is None and rec.ev_t == ()


async def test_wrong_model_is_an_http_error_with_the_servers_message(sim, stamping) -> None:
    server = sim()
    ep = endpoint(server.url)
    ep = Endpoint(ep.base_url, ep.api, ep.options._replace(model="nope"), {}, ep.timeouts)
    rec = await one(stamping, ep, ITEM)
    assert rec.error is ErrorKind.HTTP_STATUS and rec.status == 404
    assert "nope" in (rec.error_detail or "")


@pytest.fixture
def hostile_server() -> Iterator[tuple[hostile.HostileServer, hostile.Sink]]:
    running, srv, sink = hostile.start(big=8 << 20, hold_s=60.0)
    yield srv, sink
    running.close()


def hostile_endpoint(url: str, **kw: Any) -> Endpoint:
    return Endpoint(
        base_url=url,
        api=API_KINDS["chat"],
        options=RequestOptions(model="m", vllm_extensions=True, ignore_eos=True, extra_body={}),
        headers={"x-api-key": "sk-secret", "Authorization": "Bearer sk-secret"},
        timeouts=Timeouts(first_token=5, idle=30),
        **kw,
    )


async def test_a_redirect_is_not_followed_nor_retried(stamping, hostile_server) -> None:
    srv, sink = hostile_server
    ep = hostile_endpoint(srv.target("redirect_307"), retry=RetryPolicy(max_retries=3, backoff=0))
    rec = await one(stamping, ep, ITEM)
    assert rec.error is ErrorKind.REDIRECTED and rec.status == 307 and rec.attempts == 1
    assert rec.error_detail == f"HTTP 307 redirect to {sink.url}/v1/chat/completions; not followed"
    assert sink.connections == 0 and srv.served["redirect_307"] == 1


@pytest.mark.parametrize("mode", ["no_content_type", "upper_content_type"])
async def test_an_event_stream_without_its_usual_label_is_read(
    stamping, hostile_server, mode: str
) -> None:
    # Only a Content-Type that names something else is refused; vLLM, OpenAI, Anthropic and the
    # simulator send text/event-stream, and a missing one is left to the parsers to judge.
    srv, _ = hostile_server
    rec = await one(stamping, hostile_endpoint(srv.target(mode)), ITEM)
    assert rec.ok and len(rec.ev_t) == hostile.TOKENS, rec.error_detail


@pytest.mark.parametrize("mode", ["bad_chunk", "bad_chunk_at_once"])
async def test_a_bad_chunk_size_fails_at_once_not_at_the_idle_timeout(
    stamping, hostile_server, mode: str
) -> None:
    # aiohttp's C parser dropped the body on this error: the read waited for the idle timeout
    # (30 s here) and was recorded as one. In a later read than the headers it fails the body
    # (the token before it kept); in the same read, the response (nothing kept): the same
    # detail either way, so a stalled worker's record reads as a prompt one's.
    srv, _ = hostile_server
    t0 = time.monotonic()
    rec = await one(stamping, hostile_endpoint(srv.target(mode)), ITEM)
    assert time.monotonic() - t0 < 5
    assert rec.error is ErrorKind.MALFORMED_STREAM
    assert rec.error_detail == "malformed chunked encoding: Invalid character in chunk size"


@pytest.mark.parametrize(
    ("mode", "kind", "detail"),
    [
        (
            "html_stalled",
            ErrorKind.MALFORMED_STREAM,
            "not an event stream: HTTP 200 with Content-Type 'text/html'",
        ),
        ("error_stalled", ErrorKind.HTTP_STATUS, "HTTP 500"),
    ],
)
async def test_a_body_that_stalls_after_its_start_is_named_not_a_timeout(
    stamping, hostile_server, mode: str, kind: ErrorKind, detail: str
) -> None:
    # Its start was read under the first-token deadline: a server that stalled after the headers
    # made the record a first-token timeout. Now the start is waited for briefly, on its own.
    srv, _ = hostile_server
    ep = replace(hostile_endpoint(srv.target(mode)), timeouts=Timeouts(first_token=5, idle=30))
    t0 = time.monotonic()
    rec = await one(stamping, ep, ITEM)
    assert (rec.error, rec.error_detail) == (kind, detail)
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("mode", ["reset_after_headers", "reset_mid_stream"])
async def test_a_reset_after_the_headers_truncates_the_stream(
    stamping, hostile_server, mode: str
) -> None:
    # A reset (RST) and a close after the headers both cut the stream short; only before the
    # headers is it a connection reset.
    srv, _ = hostile_server
    rec = await one(stamping, hostile_endpoint(srv.target(mode)), ITEM)
    assert rec.error is ErrorKind.STREAM_TRUNCATED, (rec.error, rec.error_detail)
    assert rec.t_headers is not None and rec.error_detail
    rec = await one(stamping, hostile_endpoint(srv.target("reset_before_headers")), ITEM)
    assert rec.error is ErrorKind.CONNECTION_RESET and rec.t_headers is None


def test_the_protocol_keeps_its_exception_where_the_stamping_reads_it() -> None:
    # StampedResponseHandler.data_received reads `_exception` (aiohttp's DataQueue) on every
    # read instead of calling exception() twice: this fails if aiohttp moves it.
    loop = asyncio.new_event_loop()
    try:
        h = StampedResponseHandler(loop)
        assert h._exception is None and h.exception() is None
        h.set_exception(ValueError("x"))
        assert h._exception is h.exception() and isinstance(h._exception, ValueError)
    finally:
        loop.close()


async def test_stream_limits_come_from_the_spec(stamping, hostile_server) -> None:
    srv, _ = hostile_server
    spec = TargetSpec.model_validate(
        {"model": "m", "stream_limits": {"max_line_bytes": 2048, "max_event_bytes": 1 << 20}}
    )
    base = srv.target("oversized_line")
    ep = await resolve_endpoint(stamping, spec, base, WorkloadSpec())
    assert ep.limits == StreamLimits(2048, 1 << 20)
    rec = await one(stamping, ep, ITEM)
    assert rec.error is ErrorKind.OVERSIZED_EVENT and len(rec.ev_t) == 1
    assert rec.error_detail == "an event line over 2,048 bytes"


async def test_a_body_that_cannot_be_encoded_is_a_record(stamping, hostile_server) -> None:
    # An integer past 64 bits in extra_body (YAML allows one) cannot be sent: it is a record
    # of that, not an exception out of the request's task.
    srv, _ = hostile_server
    ep = hostile_endpoint(srv.url)
    ep = replace(ep, options=ep.options._replace(extra_body={"seed": 2**70}))
    rec = await one(stamping, ep, ITEM)
    assert rec.error is ErrorKind.CLIENT_ERROR and rec.ev_t == ()
    assert (
        rec.error_detail == "cannot build the request body: TypeError: Integer exceeds 64-bit range"
    )
    assert srv.served.total() == 0
