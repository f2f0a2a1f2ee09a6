"""The simulated server, over real sockets on 127.0.0.1.

Format and fault tests run the app in this process (timing does not matter to them); timing and
load tests run it in a child process via `SimProcess`, so its pacing is not disturbed by the test's
own event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from kit.sim import FAST, Serve

from latbench import SpecError
from latbench.shared import rxstamp
from latbench.sim import (
    FaultSpec,
    SimConfig,
    SimError,
    SimProcess,
    capacity_rps,
    create_app,
    events_for,
    service_time_s,
)
from latbench.sim.__main__ import add_sim_arguments, config_from_args, main
from latbench.sim.engine import Engine

DONE = b"data: [DONE]"


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "sim-model",
        "messages": [{"role": "user", "content": "one two three"}],
        **extra,
    }


def cmpl_body(**extra: Any) -> dict[str, Any]:
    return {"model": "sim-model", "prompt": "one two three", **extra}


def body_for(api: str, **extra: Any) -> dict[str, Any]:
    return chat_body(**extra) if api == "chat" else cmpl_body(**extra)


def path_for(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


def split_sse(raw: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, checking vLLM's framing on the way."""
    assert raw.endswith(b"\n\n"), raw[-40:]
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") for e in events), events
    return [e.removeprefix(b"data: ") for e in events]


