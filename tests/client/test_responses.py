"""The OpenAI Responses API kind (`--api responses`): request body, event parsing, and the
simulator's `responses` personality over real sockets."""

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
from latbench.spec import TargetSpec, WorkloadSpec
from latbench.workload import WorkItem

API = API_KINDS["responses"]
ITEM = WorkItem(
    prompt="one two three",
    messages=(
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "one two three"},
    ),
    prompt_tokens=5,
    max_tokens=8,
)


def test_body() -> None:
    assert API.body(ITEM, options()) == {
        "model": "sim-model",
        "input": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "one two three"},
        ],
        "max_output_tokens": 8,
        "stream": True,
        "store": False,
    }
    body = API.body(ITEM, options(True, reasoning={"effort": "low", "summary": "auto"}))
    assert body["ignore_eos"] is True and body["min_tokens"] == 8
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}


def completed(status: str = "completed", **response: Any) -> dict[str, Any]:
    usage = {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 37,
    }
    return {"status": status, "usage": usage, **response}


EVENTS = [
    ({"type": "response.created", "response": {"status": "in_progress"}}, Event()),
    ({"type": "response.output_text.delta", "delta": "Hi"}, Event("c")),
    ({"type": "response.output_text.delta", "delta": ""}, Event()),
    ({"type": "response.refusal.delta", "delta": "No"}, Event("c")),
    ({"type": "response.reasoning_summary_text.delta", "delta": "think"}, Event("r")),
    ({"type": "response.reasoning_text.delta", "delta": "raw"}, Event("r")),  # vLLM
    ({"type": "response.output_text.done", "text": "Hi"}, Event()),  # repeats, no new tokens
    # A tool call: generated, but not the answer (METRICS.md): its name, then its arguments.
    (
        {
            "type": "response.output_item.added",
            "item": {"type": "function_call", "name": "get_weather", "arguments": ""},
        },
        Event("t"),
    ),
    ({"type": "response.output_item.added", "item": {"type": "message"}}, Event()),
    ({"type": "response.function_call_arguments.delta", "delta": "{"}, Event("t")),
    ({"type": "response.function_call_arguments.delta", "delta": ""}, Event()),
    ({"type": "response.function_call_arguments.done", "arguments": "{}"}, Event()),
    (
        {"type": "response.completed", "response": completed()},
        Event(None, 30, 7, "completed", done=True, usage_only=True),
    ),
    (
        {
            "type": "response.incomplete",
            "response": completed("incomplete", incomplete_details={"reason": "max_output_tokens"}),
        },
        Event(None, 30, 7, "max_output_tokens", done=True, usage_only=True),
    ),
    # vLLM 0.32 ends a cut response with response.completed, status incomplete.
    (
        {
            "type": "response.completed",
            "response": completed("incomplete", incomplete_details={"reason": "max_output_tokens"}),
        },
        Event(None, 30, 7, "max_output_tokens", done=True, usage_only=True),
    ),
    (
        {
            "type": "response.failed",
            "response": {"status": "failed", "error": {"code": "server_error", "message": "x"}},
        },
        Event(error="server_error: x"),
    ),
    (
        {"type": "error", "code": "rate_limit_exceeded", "message": "slow", "param": None},
        Event(error="rate_limit_exceeded: slow", error_kind=ErrorKind.RATE_LIMITED),
    ),
    ({"type": "error", "code": None, "message": "?"}, Event(error="error: ?")),
]


@pytest.mark.parametrize(("obj", "event"), EVENTS, ids=[str(e[0]["type"]) for e in EVENTS])
def test_each_event_type(obj: dict[str, Any], event: Event) -> None:
    assert API.parse(orjson.dumps(obj)) == event


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[DONE]", "not JSON"),  # the Responses stream has no [DONE]
        (b'{"delta": "x"}', "without a string type"),
        (b'{"type": "response.completed"}', "without a response object"),
    ],
)
def test_malformed_events_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        API.parse(data)


# --- the simulator's responses personality, in this process (format, not timing) -----------


@pytest.fixture
def serve(serve: Serve) -> Serve:
    """The in-process simulator of tests/conftest.py, speaking OpenAI's Responses API."""
    return functools.partial(serve, api="responses")


