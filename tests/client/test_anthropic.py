"""The Anthropic Messages API kind (`--api anthropic`): request body, event parsing, auth and
model listing, and the simulator's `anthropic` personality over real sockets."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from kit.client import one, options
from kit.sim import Serve

from latbench import ErrorKind, TargetError
from latbench.client import (
    API_KINDS,
    Endpoint,
    Timeouts,
    resolve_endpoint,
)
from latbench.client.apis import Event, MalformedEvent
from latbench.client.preflight import ANTHROPIC_VERSION
from latbench.spec import TargetSpec, WorkloadSpec
from latbench.workload import WorkItem

API = API_KINDS["anthropic"]
ITEM = WorkItem(
    prompt="one two three",
    messages=(
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three"},
    ),
    prompt_tokens=5,
    max_tokens=8,
)
HEADERS = {"anthropic-version": ANTHROPIC_VERSION}


def parse(obj: dict[str, Any]) -> Event:
    return API.parse(orjson.dumps(obj))


# --- request body ------------------------------------------------------------------------------


def test_body_moves_system_prompts_to_the_top_level_field() -> None:
    body = API.body(ITEM, options())
    assert body == {
        "model": "sim-model",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "system": "be brief",
    }


def test_body_extensions_only_when_asked_and_extra_body_wins() -> None:
    assert "ignore_eos" not in API.body(ITEM, options())
    body = API.body(ITEM, options(True, thinking={"type": "enabled", "budget_tokens": 1024}))
    assert body["ignore_eos"] is True and body["min_tokens"] == 8
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


# --- events ------------------------------------------------------------------------------------


def delta(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": 0, "delta": {"type": kind, **fields}}


EVENTS = [
    # message_start: input usage, cached tokens included; its output_tokens is a placeholder
    (
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 10,
                    "cache_read_input_tokens": 90,
                    "cache_creation_input_tokens": 5,
                    "output_tokens": 1,
                }
            },
        },
        Event(prompt_tokens=105),
    ),
    (delta("text_delta", text="Hi"), Event("c")),
    (delta("text_delta", text=""), Event()),
    (delta("thinking_delta", thinking="hmm"), Event("r")),
    (delta("signature_delta", signature="EqQB"), Event()),
    # A tool call: generated, but not the answer (METRICS.md); the empty first piece is nothing.
    (delta("input_json_delta", partial_json='{"a"'), Event("t")),
    (delta("input_json_delta", partial_json=""), Event()),
    (
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}},
        },
        Event("t"),
    ),
    (
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        Event(),
    ),
    (
        {"type": "content_block_start", "index": 0, "content_block": {"type": "redacted_thinking"}},
        Event("r"),
    ),
    (
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 42},
        },
        Event(None, 42, None, "max_tokens", usage_only=True),
    ),
    ({"type": "message_stop"}, Event(done=True)),
    ({"type": "ping"}, Event()),
    ({"type": "content_block_stop", "index": 0}, Event()),
    ({"type": "a_type_added_later", "x": 1}, Event()),  # the versioning policy: ignore
    (
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        Event(error="overloaded_error: Overloaded", error_kind=ErrorKind.OVERLOADED),
    ),
    (
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        Event(error="rate_limit_error: slow down", error_kind=ErrorKind.RATE_LIMITED),
    ),
    (
        {"type": "error", "error": {"type": "api_error", "message": "boom"}},
        Event(error="api_error: boom", error_kind=ErrorKind.SERVER_ERROR_EVENT),
    ),
]


@pytest.mark.parametrize(("obj", "event"), EVENTS, ids=[str(e[0]["type"]) for e in EVENTS])
def test_each_event_type(obj: dict[str, Any], event: Event) -> None:
    assert parse(obj) == event


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"no": "type"}', "without a string type"),
        (b'{"type": "content_block_delta", "delta": 3}', "without a delta object"),
        (b'{"type": "message_delta", "usage": 3}', "malformed usage"),
    ],
)
def test_malformed_events_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        API.parse(data)


# --- the simulator's anthropic personality, in this process (format, not timing) -----------


@pytest.fixture
def serve(serve: Serve) -> Serve:
    """The in-process simulator of tests/conftest.py, speaking Anthropic's Messages API."""
    return functools.partial(serve, api="anthropic")


def endpoint(url: str, headers: dict[str, str] | None = None) -> Endpoint:
    return Endpoint(
        url, API, options(True), HEADERS if headers is None else headers, Timeouts(idle=2, total=5)
    )


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs, checking that each event's name is its JSON type."""
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        name_line, data_line = block.split(b"\n")
        name = name_line.removeprefix(b"event: ").decode()
        data = orjson.loads(data_line.removeprefix(b"data: "))
        assert data["type"] == name
        out.append((name, data))
    return out


async def test_sim_stream_has_the_documented_event_sequence(serve, http) -> None:
    url = await serve(reasoning_tokens=2)
    body = API.body(ITEM, options()) | {"max_tokens": 4}
    async with http.post(url + "/v1/messages", json=body, headers=HEADERS) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(await r.read())
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",  # the signature closing the thinking block
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == 5  # "be brief" + "one two three"
    assert [e["delta"]["type"] for n, e in events if n == "content_block_delta"] == [
        "thinking_delta",
        "thinking_delta",
        "signature_delta",
        "text_delta",
        "text_delta",
    ]
    assert [e["index"] for n, e in events if n == "content_block_start"] == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2][1]["usage"] == {"output_tokens": 4}