async def stream(
    http: aiohttp.ClientSession, url: str, api: str, **extra: Any
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """POST a streaming request; the decoded JSON events (before [DONE]) and the raw payloads."""
    async with http.post(url + path_for(api), json=body_for(api, stream=True, **extra)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        payloads = split_sse(await r.read())
    assert payloads[-1] == b"[DONE]" and payloads.count(b"[DONE]") == 1
    return [orjson.loads(p) for p in payloads[:-1]], payloads


async def read_until_cut(resp: aiohttp.ClientResponse) -> tuple[bytes, Exception | None]:
    """Everything received until the stream ended, and the error if it ended abruptly."""
    buf = b""
    try:
        async for chunk in resp.content.iter_any():
            buf += chunk
    except aiohttp.ClientPayloadError as e:
        return buf, e
    return buf, None


def texts(events: list[dict[str, Any]], field: str) -> list[str]:
    out = []
    for e in events:
        for c in e["choices"]:
            value = c["delta"].get(field) if "delta" in c else c.get(field)
            if value:
                out.append(value)
    return out


# --- stream format ---------------------------------------------------------------------------


async def test_completions_stream_is_framed_exactly_like_vllm(serve: Serve, http) -> None:
    url = await serve()
    events, payloads = await stream(http, url, "completions", max_tokens=3)
    assert len(events) == 3  # three tokens, no usage chunk without include_usage
    first = events[0]
    cid, created = first["id"], first["created"]
    assert cid.startswith("cmpl-") and len(cid) > 10 and isinstance(created, int)
    expected = (
        f'{{"id":"{cid}","object":"text_completion","created":{created},"model":"sim-model",'
        '"choices":[{"index":0,"text":" the","logprobs":null,"finish_reason":null,'
        '"stop_reason":null}],"usage":null}'
    )
    assert payloads[0] == expected.encode()
    assert [e["id"] for e in events] == [cid] * 3
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, "length"]
    assert "".join(texts(events, "text")) == " the of and"


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
async def test_a_body_not_labelled_json_is_refused_like_vllm(
    serve: Serve, http, content_type: str | None
) -> None:
    url = await serve()
    headers = {} if content_type is None else {"Content-Type": content_type}
    body = orjson.dumps(body_for("chat", stream=True))
    async with http.post(url + path_for("chat"), data=body, headers=headers) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert "Only 'application/json' is allowed" in error["message"]


async def test_chat_stream_starts_with_a_role_chunk(serve: Serve, http) -> None:
    url = await serve()
    events, payloads = await stream(http, url, "chat", max_tokens=2)
    cid, created = events[0]["id"], events[0]["created"]
    assert cid.startswith("chatcmpl-")
    head = (
        f'{{"id":"{cid}","object":"chat.completion.chunk","created":{created},"model":"sim-model"'
    )
    assert (
        payloads[0]
        == (
            head + ',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}]}'
        ).encode()
    )
    assert (
        payloads[1]
        == (
            head + ',"choices":[{"index":0,"delta":{"content":" the"},"logprobs":null,'
            '"finish_reason":null}]}'
        ).encode()
    )
    assert events[2]["choices"][0] == {
        "index": 0,
        "delta": {"content": " of"},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert len(events) == 3 and all("usage" not in e for e in events)


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_include_usage_adds_one_final_usage_chunk(serve: Serve, http, api: str) -> None:
    url = await serve()
    events, _ = await stream(http, url, api, max_tokens=4, stream_options={"include_usage": True})
    *tokens, last = events
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 3, "total_tokens": 7, "completion_tokens": 4}
    assert tokens[-1]["choices"][0]["finish_reason"] == "length"
    assert all(e.get("usage") is None for e in tokens)  # per-chunk usage only on request


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_continuous_usage_is_cumulative_on_every_chunk(serve: Serve, http, api: str) -> None:
    url = await serve(tokens_per_event=2)
    options = {"include_usage": True, "continuous_usage_stats": True}
    events, _ = await stream(http, url, api, max_tokens=5, stream_options=options)
    completions = [e["usage"]["completion_tokens"] for e in events]
    role = [0] if api == "chat" else []
    assert completions == [*role, 2, 4, 5, 5]  # token events, then the final usage chunk
    assert all(e["usage"]["prompt_tokens"] == 3 for e in events)
    assert all(e["usage"]["total_tokens"] == 3 + e["usage"]["completion_tokens"] for e in events)


async def test_tokens_per_event_packs_k_tokens_and_counts_tokens(serve: Serve, http) -> None:
    url = await serve(tokens_per_event=3)
    events, _ = await stream(
        http, url, "completions", max_tokens=7, stream_options={"include_usage": True}
    )
    words = [len(t.split()) for t in texts(events, "text")]
    assert words == [3, 3, 1]
    assert events[-1]["usage"]["completion_tokens"] == 7


async def test_reasoning_comes_before_content_in_chat_only(serve: Serve, http) -> None:
    url = await serve(reasoning_tokens=3)
    events, _ = await stream(
        http, url, "chat", max_tokens=5, stream_options={"include_usage": True}
    )
    deltas = [e["choices"][0]["delta"] for e in events[1:-1]]
    assert [next(iter(d)) for d in deltas] == ["reasoning_content"] * 3 + ["content"] * 2
    assert events[-1]["usage"]["completion_tokens"] == 5  # reasoning is part of max_tokens
    cmpl, _ = await stream(http, url, "completions", max_tokens=5)
    assert len(texts(cmpl, "text")) == 5 and " think" not in "".join(texts(cmpl, "text"))


async def test_non_stream_responses(serve: Serve, http) -> None:
    url = await serve(reasoning_tokens=1)
    async with http.post(url + "/v1/completions", json=cmpl_body(max_tokens=3)) as r:
        assert r.status == 200 and r.content_type == "application/json"
        c = await r.json()
    assert c["object"] == "text_completion" and c["id"].startswith("cmpl-")
    assert c["choices"][0]["text"] == " the of and"
    assert c["choices"][0]["finish_reason"] == "length"
    assert c["usage"] == {"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3}

    async with http.post(url + "/v1/chat/completions", json=chat_body(max_tokens=3)) as r:
        m = await r.json()
    assert m["object"] == "chat.completion" and m["id"].startswith("chatcmpl-")
    message = m["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["reasoning_content"] == " think"
    assert message["content"] == " of and"
    assert m["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("api", "fields", "prompt_tokens"),
    [
        ("completions", {"prompt": "a b  c\td"}, 4),
        ("completions", {"prompt": [5, 6, 7, 8, 9]}, 5),
        ("completions", {"prompt": ["a b"]}, 2),
        (
            "chat",
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "x y z"}]},
                ]
            },
            5,
        ),
    ],
)
async def test_prompt_tokens_are_words_or_token_ids(
    serve: Serve, http, api: str, fields: dict[str, Any], prompt_tokens: int
) -> None:
    url = await serve()
    body = {"model": "sim-model", "max_tokens": 1, **fields}
    async with http.post(url + path_for(api), json=body) as r:
        assert (await r.json())["usage"]["prompt_tokens"] == prompt_tokens