def endpoint(url: str, headers: dict[str, str] | None = None) -> Endpoint:
    return Endpoint(url, API, options(True), headers or {}, Timeouts(idle=2, total=5))


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        name_line, data_line = block.split(b"\n")
        data = orjson.loads(data_line.removeprefix(b"data: "))
        assert data["type"] == name_line.removeprefix(b"event: ").decode()
        out.append(data)
    return out


async def test_sim_stream_has_the_documented_event_sequence(serve, http) -> None:
    url = await serve(reasoning_tokens=2)
    body = API.body(ITEM, options()) | {"max_output_tokens": 4}
    async with http.post(url + "/v1/responses", json=body) as r:
        assert r.status == 200
        events = sse_events(await r.read())
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # max_output_tokens reached (the simulator ignores EOS)
    ]
    final = events[-1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["input_tokens"] == 5
    assert final["usage"]["output_tokens"] == 4
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 2}
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    text = events[-3]["part"]["text"]
    assert text == "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


async def test_sim_stream_completes_on_eos(serve, http) -> None:
    url = await serve(eos_probability=1.0)
    body = API.body(ITEM, options()) | {"max_output_tokens": 4}
    async with http.post(url + "/v1/responses", json=body) as r:
        events = sse_events(await r.read())
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["output_tokens"] == 1


async def test_sim_record(serve, http) -> None:
    url = await serve(reasoning_tokens=3)
    rec = await one(http, endpoint(url), ITEM)
    assert rec.ok, rec.error_detail
    assert rec.ev_kind == "rrrccccc"
    assert (rec.usage_prompt_tokens, rec.usage_completion_tokens) == (5, 8)
    assert rec.finish_reason == "max_output_tokens"


async def test_sim_non_stream_and_bad_requests(serve, http) -> None:
    url = await serve(reasoning_tokens=1)
    body = API.body(ITEM, options()) | {"stream": False, "max_output_tokens": 3}
    async with http.post(url + "/v1/responses", json=body) as r:
        response = await r.json()
    assert response["object"] == "response" and response["usage"]["output_tokens"] == 3
    assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
    async with http.post(url + "/v1/responses", json={"model": "sim-model"}) as r:
        assert r.status == 400 and "input" in (await r.json())["error"]["message"]
    async with http.post(url + "/v1/responses", json={"model": "sim-model", "input": "a b"}) as r:
        assert r.status == 200  # a bare string is an input too


async def test_mid_stream_failure_and_overload(serve, http) -> None:
    url = await serve(faults=[{"kind": "error_event", "after": 2}])
    rec = await one(http, endpoint(url), ITEM)
    assert rec.error is ErrorKind.SERVER_ERROR_EVENT and rec.ev_kind == "cc"
    assert rec.error_detail == "server_error: Simulated fault: error mid-stream."
    url = await serve(faults=[{"kind": "http_status", "status": 503}])
    rec = await one(http, endpoint(url), ITEM)
    assert rec.error is ErrorKind.OVERLOADED and rec.retry_after_s == 1.0
    url = await serve(faults=[{"kind": "http_status", "status": 503, "retry_after": "none"}])
    rec = await one(http, endpoint(url), ITEM)
    # A bare 503 is any unavailability, not load shedding.
    assert rec.error is ErrorKind.HTTP_STATUS and rec.retry_after_s is None


async def test_bearer_key_and_an_explicit_model_for_long_lists(serve, http, monkeypatch) -> None:
    url = await serve(api_key="sk-test")
    monkeypatch.setenv("SIM_KEY", "sk-test")
    target = TargetSpec(base_url=url, api="responses", api_key_env="SIM_KEY")
    ep = await resolve_endpoint(http, target, url, WorkloadSpec())
    assert ep.headers == {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    assert (await one(http, ep, ITEM)).ok
    assert (await one(http, endpoint(url), ITEM)).status == 401


async def test_hosted_lists_of_many_models_need_model(http) -> None:
    from aiohttp import web

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "gpt-4o"}, {"id": "whisper-1"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        with pytest.raises(TargetError, match=r"lists 2 models.*--model"):
            await resolve_endpoint(
                http, TargetSpec(base_url=url, api="responses"), url, WorkloadSpec()
            )
        target = TargetSpec(base_url=url, api="responses", model="gpt-4o")
        assert (await resolve_endpoint(http, target, url, WorkloadSpec())).options.model == "gpt-4o"
    finally:
        await server.close()
