"""Spec validation: errors name the field and what is allowed; flags and files share one schema."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from latbench import SpecError, TargetError
from latbench.cli.common import spec_from_args
from latbench.cli.main import build_parser
from latbench.client import resolve_endpoint
from latbench.client.preflight import MAX_MODELS_BYTES
from latbench.spec import load_spec, read_spec_file


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as e:
        load_spec(data, source="test.yaml")
    return str(e.value)


def test_defaults_are_the_embedded_benchmark() -> None:
    spec = load_spec({})
    assert spec.target.base_url is None
    assert spec.load.mode == "closed" and spec.load.concurrency == 8
    assert spec.load.duration == 15.0 and spec.load.warmup == 2.0
    assert [(s.metric, s.percentile, s.threshold_s) for s in spec.slos] == [
        ("ttft", 99.0, 0.1),
        ("itl", 99.0, 0.1),
        ("tpot", 99.0, 0.1),
    ]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"load": {"mode": "fast"}}, "load.mode"),
        ({"load": {"mode": "constant", "duration": 5}}, "needs a rate"),
        ({"load": {"mode": "closed", "rate": 3, "duration": 5}}, "rate is for open-loop"),
        ({"load": {"concurrency": 0, "duration": 5}}, "load.concurrency"),
        ({"load": {"concurrency": 2}}, "give a duration or a number of requests"),
        ({"load": {"duration": "ten seconds"}}, "is not a duration"),
        ({"load": {"duration": 5, "warmup": 5}}, "leave nothing"),
        ({"target": {"base_url": "localhost:8000"}}, "not an http(s) URL"),
        ({"target": {"base_url": "http://h", "api": "grpc"}}, "target.api"),
        ({"target": {"bogus": 1}}, "target.bogus: unknown field"),
        ({"workload": {"source": "jsonl"}}, "needs a path"),
        ({"workload": {"input_tokens": "gaussian:1,2"}}, "unknown distribution 'gaussian'"),
        ({"slos": ["ttft:p99<=fast"]}, "slos"),
        ({"name": "has spaces"}, "name"),
    ],
)
def test_errors_name_the_field(data: dict, needle: str) -> None:
    msg = error_of(data)
    assert needle in msg, msg
    assert "test.yaml" in msg


def test_durations_and_v1_suffix_are_normalised() -> None:
    spec = load_spec(
        {"target": {"base_url": "http://h:8000/v1/"}, "load": {"duration": "2m", "warmup": "500ms"}}
    )
    assert spec.target.base_url == "http://h:8000"
    assert spec.load.duration == 120.0 and spec.load.warmup == 0.5


def test_openai_gets_no_vllm_extensions_by_default() -> None:
    assert (
        load_spec({"target": {"base_url": "https://api.openai.com"}}).target.vllm_extensions
        is False
    )
    assert (
        load_spec({"target": {"base_url": "http://127.0.0.1:8000"}}).target.vllm_extensions is True
    )


def test_flags_override_the_spec_file(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("target: {base_url: 'http://a:1'}\nload: {concurrency: 4, duration: 30s}\n")
    ns = build_parser().parse_args(["run", "--spec", str(f), "--concurrency", "16", "--rate", "5"])
    spec = load_spec(spec_from_args(ns))
    assert spec.target.base_url == "http://a:1"
    assert spec.load.concurrency == 16 and spec.load.rate == 5
    assert spec.load.mode == "poisson"  # --rate alone means open loop, Poisson like vllm bench
    assert spec.load.duration == 30


def test_bad_spec_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        read_spec_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("load: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        read_spec_file(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(SpecError, match="mapping"):
        read_spec_file(scalar)


def test_bad_header_flag() -> None:
    ns = build_parser().parse_args(["run", "--header", "no-colon"])
    with pytest.raises(SpecError, match="Name: value"):
        spec_from_args(ns)


# --- limits at the edge (issue 13) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"target": {"timeouts": {"total": 1e300}}}, "target.timeouts.total"),
        ({"target": {"timeouts": {"idle": "2000h"}}}, "target.timeouts.idle"),
        ({"target": {"timeouts": {"connect": 0}}}, "target.timeouts.connect"),
        ({"target": {"timeouts": {"first_token": float("nan")}}}, "target.timeouts.first_token"),
        ({"target": {"retry": {"backoff": float("inf")}}}, "target.retry.backoff"),
        ({"target": {"retry": {"max_wait": 1e9}}}, "target.retry.max_wait"),
        ({"workload": {"seed": -1}}, "workload.seed"),
        ({"workload": {"seed": 2**63}}, "workload.seed"),
        ({"workload": {"input_tokens": 1e13}}, "workload.input_tokens: mean 1e+13 is over"),
        ({"workload": {"input_tokens": "normal:100,1e30"}}, "workload.input_tokens: std"),
        (
            {"workload": {"output_tokens": {"kind": "normal", "mean": 9, "max": 1e9}}},
            "workload.output_tokens: max",
        ),
        ({"workload": {"input_tokens": float("inf")}}, "workload.input_tokens"),
        ({"workload": {"output_tokens": float("nan")}}, "workload.output_tokens"),
        ({"load": {"duration": 1e300}}, "load.duration"),
        ({"load": {"duration": 5, "warmup": float("nan")}}, "load.warmup"),
        ({"load": {"duration": 5, "overtime": 1e12}}, "load.overtime"),
        ({"load": {"mode": "poisson", "rate": float("inf"), "duration": 5}}, "load.rate"),
        (
            {"load": {"mode": "poisson", "rate": 5, "burstiness": 1e-300, "duration": 5}},
            "load.burstiness",
        ),
        ({"load": {"concurrency": 10**7, "duration": 5}}, "load.concurrency"),
        ({"load": {"requests": 10**12}}, "load.requests"),
        ({"percentiles": [float("nan")]}, "percentiles.0"),
        ({"percentiles": [50.0] * 33}, "percentiles"),
        ({"validity": {"client_cpu": float("inf")}}, "validity.client_cpu"),
        ({"sim": {"ttft": float("inf")}}, "sim.ttft"),
    ],
)
def test_every_number_is_bounded_and_finite(data: dict, needle: str) -> None:
    msg = error_of(data)
    assert needle in msg, msg


@pytest.mark.parametrize(
    "key",
    ["model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
     "max_output_tokens", "messages", "prompt", "input", "system", "ignore_eos", "min_tokens"],
)  # fmt: skip
def test_extra_body_cannot_override_what_latbench_sets(key: str) -> None:
    msg = error_of({"workload": {"extra_body": {key: 1, "temperature": 0.5}}})
    assert f"workload.extra_body: {key!r}" in msg and "cannot override" in msg, msg
    # Other fields stay the caller's.
    assert load_spec({"workload": {"extra_body": {"temperature": 0.5, "store": True}}})


def test_every_body_field_latbench_sets_is_protected() -> None:
    """CONTROLLED_BODY_KEYS covers every field each API kind's body sets (but `store`)."""
    from latbench.client import API_KINDS, RequestOptions
    from latbench.spec.workload import CONTROLLED_BODY_KEYS
    from latbench.workload import WorkItem

    item = WorkItem(
        "p", ({"role": "system", "content": "s"}, {"role": "user", "content": "p"}), 2, 9
    )
    opts = RequestOptions(model="m", vllm_extensions=True, ignore_eos=True, extra_body={})
    for kind in API_KINDS.values():
        assert set(kind.body(item, opts)) - {"store"} <= set(CONTROLLED_BODY_KEYS), kind.name