async def test_output_length_eos_min_tokens_and_defaults(serve: Serve, http) -> None:
    url = await serve(eos_probability=1.0, default_max_tokens=6)

    async def finish(**extra: Any) -> tuple[str, int]:
        async with http.post(url + "/v1/completions", json=cmpl_body(**extra)) as r:
            c = await r.json()
        return c["choices"][0]["finish_reason"], c["usage"]["completion_tokens"]

    assert await finish(max_tokens=10) == ("stop", 1)  # the first token is certain to be EOS
    assert await finish(max_tokens=10, min_tokens=4) == ("stop", 4)
    assert await finish(max_tokens=10, ignore_eos=True) == ("length", 10)
    assert await finish(ignore_eos=True) == ("length", 6)  # the configured default
    async with http.post(
        url + "/v1/chat/completions", json=chat_body(max_completion_tokens=2, ignore_eos=True)
    ) as r:
        assert (await r.json())["usage"]["completion_tokens"] == 2


async def test_models_and_health(serve: Serve, http) -> None:
    url = await serve(model="m1", max_model_len=1000)
    async with http.get(url + "/health") as r:
        assert r.status == 200
    async with http.get(url + "/v1/models") as r:
        listing = await r.json()
    assert listing["object"] == "list"
    (model,) = listing["data"]
    assert model["id"] == "m1" and model["object"] == "model"
    assert model["owned_by"] == "latbench-sim" and model["max_model_len"] == 1000
    assert isinstance(model["created"], int)


# --- errors ----------------------------------------------------------------------------------