async def test_sim_record_counts_thinking_as_reasoning(serve, http) -> None:
    url = await serve(reasoning_tokens=3)
    rec = await one(http, endpoint(url), ITEM)
    assert rec.ok, rec.error_detail
    assert rec.ev_kind == "rrrccccc"
    assert rec.ev_n is None  # Anthropic reports no per-event counts
    assert (rec.usage_prompt_tokens, rec.usage_completion_tokens) == (5, 8)
    assert rec.finish_reason == "max_tokens"


async def test_sim_non_stream_message(serve, http) -> None:
    url = await serve(reasoning_tokens=1)
    body = API.body(ITEM, options()) | {"stream": False, "max_tokens": 3}
    async with http.post(url + "/v1/messages", json=body, headers=HEADERS) as r:
        message = await r.json()
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 3}
    assert message["stop_reason"] == "max_tokens"


async def test_sim_refuses_what_the_real_api_refuses(serve, http) -> None:
    url = await serve()
    ok = API.body(ITEM, options())
    cases = [
        ({}, ok, 400, "anthropic-version"),
        (HEADERS, {k: v for k, v in ok.items() if k != "max_tokens"}, 400, "max_tokens"),
        (HEADERS, ok | {"messages": [{"role": "system", "content": "x"}]}, 400, "system"),
        (HEADERS, ok | {"model": "nope"}, 404, "nope"),
    ]
    for headers, body, status, words in cases:
        async with http.post(url + "/v1/messages", json=body, headers=headers) as r:
            assert r.status == status
            err = await r.json()
        assert err["type"] == "error" and words in err["error"]["message"]
    async with http.post(url + "/v1/chat/completions", json={}, headers=HEADERS) as r:
        assert r.status == 404  # an Anthropic server has no OpenAI routes


async def test_529_and_mid_stream_overload_are_overloaded(serve, http) -> None:
    url = await serve(faults=[{"kind": "http_status", "status": 529, "every": 2, "retry_after": 3}])
    assert (await one(http, endpoint(url), ITEM)).ok
    rec = await one(http, endpoint(url), ITEM)
    assert rec.error is ErrorKind.OVERLOADED and rec.status == 529
    assert rec.retry_after_s == 3.0
    assert "Simulated fault" in (rec.error_detail or "")

    url = await serve(faults=[{"kind": "error_event", "after": 2}])
    rec = await one(http, endpoint(url), ITEM)
    assert rec.error is ErrorKind.OVERLOADED and rec.status == 200
    assert rec.ev_kind == "cc"  # what streamed before the error is kept
    assert rec.error_detail == "overloaded_error: Overloaded"


async def test_429_is_rate_limited(serve, http) -> None:
    url = await serve(faults=[{"kind": "http_status", "status": 429}])
    rec = await one(http, endpoint(url), ITEM)
    assert rec.error is ErrorKind.RATE_LIMITED and rec.retry_after_s == 1.0
    async with http.post(
        url + "/v1/messages", json=API.body(ITEM, options()), headers=HEADERS
    ) as r:
        assert (await r.json())["error"]["type"] == "rate_limit_error"


# --- preflight: auth headers and the model list ----------------------------------------------


async def test_preflight_sends_x_api_key_and_version(
    serve, http, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await serve(api_key="sk-ant-test", model="claude-sim")
    monkeypatch.setenv("SIM_KEY", "sk-ant-test")
    target = TargetSpec(base_url=url, api="anthropic", api_key_env="SIM_KEY")
    ep = await resolve_endpoint(http, target, url, WorkloadSpec())
    assert ep.options.model == "claude-sim"  # auto-detected from Anthropic's model list
    assert ep.headers == {
        "Content-Type": "application/json",
        "anthropic-version": ANTHROPIC_VERSION,
        "x-api-key": "sk-ant-test",
    }
    rec = await one(http, ep, ITEM)
    assert rec.ok, rec.error_detail
    # A header the spec sets is kept, not overridden.
    pinned = target.model_copy(update={"headers": {"Anthropic-Version": "2099-01-01"}})
    ep = await resolve_endpoint(http, pinned, url, WorkloadSpec())
    assert ep.headers == {
        "Anthropic-Version": "2099-01-01",
        "Content-Type": "application/json",
        "x-api-key": "sk-ant-test",
    }

    monkeypatch.setenv("SIM_KEY", "wrong")
    with pytest.raises(TargetError, match="check the API key"):
        await resolve_endpoint(http, target, url, WorkloadSpec())


async def test_a_paged_model_list_neither_names_nor_rules_out_a_model(http) -> None:
    """Anthropic pages /v1/models; a model on a later page must not be called unknown."""
    from aiohttp import web

    seen: list[str] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.query.get("limit", ""))
        body = {"data": [{"type": "model", "id": "claude-a"}], "has_more": True}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        target = TargetSpec(base_url=url, api="anthropic", model="claude-on-page-two")
        ep = await resolve_endpoint(http, target, url, WorkloadSpec())
        assert ep.options.model == "claude-on-page-two"
        assert seen == ["1000"]  # the largest page Anthropic serves
        with pytest.raises(TargetError, match="give one with --model"):
            await resolve_endpoint(
                http, target.model_copy(update={"model": None}), url, WorkloadSpec()
            )
    finally:
        await server.close()


def test_hosted_anthropic_gets_no_vllm_extensions() -> None:
    assert (
        TargetSpec(base_url="https://api.anthropic.com", api="anthropic").vllm_extensions is False
    )
    assert TargetSpec(base_url="http://127.0.0.1:8000", api="anthropic").vllm_extensions is True