def test_extra_body_size_and_json_only() -> None:
    assert "over the cap" in error_of({"workload": {"extra_body": {"x": "a" * 70_000}}})
    assert "JSON cannot carry" in error_of({"workload": {"extra_body": {"x": {1, 2}}}})


ALIAS_BOMB = """\
workload:
  extra_body:
    a: &a ["x","x","x","x","x","x","x","x","x"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
"""


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    """An alias bomb (under 400 bytes, ~43 million strings once built) fails at its first alias,
    before anything is built; so does a harmless-looking merge key."""
    f = tmp_path / "bomb.yaml"
    f.write_text(ALIAS_BOMB)
    with pytest.raises(SpecError, match=r"alias \*a: YAML aliases and anchors are not allowed"):
        read_spec_file(f)
    f.write_text("base: &b {duration: 5}\nload:\n  <<: *b\n")
    with pytest.raises(SpecError, match="alias"):
        read_spec_file(f)


def test_spec_size_and_depth_limits(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("name: x\n" + "# padding\n" * 110_000)
    with pytest.raises(SpecError, match="over 1024 KiB"):
        read_spec_file(f)
    deep = {"x": 1}
    for _ in range(40):
        deep = {"x": deep}
    f.write_text(json.dumps({"workload": {"extra_body": deep}}))
    with pytest.raises(SpecError, match="nested more than 32 levels"):
        read_spec_file(f)
    # The same limit for a document built elsewhere (flags, the service's JSON body).
    assert "nested more than 32 levels" in error_of({"workload": {"extra_body": deep}})
    f.write_text("seed: " + "9" * 5000)  # an int over Python's 4300-digit conversion limit
    with pytest.raises(SpecError, match="not valid YAML"):
        read_spec_file(f)
    f.write_bytes(b"name: \xff\xfe")
    with pytest.raises(SpecError, match="not UTF-8"):
        read_spec_file(f)


# --- preflight: a model list is read with a bound, and named in short (issue 13) ---------------


async def _resolve_against(handler: Any, model: str | None) -> str:
    """resolve_endpoint against a loopback server answering /v1/models with `handler`: the
    model it settles on, or the TargetError's message."""
    app = web.Application()
    app.router.add_get("/v1/models", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    spec = load_spec({"target": {"base_url": base, "model": model}})
    try:
        async with aiohttp.ClientSession() as session:
            ep = await resolve_endpoint(session, spec.target, base, spec.workload)
            return ep.options.model
    except TargetError as e:
        return str(e)
    finally:
        await runner.cleanup()


def test_a_long_model_list_is_named_in_short() -> None:
    models = {"object": "list", "data": [{"id": f"model-{i}"} for i in range(10_000)]}

    async def many(request: web.Request) -> web.Response:
        return web.json_response(models)

    msg = asyncio.run(_resolve_against(many, "absent"))
    assert msg.endswith(
        "it serves: 'model-0', 'model-1', 'model-2', 'model-3', 'model-4', ... (10000 in all)"
    ), msg[:300]
    assert len(msg) < 300
    assert asyncio.run(_resolve_against(many, "model-9999")) == "model-9999"


def test_a_huge_model_list_is_not_read_whole() -> None:
    """An endless /v1/models body is read up to MAX_MODELS_BYTES, then dropped: the named model
    is taken unchecked, and auto-detection says it has nothing to go on."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"data": [')
        chunk = b'{"id": "m"},' * 100_000
        with contextlib.suppress(ConnectionResetError):
            while sent < 8 * MAX_MODELS_BYTES:
                await resp.write(chunk)
                sent += len(chunk)
        return resp

    assert asyncio.run(_resolve_against(endless, "m")) == "m"
    assert sent < 4 * MAX_MODELS_BYTES  # the client stopped reading; the writes stopped too
    assert "cannot be auto-detected" in asyncio.run(_resolve_against(endless, None))