async def test_unknown_model_is_a_vllm_404(serve: Serve, http) -> None:
    url = await serve()
    async with http.post(url + "/v1/completions", json=cmpl_body(model="gpt-x")) as r:
        assert r.status == 404
        assert await r.json() == {
            "error": {
                "message": "The model `gpt-x` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }


@pytest.mark.parametrize(
    ("api", "body", "param"),
    [
        ("completions", b"{not json", None),
        ("completions", b"[1, 2]", None),
        ("completions", {"model": "sim-model"}, "prompt"),
        ("chat", {"model": "sim-model", "messages": []}, "messages"),
        ("completions", cmpl_body(max_tokens=0), "max_tokens"),
        ("chat", chat_body(max_completion_tokens=-3), "max_completion_tokens"),
        ("completions", cmpl_body(max_tokens="many"), "max_tokens"),
        ("completions", cmpl_body(max_tokens=5000), None),  # beyond max_model_len
        ("completions", cmpl_body(stream_options={"include_usage": True}), "stream_options"),
        ("completions", cmpl_body(max_tokens=3, min_tokens=4), "min_tokens"),
    ],
)
async def test_bad_requests_are_vllm_400s(
    serve: Serve, http, api: str, body: bytes | dict[str, Any], param: str | None
) -> None:
    url = await serve()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with http.post(url + path_for(api), data=data, headers=headers) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert error["param"] == param and error["message"]


# --- faults ----------------------------------------------------------------------------------


async def test_http_status_fault_every_nth_request(serve: Serve, http) -> None:
    url = await serve(faults=[{"kind": "http_status", "every": 2, "status": 503}])
    statuses = []
    for _ in range(4):
        async with http.post(url + "/v1/completions", json=cmpl_body(max_tokens=1)) as r:
            statuses.append(r.status)
            if r.status == 503:
                assert r.headers["Retry-After"] == "1"
                error = (await r.json())["error"]
                assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
    assert statuses == [200, 503, 200, 503]


async def test_http_500_fault_has_no_retry_after(serve: Serve, http) -> None:
    url = await serve(faults=[{"kind": "http_status"}])
    async with http.post(url + "/v1/chat/completions", json=chat_body(stream=True)) as r:
        assert r.status == 500 and "Retry-After" not in r.headers
        assert (await r.json())["error"]["type"] == "InternalServerError"


async def test_malformed_fault_sends_a_broken_event_after_k_tokens(serve: Serve, http) -> None:
    url = await serve(faults=[{"kind": "malformed", "after": 2}])
    async with http.post(url + "/v1/chat/completions", json=chat_body(stream=True)) as r:
        payloads = split_sse(await r.read())
    # role, two tokens, the broken event, then the end marker
    assert [len(p) > 0 for p in payloads] == [True] * 5
    assert payloads[3] == b"{not json" and payloads[4] == b"[DONE]"
    assert len(texts([orjson.loads(p) for p in payloads[:3]], "content")) == 2


async def test_error_event_fault_mid_stream(serve: Serve, http) -> None:
    url = await serve(faults=[{"kind": "error_event", "after": 1}])
    async with http.post(url + "/v1/completions", json=cmpl_body(stream=True)) as r:
        assert r.status == 200
        payloads = split_sse(await r.read())
    assert len(payloads) == 3 and payloads[2] == b"[DONE]"
    error = orjson.loads(payloads[1])["error"]
    assert error["type"] == "InternalServerError" and error["code"] == 500 and error["message"]


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_truncate_fault_cuts_the_connection(serve: Serve, http, api: str) -> None:
    url = await serve(faults=[{"kind": "truncate", "after": 2}])
    async with http.post(url + path_for(api), json=body_for(api, stream=True)) as r:
        raw, err = await read_until_cut(r)
    assert err is not None  # the chunked body never got its final chunk
    assert DONE not in raw
    token_events = [e for e in split_sse(raw) if b"role" not in e]
    assert len(token_events) == 2


async def test_truncate_fault_non_stream_is_a_short_body(serve: Serve, http) -> None:
    url = await serve(faults=[{"kind": "truncate"}])
    async with http.post(url + "/v1/completions", json=cmpl_body(max_tokens=4)) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_stall_first_holds_then_hangs_up_without_a_token(serve: Serve, http) -> None:
    url = await serve(faults=[{"kind": "stall_first", "stall_s": 0.2}])
    t0 = time.monotonic()
    async with http.post(url + "/v1/chat/completions", json=chat_body(stream=True)) as r:
        assert r.status == 200  # headers come at once, as from vLLM
        raw, err = await read_until_cut(r)
    assert raw == b"" and err is not None
    assert time.monotonic() - t0 >= 0.2


async def test_stall_mid_stalls_after_k_events(serve: Serve, http) -> None:
    url = await serve(faults=[{"kind": "stall_mid", "after": 2, "stall_s": 0.25}])
    arrivals: list[float] = []
    async with http.post(url + "/v1/completions", json=cmpl_body(stream=True)) as r:
        try:
            async for line in r.content:
                if line.startswith(b"data: "):
                    arrivals.append(time.monotonic())
        except aiohttp.ClientPayloadError:
            cut = time.monotonic()
        else:
            pytest.fail("the stall should end with a cut connection")
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] < 0.1  # normal pacing (1 ms) before the stall
    assert cut - arrivals[1] >= 0.25


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [("error_event", 500, b'"InternalServerError"'), ("malformed", 200, b"{not json")],
)
async def test_mid_stream_faults_on_non_stream_requests(
    serve: Serve, http, kind: str, status: int, body: bytes
) -> None:
    url = await serve(faults=[{"kind": kind}])
    async with http.post(url + "/v1/completions", json=cmpl_body(max_tokens=2)) as r:
        assert r.status == status
        assert body in await r.read()


async def test_a_client_that_hangs_up_frees_its_slot(serve: Serve, http) -> None:
    url = await serve(max_batch=1, max_model_len=10**6)
    endless = cmpl_body(stream=True, max_tokens=10**6 - 10)  # some 17 minutes at 1 ms a token
    async with http.post(url + "/v1/completions", json=endless) as r:
        assert (await r.content.readline()).startswith(b"data: ")
    async with http.post(url + "/v1/completions", json=cmpl_body(stream=True, max_tokens=2)) as r:
        assert DONE in await asyncio.wait_for(r.read(), 5)


