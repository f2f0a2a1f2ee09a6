"""Refusals for load and opt-in retries: classification, Retry-After, the policy, and what a
retried request's record holds (the first send's t_sent, so no latency is hidden)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from kit.cli import latbench
from kit.client import one
from kit.sim import base_url
from multidict import CIMultiDict

from latbench import ErrorKind
from latbench.client import (
    API_KINDS,
    Endpoint,
    RequestOptions,
    RetryPolicy,
    Timeouts,
)
from latbench.client.preflight import retry_policy
from latbench.client.retry import fold, retry_after_s, should_retry, status_kind
from latbench.records import Record, read_records
from latbench.records.record import encode_record, instants, iter_lines
from latbench.sim.state import STATE
from latbench.spec import load_spec
from latbench.summary import summarize
from latbench.workload import WorkItem

ITEM = WorkItem("a b", ({"role": "user", "content": "a b"},), 2, 4)


# --- pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry", "retry_after", "expected"),
    [
        (1, None, 0.5),  # backoff
        (2, None, 1.0),  # doubles
        (3, None, 2.0),
        (4, None, None),  # past max_retries
        (1, 7.0, 7.0),  # Retry-After wins over the backoff
        (1, 0.0, 0.0),
        (1, 10.5, None),  # longer than max_wait: give up instead
    ],
)
def test_policy_delay(retry: int, retry_after: float | None, expected: float | None) -> None:
    policy = RetryPolicy(max_retries=3, backoff=0.5, max_wait=10.0)
    assert policy.delay(retry, retry_after) == expected


def test_policy_off_by_default() -> None:
    assert RetryPolicy().delay(1, None) is None


@pytest.mark.parametrize(
    ("status", "retry_after", "kind"),
    [
        (429, None, ErrorKind.RATE_LIMITED),
        (429, 3.0, ErrorKind.RATE_LIMITED),
        (529, None, ErrorKind.OVERLOADED),
        (503, 1.0, ErrorKind.OVERLOADED),
        (503, None, ErrorKind.HTTP_STATUS),  # unavailable, not shedding load
        (500, 1.0, ErrorKind.HTTP_STATUS),
        (404, None, ErrorKind.HTTP_STATUS),
    ],
)
def test_status_kind(status: int, retry_after: float | None, kind: ErrorKind) -> None:
    assert status_kind(status, retry_after) is kind


def test_retry_after_forms() -> None:
    def parse(**headers: str) -> float | None:
        return retry_after_s(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}))

    assert parse() is None
    assert parse(Retry_After="2") == 2.0
    assert parse(retry_after="1.5") == 1.5  # header names are case-insensitive
    assert parse(retry_after="-3") == 0.0
    assert parse(retry_after="soon") is None
    assert parse(retry_after="nan") is None
    assert parse(retry_after_ms="250", retry_after="9") == 0.25  # OpenAI's finer header first
    assert parse(retry_after_ms="x", retry_after="9") == 9.0
    future = parse(retry_after=formatdate(time.time() + 30, usegmt=True))
    assert future is not None and 28 < future <= 30
    assert parse(retry_after=formatdate(time.time() - 30, usegmt=True)) == 0.0


def rec(**fields: Any) -> Record:
    base: dict[str, Any] = {
        "run_id": "r",
        "seq": 0,
        "phase": "measure",
        "api": "chat",
        "t_intended": 0,
        "t_sent": 10,
    }
    return Record(**(base | fields))


def test_only_refusals_without_output_are_retried() -> None:
    assert should_retry(rec(error=ErrorKind.RATE_LIMITED, status=429))
    assert should_retry(rec(error=ErrorKind.OVERLOADED, status=200))  # overloaded before a token
    assert not should_retry(rec(error=ErrorKind.OVERLOADED, ev_t=(50,), ev_kind="c"))
    assert not should_retry(rec(error=ErrorKind.HTTP_STATUS, status=500))
    assert not should_retry(rec())


def test_fold_keeps_the_first_send_and_outcome() -> None:
    first = rec(
        t_sent=10, sent_late=3, t_headers=20, t_end=25, status=429, error=ErrorKind.RATE_LIMITED
    )
    last = rec(
        t_sent=1000, sent_late=0, t_headers=1010, t_end=1100, ev_t=(1050,), ev_kind="c", status=200
    )
    assert fold(first, first, 1) is first
    assert fold(first, last, 1) is last
    r = fold(first, last, 3)
    assert r.sent_late == 3  # the bound of the t_sent it keeps
    assert (r.t_sent, r.t_headers, r.t_end, r.ev_t, r.status, r.error) == (
        10,
        1010,
        1100,
        (1050,),
        200,
        None,
    )
    assert (r.attempts, r.first_status, r.first_error, r.t_first_end, r.t_last_sent) == (
        3,
        429,
        ErrorKind.RATE_LIMITED,
        25,
        1000,
    )
    # TTFT counts from the first send: the refusal and the wait are in it.
    assert summarize([r]).latency["ttft"].mean == (1050 - 10) / 1e9


def test_retry_fields_round_trip_and_old_records_still_read() -> None:
    r = rec(
        t_end=99,
        status=200,
        retry_after_s=1.5,
        attempts=2,
        first_status=529,
        first_error=ErrorKind.OVERLOADED,
        t_first_end=40,
        t_last_sent=60,
    )
    # Read back, the event instants are a typed array (empty here): the same record otherwise.
    assert list(iter_lines([encode_record(r)])) == [dataclasses.replace(r, ev_t=instants(()))]
    old = json.loads(encode_record(rec(t_end=99)))
    for key in ("retry_after_s", "attempts", "first_status", "first_error"):
        del old[key]
    del old["t_first_end"], old["t_last_sent"]
    assert list(iter_lines([json.dumps(old).encode()])) == [rec(t_end=99, ev_t=instants(()))]


def test_spec_and_flags() -> None:
    spec = load_spec({"target": {"retry": {"max_retries": 2, "max_wait": "5s"}}})
    assert retry_policy(spec.target) == RetryPolicy(2, 1.0, 5.0)
    from latbench.cli.common import spec_from_args
    from latbench.cli.main import build_parser

    argv = ["run", "--requests", "1", "--retries", "3", "--retry-max-wait", "2m"]
    ns = build_parser().parse_args(argv)
    data = spec_from_args(ns)
    assert retry_policy(load_spec(data).target) == RetryPolicy(3, 1.0, 120.0)


# --- over a socket: the simulator refuses, the client retries -----------------------------------


def endpoint(url: str, policy: RetryPolicy, total: float = 10.0) -> Endpoint:
    opts = RequestOptions("sim-model", True, True, {})
    return Endpoint(url, API_KINDS["chat"], opts, {}, Timeouts(total=total), policy)


def refuse(every: int = 1, status: int = 429, retry_after: object = 0) -> dict[str, Any]:
    return {"kind": "http_status", "status": status, "every": every, "retry_after": retry_after}


async def test_a_refusal_is_retried_and_the_record_says_so(serve, http) -> None:
    url = await serve(faults=[refuse(every=2)])  # requests 2, 4, ... are refused
    policy = RetryPolicy(max_retries=2)
    assert (await one(http, endpoint(url, policy), ITEM)).attempts == 1
    r = await one(http, endpoint(url, policy), ITEM)
    assert r.ok and r.attempts == 2 and len(r.ev_t) == 4
    assert (r.first_status, r.first_error) == (429, ErrorKind.RATE_LIMITED)
    assert r.t_sent < (r.t_first_end or 0) <= (r.t_last_sent or 0) < r.ev_t[0]


async def test_without_retry_after_the_backoff_is_waited(serve, http) -> None:
    url = await serve(faults=[refuse(every=2, status=529, retry_after="none")])
    await one(http, endpoint(url, RetryPolicy(max_retries=1, backoff=0.2)), ITEM)
    r = await one(http, endpoint(url, RetryPolicy(max_retries=1, backoff=0.2)), ITEM)
    assert r.ok and r.attempts == 2 and r.first_error is ErrorKind.OVERLOADED
    assert (r.t_last_sent or 0) - (r.t_first_end or 0) >= 200_000_000


async def test_retries_run_out_and_the_last_refusal_is_the_outcome(serve_app, http) -> None:
    server = await serve_app(faults=[refuse()])
    url = base_url(server)
    r = await one(http, endpoint(url, RetryPolicy(max_retries=2)), ITEM)
    assert r.error is ErrorKind.RATE_LIMITED and r.status == 429 and r.attempts == 3
    assert server.app[STATE].requests == 3


@pytest.mark.parametrize(
    ("policy", "total"),
    [
        (RetryPolicy(max_retries=3, max_wait=0.5), 10.0),  # Retry-After 1 s > max_wait
        (RetryPolicy(max_retries=3), 0.5),  # the wait would outlast the total timeout
    ],
    ids=["max_wait", "total_timeout"],
)
async def test_no_retry_past_the_limits(serve_app, http, policy: RetryPolicy, total: float) -> None:
    server = await serve_app(faults=[refuse(retry_after=1)])
    url = base_url(server)
    r = await one(http, endpoint(url, policy, total), ITEM)
    assert r.error is ErrorKind.RATE_LIMITED and r.attempts == 1 and r.retry_after_s == 1.0
    assert server.app[STATE].requests == 1


async def test_a_stream_that_failed_after_output_is_not_retried(serve_app, http) -> None:
    server = await serve_app(api="anthropic", faults=[{"kind": "error_event", "after": 2}])
    url = base_url(server)
    ep = endpoint(url, RetryPolicy(max_retries=3))
    ep = Endpoint(
        url, API_KINDS["anthropic"], ep.options, {"anthropic-version": "x"}, ep.timeouts, ep.retry
    )
    r = await one(http, ep, ITEM)
    assert r.error is ErrorKind.OVERLOADED and r.attempts == 1 and r.ev_kind == "cc"
    assert server.app[STATE].requests == 1


async def test_an_abort_while_waiting_returns_a_cancelled_record(serve_app, http) -> None:
    server = await serve_app(faults=[refuse(retry_after=30)])
    url = base_url(server)
    ep = endpoint(url, RetryPolicy(max_retries=1), total=60)  # room for the 30 s wait
    task = asyncio.create_task(one(http, ep, ITEM))
    deadline = time.monotonic() + 5
    while server.app[STATE].requests < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    task.cancel()
    r = await task  # a record, not an exception
    assert r.error is ErrorKind.CANCELLED and r.attempts == 1


# --- a run: what the records file and the summary show -----------------------------------------


def test_a_run_with_retries_records_them_and_counts_requests_once(tmp_path: Path) -> None:
    """`latbench run --api anthropic` with no target: the built-in simulator speaks Anthropic
    and refuses every third request with a 429; every request succeeds on its retry."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "validity: {ttft_tolerance: 50ms, itl_tolerance: 50ms, loop_lag_p99: 50ms,"
        " queue_delay_p99: 50ms}\n"
        "sim: {faults: [{kind: http_status, status: 429, every: 3, retry_after: 0}]}\n"
    )
    args = ["--spec", str(spec), "--out", str(tmp_path), "--json", "--requests", "12"]
    args += ["--api", "anthropic", "--concurrency", "1", "--output-tokens", "4", "--retries", "2"]
    args += ["--sim", "ttft=0.01", "--sim", "itl=0.002"]
    p = latbench("run", *args, timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["requests"]["failed"] == 0 and summary["errors"]["total"] == 0
    (records,) = tmp_path.glob("*/records.jsonl")
    recs = read_records(records).records
    assert len(recs) == 12 and all(r.ok for r in recs)
    retried = [r for r in recs if r.attempts > 1]
    # Every third server request is refused and retried at once: 12 requests take 17 attempts.
    assert sum(r.attempts for r in recs) == 17 and len(retried) == 5
    assert all(r.first_error is ErrorKind.RATE_LIMITED and r.ok for r in retried)
    assert all(r.t_sent < (r.t_last_sent or 0) for r in retried)


# --- the simulator's rate limit ---------------------------------------------------------------


def test_token_bucket() -> None:
    from latbench.sim.ratelimit import TokenBucket

    b = TokenBucket(rate=2.0)  # holds one second's worth: 2
    assert [b.take(10.0), b.take(10.0)] == [0.0, 0.0]
    assert b.take(10.0) == pytest.approx(0.5)  # a token is back in half a second
    assert b.take(10.25) == pytest.approx(0.25)
    assert b.take(10.5) == 0.0
    assert [b.take(100.0), b.take(100.0), b.take(100.0) > 0] == [0.0, 0.0, True]  # burst cap
    assert TokenBucket(rate=0.1).burst == 1.0  # always room for one request


async def test_the_simulators_rate_limit_answers_429_with_the_wait(serve_app, http) -> None:
    server = await serve_app(rate_limit=1.0)  # one request a second, no burst beyond it
    url = base_url(server)
    records = [await one(http, endpoint(url, RetryPolicy()), ITEM) for _ in range(2)]
    assert [r.error for r in records] == [None, ErrorKind.RATE_LIMITED]
    refused = records[1]
    assert refused.status == 429 and refused.retry_after_s is not None
    # retry-after-ms gives the bucket's exact wait (a second less the time since the first
    # request), finer than Retry-After's whole second.
    assert 0 < refused.retry_after_s < 1.0
    assert server.app[STATE].requests == 1  # a refused request is not served
    # Retried, the same request waits for its token and gets through.
    r = await one(http, endpoint(url, RetryPolicy(max_retries=2)), ITEM)
    assert r.ok and r.attempts == 2 and r.first_error is ErrorKind.RATE_LIMITED
    assert server.app[STATE].requests == 2