async def test_truth_keeps_only_the_last_requests(serve: Serve, http) -> None:
    url = await serve(truth_capacity=2)
    for n in (1, 2, 3):
        async with http.post(url + "/v1/completions", json=cmpl_body(max_tokens=n)) as r:
            assert r.status == 200
    truth = await get_truth(http, url, raw=True)
    assert truth["count"] == 2 and [q["tokens"] for q in truth["requests"]] == [2, 3]


async def test_stall_ends_at_shutdown(http) -> None:
    server = TestServer(
        create_app(SimConfig(**FAST, faults=[{"kind": "stall_first"}])), host="127.0.0.1"
    )
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")

    async def request() -> tuple[bytes, Exception | None]:
        async with http.post(url + "/v1/completions", json=cmpl_body(stream=True)) as r:
            return await read_until_cut(r)

    task = asyncio.create_task(request())
    await poll(lambda: truth_count(http, url), 1)
    t0 = time.monotonic()
    await server.close()
    raw, err = await asyncio.wait_for(task, 5)
    assert raw == b"" and err is not None
    assert time.monotonic() - t0 < 3  # not the default hour-long stall


async def truth_count(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/sim/truth") as r:
        return int((await r.json())["count"])


async def poll(probe: Callable[[], Awaitable[Any]], want: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await probe()) != want:
        assert time.monotonic() < deadline, f"still {got!r}, wanted {want!r}"
        await asyncio.sleep(0.01)


def test_fault_spec_parsing() -> None:
    f = FaultSpec.parse("truncate,every=3,after=2")
    assert (f.kind, f.every, f.after, f.status) == ("truncate", 3, 2, 500)
    assert [f.applies_to(n) for n in range(1, 7)] == [False, False, True, False, False, True]
    assert FaultSpec.parse("http_status,status=429").status == 429
    with pytest.raises(ValueError, match="KEY=VALUE"):
        FaultSpec.parse("truncate,3")
    with pytest.raises(ValueError, match="kind"):
        FaultSpec.parse("explode")


# --- truth and timing, in a child process ----------------------------------------------------


async def get_truth(http: aiohttp.ClientSession, url: str, raw: bool = False) -> dict[str, Any]:
    async with http.get(url + "/sim/truth" + ("?raw=1" if raw else "")) as r:
        return await r.json()


async def test_truth_matches_configured_ttft_and_itl(sim, http) -> None:
    s = sim(ttft=0.05, itl=0.005)
    n_requests, n_tokens = 8, 101
    body = cmpl_body(stream=True, max_tokens=n_tokens)

    async def one() -> None:
        async with http.post(s.url + "/v1/completions", json=body) as r:
            assert DONE in await r.read()

    await asyncio.gather(*(one() for _ in range(n_requests)))  # no load terms: all independent
    truth = await get_truth(http, s.url, raw=True)
    assert truth["count"] == n_requests and truth["tokens"] == n_requests * n_tokens
    assert truth["ttft"]["n"] == n_requests and truth["itl"]["n"] == n_requests * (n_tokens - 1)
    # uvloop's timers wake within about a millisecond of the deadline (rarely up to 0.5 ms
    # early), and TTFT also holds the parsing of the request. The sim shares two cores with this
    # test (and whatever else runs), so a request can be several ms late: the median is checked
    # tightly, the max loosely.
    assert 0.0495 <= truth["ttft"]["p50"] < 0.056
    assert truth["ttft"]["max"] < 0.08
    # Deadlines are absolute: lateness does not accumulate over a stream, so the mean gap is off
    # by at most (last event's lateness - first's) / 100. Relative sleeps would drift by 100x.
    assert truth["itl"]["mean"] == pytest.approx(0.005, abs=0.0002)
    for req in truth["requests"]:
        ev = req["events_ns"]
        assert len(ev) == n_tokens and req["tokens"] == n_tokens and req["fault"] is None
        assert (ev[-1] - ev[0]) / 1e9 == pytest.approx(0.5, abs=0.02)
        assert ev[0] - req["arrival_ns"] >= 49_500_000

    async with http.post(s.url + "/sim/truth/reset") as r:
        assert r.status == 200
    empty = await get_truth(http, s.url)
    assert empty["count"] == 0 and empty["ttft"]["n"] == 0 and empty["ttft"]["mean"] is None


def _raw_completion(url: str) -> tuple[socket.socket, bytes, bytes]:
    """A blocking connection to the simulator at `url`, and a completion request's head and
    body as bytes, so that a test decides when each byte leaves."""
    body = orjson.dumps(cmpl_body(max_tokens=2))
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port))), head, body


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length, read off a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


async def test_truth_stamps_arrival_at_the_first_bytes_not_at_the_handler(sim, http) -> None:
    # Arrival is the read that brought a request's first bytes (sim/arrival.py): the server's
    # own parsing counts in its truth, not against the client it scores. Blocking sockets, so
    # each byte leaves exactly when the test says; the pauses are the slow client's, on purpose.
    s = sim(ttft=0.01, itl=0.001)
    sock, head, body = _raw_completion(s.url)
    with sock:
        # 1. Headers in two reads 0.3 s apart: aiohttp cannot start the handler before the second.
        t_a = time.monotonic_ns()
        sock.sendall(head[:20])
        time.sleep(0.3)
        t_a2 = time.monotonic_ns()
        sock.sendall(head[20:] + body)
        _read_response(sock)
        # 2. After a GET on the same connection, a body in two reads: the GET's read is its own,
        #    and the body's second read (while the request is being handled) is nobody's.
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: sim\r\n\r\n")
        _read_response(sock)
        t_b = time.monotonic_ns()
        sock.sendall(head + body[:10])
        time.sleep(0.3)
        sock.sendall(body[10:])
        _read_response(sock)
        # 3. So the next request's arrival is its own read, not that stale one.
        t_c = time.monotonic_ns()
        sock.sendall(head + body)
        _read_response(sock)
    a, b, c = sorted(
        (await get_truth(http, s.url, raw=True))["requests"], key=lambda r: r["arrival_ns"]
    )
    assert t_a <= a["arrival_ns"] < t_a2 <= a["handler_ns"]
    assert a["events_ns"][0] - a["arrival_ns"] >= 0.3e9  # the server's intake is in its TTFT
    assert t_b <= b["arrival_ns"] <= b["handler_ns"] and b["arrival_ns"] - t_b < 0.3e9
    assert t_c <= c["arrival_ns"] <= c["handler_ns"]


@pytest.mark.skipif(not rxstamp.AVAILABLE, reason="kernel receive stamps are Linux's")
async def test_truth_arrival_is_the_kernels_while_the_server_is_not_running(sim, http) -> None:
    # A simulator the OS does not run reads nothing; the kernel still stamps the request when it
    # comes in, and that is its arrival: the wait to be scheduled is the server's, not the
    # client's it scores.
    s = sim(ttft=0.01, itl=0.001)
    sock, head, body = _raw_completion(s.url)
    with sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: sim\r\n\r\n")  # accepted, and read
        _read_response(sock)
        os.kill(s.pid, signal.SIGSTOP)
        try:
            t_sent = time.monotonic_ns()
            sock.sendall(head + body)
            time.sleep(0.3)
        finally:
            os.kill(s.pid, signal.SIGCONT)
        _read_response(sock)
    (req,) = (await get_truth(http, s.url, raw=True))["requests"]
    assert req["handler_ns"] - t_sent >= 0.3e9
    assert 0 <= req["arrival_ns"] - t_sent < 0.1e9
    assert req["events_ns"][0] - req["arrival_ns"] >= 0.3e9  # in the server's own TTFT


async def test_max_batch_queues_requests_fifo(sim, http) -> None:
    cfg = {"ttft": 0.05, "itl": 0.01, "max_batch": 2}
    s = sim(**cfg)
    tokens = 10
    body = cmpl_body(stream=True, max_tokens=tokens)

    async def one() -> None:
        async with http.post(s.url + "/v1/completions", json=body) as r:
            assert DONE in await r.read()

    await asyncio.gather(*(one() for _ in range(4)))
    reqs = (await get_truth(http, s.url, raw=True))["requests"]
    assert len(reqs) == 4
    t0 = min(r["arrival_ns"] for r in reqs)
    a, b, c, d = sorted(reqs, key=lambda r: r["events_ns"][0])
    ttft = [(r["events_ns"][0] - r["arrival_ns"]) / 1e9 for r in (a, b, c, d)]
    config = SimConfig(**cfg)
    service = service_time_s(config, 2, events_for(tokens, 0, 1))
    assert service == pytest.approx(0.05 + 9 * 0.01)
    # Two are admitted at once; the other two wait about one whole service time for a slot, and
    # each gets the slot the moment one is freed (jitter: a few ms on a shared 2-core machine).
    assert max(ttft[:2]) < 0.065
    assert min(ttft[2:]) > service - 0.02
    assert c["arrival_ns"] < d["arrival_ns"]  # first come, first served
    for queued, before in ((c, a), (d, b)):
        freed = before["events_ns"][-1]
        assert 0.0495 <= (queued["events_ns"][0] - freed) / 1e9 < 0.065
    # Four requests through a capacity of B / S(B) requests/s take 4 / capacity seconds.
    end = max(r["events_ns"][-1] for r in reqs)
    expected = 4 / capacity_rps(config, events_for(tokens, 0, 1))
    assert (end - t0) / 1e9 == pytest.approx(expected, abs=0.015)


async def test_per_stream_load_slows_ttft_and_itl(sim, http) -> None:
    s = sim(ttft=0.03, itl=0.01, ttft_per_stream=0.05, itl_per_stream=0.01)
    body = cmpl_body(stream=True, max_tokens=16)

    async def one() -> None:
        async with http.post(s.url + "/v1/completions", json=body) as r:
            assert DONE in await r.read()

    await asyncio.gather(one(), one())
    reqs = (await get_truth(http, s.url, raw=True))["requests"]
    first, second = sorted(reqs, key=lambda r: r["arrival_ns"])
    ttft = [(r["events_ns"][0] - r["arrival_ns"]) / 1e9 for r in (first, second)]
    # The second is admitted while the first holds a slot: 50 ms more TTFT (jitter: a few ms).
    assert 0.0295 <= ttft[0] < 0.04
    assert 0.0795 <= ttft[1] < 0.09
    # The second outlives the first, so every step of the first has one other stream: 10 ms more.
    ev = first["events_ns"]
    assert (ev[-1] - ev[0]) / 1e9 / (len(ev) - 1) == pytest.approx(0.02, abs=0.001)


async def test_engine_hands_slots_over_in_order_past_cancelled_waiters() -> None:
    engine = Engine(SimConfig(ttft=0, itl=0, max_batch=1))
    plan = engine.plan(max_tokens=1, reasoning=False)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str) -> None:
        async with engine.admit(plan):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("first"))
    await poll_sync(lambda: engine.active, 1)
    waiters = {n: asyncio.create_task(hold(n)) for n in ("second", "third", "fourth")}
    await poll_sync(lambda: engine.queued, 3)
    waiters["second"].cancel()
    await poll_sync(lambda: engine.queued, 2)
    release.set()
    await asyncio.gather(first, waiters["third"], waiters["fourth"])
    assert order == ["first", "third", "fourth"]
    assert engine.active == 0 and engine.queued == 0


async def poll_sync(probe: Callable[[], Any], want: Any, timeout: float = 5.0) -> None:
    async def probe_async() -> Any:
        return probe()

    await poll(probe_async, want, timeout)


def test_capacity_formula() -> None:
    cfg = SimConfig(ttft=0.05, itl=0.01, max_batch=4, ttft_per_stream=0.01, itl_per_stream=0.001)
    # S(4) = 0.05 + 3 * 0.01 + 9 * (0.01 + 3 * 0.001)
    assert service_time_s(cfg, 4, 10) == pytest.approx(0.197)
    assert capacity_rps(cfg, 10) == pytest.approx(4 / 0.197)
    unbatched = cfg.model_copy(update={"max_batch": None})
    assert capacity_rps(unbatched, 10) == pytest.approx(1 / (0.01 + 9 * 0.001))
    assert capacity_rps(SimConfig(), 10) == math.inf
    assert events_for(7, 0, 3) == 3 and events_for(7, 2, 3) == 1 + 2


# --- the child process and its CLI -----------------------------------------------------------


async def test_sim_process_stops_a_stalled_server_promptly(sim, http) -> None:
    s = sim(faults=[{"kind": "stall_first"}])
    assert s.url.startswith("http://127.0.0.1:") and s.pid > 0

    async def request() -> Exception | None:
        async with http.post(s.url + "/v1/completions", json=cmpl_body(stream=True)) as r:
            return (await read_until_cut(r))[1]

    task = asyncio.create_task(request())
    await poll(lambda: truth_count(http, s.url), 1)
    t0 = time.monotonic()
    assert await asyncio.to_thread(s.stop) == 0  # a clean exit on SIGTERM
    assert time.monotonic() - t0 < 4
    assert await asyncio.wait_for(task, 5) is not None


def test_sim_process_reports_why_the_child_failed() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = SimProcess(SimConfig(port=port))
        with pytest.raises(SimError, match="cannot listen"):
            proc.start()
    assert proc.stop() == 1


def test_cli_prints_one_line_and_exits_cleanly_on_sigint() -> None:
    cmd = [sys.executable, "-m", "latbench.sim", "--port", "0", "--model", "m"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # returns once the line is flushed, or at exit
        assert re.fullmatch(r"latbench-sim listening on http://127\.0\.0\.1:\d+\n", line), line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == b""


def parse(argv: list[str]) -> SimConfig:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_cli_flags_layer_over_config_files(tmp_path) -> None:
    file = tmp_path / "sim.yaml"
    file.write_text("model: from-file\nmax_batch: 8\nfaults: [{kind: truncate, every: 5}]\n")
    cfg = parse(
        [
            "--config", str(file),
            "--config-json", '{"max_batch": 4, "seed": 1}',
            "--ttft", "normal:0.05,0.005",
            "--itl", "0.02",
            "--tokens-per-event", "2",
            "--fault", "http_status,every=2,status=429",
        ]
    )  # fmt: skip
    assert cfg.model == "from-file" and cfg.max_batch == 4 and cfg.seed == 1
    assert (cfg.ttft.kind, cfg.ttft.mean, cfg.ttft.std) == ("normal", 0.05, 0.005)
    assert cfg.itl.mean == 0.02 and cfg.tokens_per_event == 2
    assert [(f.kind, f.every, f.status) for f in cfg.faults] == [
        ("truncate", 5, 500),
        ("http_status", 2, 429),
    ]
    assert parse([]) == SimConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x 1\nmodel: *x\n", "found the alias \\*x"),
        ("model: m\n" + "#" * (1 << 20), "over 1024 KiB; a simulator config is a small document"),
        ("model: " + "[" * 40 + "]" * 40 + "\n", "nested more than 32 levels deep"),
    ],
)
def test_config_file_has_the_spec_limits(tmp_path, text: str, message: str) -> None:
    """The simulator's settings file is read as a spec file is (shared.yamlfile)."""
    file = tmp_path / "sim.yaml"
    file.write_text(text)
    with pytest.raises(SpecError, match=f"--config: cannot read settings: .*{message}"):
        parse(["--config", str(file)])


def test_a_json_config_nested_past_the_recursion_limit_is_a_named_error(tmp_path) -> None:
    # json.loads raises RecursionError, not a parse error, on an array 100,000 deep.
    file = tmp_path / "sim.json"
    file.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpecError, match="--config: cannot read settings: RecursionError"):
        parse(["--config", str(file)])


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--ttft", "normal:fast"], "--ttft"),
        (["--fault", "explode"], "--fault"),
        (["--fault", "truncate,after"], "--fault"),
        (["--port", "http"], "--port"),
    ],
)
def test_cli_bad_flags_name_the_flag(argv: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--max-batch", "0"], "--max-batch"),
        (["--eos-probability", "2"], "--eos-probability"),
        (["--config-json", "[1]"], "--config-json"),
        (["--config-json", '{"colour": 1}'], "colour"),
    ],
)
def test_cli_bad_values_name_the_flag(argv: list[str], flag: str, capsys) -> None:
    assert main(argv) == 2
    assert f"error: {flag}" in capsys.readouterr().err
    with pytest.raises(SpecError, match=flag):
        parse(argv)
