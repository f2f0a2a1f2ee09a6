"""The simulator's own vLLM metrics (`GET /metrics`), over real sockets on 127.0.0.1.

Each check scrapes the page, parses it with prometheus_client's parser, and compares it with what
the client received and with the simulator's record of every instant (`/sim/truth?raw=1`), from
which each latency is computed exactly as the server computes it (same integers, same division),
so bucket counts must agree exactly and sums within 1e-6 s per request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from kit import paths
from kit.sim import truth
from prometheus_client.parser import text_string_to_metric_families

from bench._simfarm import SimFarm
from latbench.client import API_KINDS, Endpoint, RequestOptions, Timeouts, stream_request
from latbench.client.preflight import ANTHROPIC_VERSION
from latbench.records import Record
from latbench.shared.buckets import (
    VLLM_ITL_BUCKETS,
    VLLM_REQUEST_LATENCY_BUCKETS,
    VLLM_TTFT_BUCKETS,
)
from latbench.sim import SimConfig, SimProcess
from latbench.workload import WorkItem

MODEL = "sim-model"
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
TRANSCRIPTS = paths.TRANSCRIPTS
HIST_BUCKETS: dict[str, tuple[float, ...]] = {
    "vllm:time_to_first_token_seconds": VLLM_TTFT_BUCKETS,
    "vllm:inter_token_latency_seconds": VLLM_ITL_BUCKETS,
    "vllm:request_time_per_output_token_seconds": VLLM_ITL_BUCKETS,
    "vllm:e2e_request_latency_seconds": VLLM_REQUEST_LATENCY_BUCKETS,
    "vllm:request_queue_time_seconds": VLLM_REQUEST_LATENCY_BUCKETS,
    "vllm:request_prefill_time_seconds": VLLM_REQUEST_LATENCY_BUCKETS,
    "vllm:request_decode_time_seconds": VLLM_REQUEST_LATENCY_BUCKETS,
    "vllm:request_inference_time_seconds": VLLM_REQUEST_LATENCY_BUCKETS,
}
PHASES = (
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_inference_time_seconds",
)
COUNTERS = (
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:mm_cache_queries",
    "vllm:mm_cache_hits",
)
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
# Each API's finish reason as the client records it -> the simulator's (vLLM's) own.
FINISH = {
    "stop": "stop",
    "length": "length",
    "end_turn": "stop",
    "max_tokens": "length",
    "completed": "stop",
    "max_output_tokens": "length",
}
HEADERS = {"anthropic": {"anthropic-version": ANTHROPIC_VERSION}}


@dataclass(frozen=True)
class Hist:
    les: tuple[float, ...]  # finite bounds then +Inf
    cumulative: tuple[float, ...]
    sum: float
    count: float


class Page:
    """One scrape of /metrics, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        for f in self.families.values():
            for s in f.samples:
                assert s.labels["model_name"] == MODEL and s.labels["engine"] == "0", s

    def hist(self, name: str) -> Hist:
        f = self.families[name]
        assert f.type == "histogram"
        buckets = [
            (float(s.labels["le"]), s.value) for s in f.samples if s.name == name + "_bucket"
        ]
        (total,) = (s.value for s in f.samples if s.name == name + "_sum")
        (count,) = (s.value for s in f.samples if s.name == name + "_count")
        return Hist(tuple(b for b, _ in buckets), tuple(n for _, n in buckets), total, count)

    def value(self, sample: str, **labels: str) -> float:
        family = self.families[sample.removesuffix("_total")]
        (got,) = (
            s.value
            for s in family.samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )
        return float(got)

    @property
    def successes(self) -> float:
        """`vllm:request_success_total`, summed over finished_reason."""
        return sum(s.value for s in self.families["vllm:request_success"].samples)

    @property
    def running(self) -> float:
        return self.value("vllm:num_requests_running")

    @property
    def waiting(self) -> float:
        return self.value("vllm:num_requests_waiting")


async def scrape(http: aiohttp.ClientSession, url: str) -> Page:
    async with http.get(url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == TEXT_FORMAT
        return Page(await r.text())


async def scrape_until(
    http: aiohttp.ClientSession, url: str, ready: Callable[[Page], bool], timeout: float = 10.0
) -> Page:
    """Scrape until `ready(page)`, or fail with the last page's state after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        page = await scrape(http, url)
        if ready(page):
            return page
        assert time.monotonic() < deadline, f"/metrics never got ready:\n{page.text}"
        await asyncio.sleep(0.01)


def endpoint(url: str, api: str, *, ignore_eos: bool = False) -> Endpoint:
    opts = RequestOptions(model=MODEL, vllm_extensions=True, ignore_eos=ignore_eos, extra_body={})
    if api in ("anthropic", "responses"):
        opts = opts._replace(vllm_extensions=False)
    return Endpoint(url, API_KINDS[api], opts, HEADERS.get(api, {}), Timeouts(idle=5, total=20))


def item(max_tokens: int = 20) -> WorkItem:
    return WorkItem(
        prompt="one two three four",
        messages=({"role": "user", "content": "one two three four five"},),
        prompt_tokens=4,
        max_tokens=max_tokens,
    )


async def send(http: aiohttp.ClientSession, ep: Endpoint, it: WorkItem) -> Record:
    t = time.monotonic_ns()
    return await stream_request(http, ep, it, run_id="t", seq=0, phase="measure", t_intended=t)


def seconds(ns: int) -> float:
    return ns / 1e9


def expected(reqs: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Each histogram's observations, from the truth, computed as the server computes them."""
    out: dict[str, list[float]] = {"ttft": [], "e2e": [], "itl": [], "tpot": [], "decode": []}
    for r in reqs:
        ev, arrival = r["events_ns"], r["arrival_ns"]
        if not ev:
            continue
        out["ttft"].append(seconds(ev[0] - arrival))
        out["e2e"].append(seconds(ev[-1] - arrival))
        out["decode"].append(seconds(ev[-1] - ev[0]))
        out["itl"].extend(seconds(b - a) for a, b in itertools.pairwise(ev))
        if r["tokens"] > 1:
            out["tpot"].append(seconds(ev[-1] - ev[0]) / (r["tokens"] - 1))
    return out


def check_histogram(page: Page, name: str, values: Sequence[float] | None = None) -> None:
    """Well formed: vLLM's bounds, cumulative, +Inf = count; with `values`, exactly those."""
    h = page.hist(name)
    assert h.les == (*HIST_BUCKETS[name], float("inf")), name
    assert all(a <= b for a, b in itertools.pairwise(h.cumulative)), (name, h.cumulative)
    assert h.cumulative[-1] == h.count, name
    if values is not None:
        assert h.count == len(values), name
        want = tuple(float(sum(1 for v in values if v <= le)) for le in h.les)
        assert h.cumulative == want, name
        assert h.sum == pytest.approx(sum(values), abs=1e-6 * max(len(values), 1)), name


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_streamed_requests_match_the_truth_and_the_usage(
    sim: Callable[..., SimProcess], http: aiohttp.ClientSession, api: str
) -> None:
    s = sim(
        model=MODEL,
        ttft={"kind": "normal", "mean": 0.03, "std": 0.02, "min": 0.001},
        itl={"kind": "normal", "mean": 0.01, "std": 0.01, "min": 0.0005},
        tokens_per_event=2,
        reasoning_tokens=3,
        eos_probability=0.3,
        seed=7,
    )
    # Half run to max_tokens (finish "length"); the other half almost surely stop at an EOS.
    eps = [endpoint(s.url, api, ignore_eos=True), endpoint(s.url, api, ignore_eos=False)]
    n = 12
    records = await asyncio.gather(*(send(http, eps[i % 2], item(20)) for i in range(n)))
    assert all(r.ok for r in records), [r.error_detail for r in records]

    page = await scrape_until(
        http,
        s.url,
        lambda p: (
            p.hist("vllm:time_to_first_token_seconds").count == n
            and p.successes == n
            and p.running == 0
        ),
    )
    reqs = await truth(s.url, http)
    assert len(reqs) == n
    want = expected(reqs)
    assert len(want["itl"]) == sum(len(r["events_ns"]) - 1 for r in reqs)
    for name, key in (
        ("vllm:time_to_first_token_seconds", "ttft"),
        ("vllm:e2e_request_latency_seconds", "e2e"),
        ("vllm:inter_token_latency_seconds", "itl"),
        ("vllm:request_time_per_output_token_seconds", "tpot"),
        ("vllm:request_decode_time_seconds", "decode"),
    ):
        check_histogram(page, name, want[key])
    # The phases, one observation per request: queue + prefill = TTFT, prefill + decode =
    # inference, queue + inference = E2E.
    h = {name: page.hist(name) for name in HIST_BUCKETS}
    for name in PHASES:
        check_histogram(page, name)
        assert h[name].count == n, name
    queue = h["vllm:request_queue_time_seconds"]
    prefill = h["vllm:request_prefill_time_seconds"]
    inference = h["vllm:request_inference_time_seconds"]
    tol = 1e-6 * n
    assert queue.sum + prefill.sum == pytest.approx(sum(want["ttft"]), abs=tol)
    assert prefill.sum + sum(want["decode"]) == pytest.approx(inference.sum, abs=tol)
    assert queue.sum + inference.sum == pytest.approx(sum(want["e2e"]), abs=tol)
    assert 0 <= queue.sum < 0.3 * n  # no max_batch: a request gets its slot at once

    # Tokens and finish reasons as the client received them in usage.
    assert page.value("vllm:prompt_tokens_total") == sum(
        r.usage_prompt_tokens or 0 for r in records
    )
    assert page.value("vllm:generation_tokens_total") == sum(
        r.usage_completion_tokens or 0 for r in records
    )
    reasons = [FINISH[r.finish_reason or ""] for r in records]
    for reason in ("stop", "length"):
        assert reasons.count(reason) > 0
        assert page.value("vllm:request_success_total", finished_reason=reason) == reasons.count(
            reason
        )
    assert page.running == 0 and page.waiting == 0

    # Running totals since start: /sim/truth/reset leaves them as they are.
    async with http.post(s.url + "/sim/truth/reset") as r:
        assert r.status == 200
    assert await truth(s.url, http) == []
    after = await scrape(http, s.url)
    assert after.families.keys() == page.families.keys()
    for name in HIST_BUCKETS:
        assert after.hist(name) == page.hist(name)
    for c in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        assert after.value(c) == page.value(c)


async def test_the_page_is_vllms_text_format_with_colon_names(
    serve: Callable[..., Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    url = await serve(model=MODEL, api_key="secret")  # /metrics needs no key, as vLLM's
    page = await scrape(http, url)
    assert set(page.families) == {*HIST_BUCKETS, *COUNTERS, *GAUGES}
    for name in HIST_BUCKETS:
        assert f"# TYPE {name} histogram\n" in page.text
        check_histogram(page, name, [])
    for name in COUNTERS:
        assert f"# TYPE {name}_total counter\n" in page.text
    for name in GAUGES:
        assert f"# TYPE {name} gauge\n" in page.text
        assert page.value(name) == 0
    # Both finish reasons are there from the start, at zero, as vLLM creates them.
    for reason in ("stop", "length"):
        assert page.value("vllm:request_success_total", finished_reason=reason) == 0


async def test_max_batch_makes_requests_wait_and_the_gauges_show_it(
    sim: Callable[..., SimProcess], http: aiohttp.ClientSession
) -> None:
    s = sim(model=MODEL, ttft=0.2, itl=0.02, max_batch=1)
    ep = endpoint(s.url, "completions", ignore_eos=True)
    tasks = [asyncio.create_task(send(http, ep, item(10))) for _ in range(2)]
    # One decodes while the other waits for its slot (for about 0.38 s).
    busy = await scrape_until(http, s.url, lambda p: p.running == 1 and p.waiting == 1)
    assert busy.hist("vllm:time_to_first_token_seconds").count == 0
    records = await asyncio.gather(*tasks)
    assert all(r.ok for r in records)
    page = await scrape_until(
        http,
        s.url,
        lambda p: (
            p.hist("vllm:e2e_request_latency_seconds").count == 2
            and p.running == 0
            and p.waiting == 0
        ),
    )
    a, b = sorted(await truth(s.url, http), key=lambda r: r["events_ns"][0])
    queue = page.hist("vllm:request_queue_time_seconds")
    prefill = page.hist("vllm:request_prefill_time_seconds")
    ttft = page.hist("vllm:time_to_first_token_seconds")
    # The second got its slot only after the first had written its last event.
    assert queue.count == 2
    assert queue.sum > seconds(a["events_ns"][-1] - b["arrival_ns"]) > 0.3
    assert queue.cumulative[0] == 1  # the first waited for nothing (le 0.3)
    assert prefill.sum >= 2 * 0.2 - 0.002  # each TTFT draw is 200 ms after its admission
    assert queue.sum + prefill.sum == pytest.approx(ttft.sum, abs=2e-6)
    want = expected([a, b])
    assert ttft.sum == pytest.approx(sum(want["ttft"]), abs=2e-6)


async def test_cut_streams_are_timed_but_never_succeed(
    serve: Callable[..., Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    # Every second request is cut after 2 of its 5 events.
    url = await serve(model=MODEL, faults=[{"kind": "truncate", "every": 2, "after": 2}])
    ep = endpoint(url, "completions", ignore_eos=True)
    records = [await send(http, ep, item(5)) for _ in range(4)]
    assert [r.ok for r in records] == [True, False, True, False]
    page = await scrape_until(
        http, url, lambda p: p.hist("vllm:e2e_request_latency_seconds").count == 4
    )
    want = expected(await truth(url, http))
    assert len(want["itl"]) == 2 * 4 + 2 * 1
    for name, key in (
        ("vllm:time_to_first_token_seconds", "ttft"),
        ("vllm:inter_token_latency_seconds", "itl"),
        ("vllm:e2e_request_latency_seconds", "e2e"),
    ):
        check_histogram(page, name, want[key])
    assert page.value("vllm:request_success_total", finished_reason="length") == 2
    assert page.value("vllm:request_success_total", finished_reason="stop") == 0
    assert page.value("vllm:generation_tokens_total") == 2 * 5
    assert page.value("vllm:prompt_tokens_total") == 2 * 4


async def test_refused_requests_and_hang_ups(
    serve: Callable[..., Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    # A refusal writes no event: nothing is observed.
    url = await serve(model=MODEL, faults=[{"kind": "http_status", "status": 503}])
    record = await send(http, endpoint(url, "chat"), item(5))
    assert record.status == 503
    page = await scrape(http, url)
    assert page.hist("vllm:time_to_first_token_seconds").count == 0
    assert page.value("vllm:request_success_total", finished_reason="length") == 0

    # A client that hangs up mid-stream: its written events are timed, it never succeeds, and
    # its slot is released.
    url = await serve(model=MODEL, max_model_len=10**6)
    endless = {"model": MODEL, "prompt": "a b", "stream": True, "max_tokens": 10**6 - 10}
    async with http.post(url + "/v1/completions", json=endless) as r:
        assert (await r.content.readline()).startswith(b"data: ")
    page = await scrape_until(
        http,
        url,
        lambda p: p.hist("vllm:time_to_first_token_seconds").count == 1 and p.running == 0,
    )
    assert page.hist("vllm:e2e_request_latency_seconds").count == 1
    assert page.successes == 0
    assert page.value("vllm:generation_tokens_total") == 0


@pytest.mark.parametrize("api", ["chat", "completions", "anthropic", "responses"])
async def test_every_api_kind_is_counted(
    serve: Callable[..., Awaitable[str]], http: aiohttp.ClientSession, api: str
) -> None:
    personality = {"anthropic": "anthropic", "responses": "responses"}.get(api, "openai")
    url = await serve(model=MODEL, api=personality, reasoning_tokens=2, eos_probability=0.2)
    ep = endpoint(url, api)
    records = [await send(http, ep, item(8)) for _ in range(3)]
    assert all(r.ok for r in records), [r.error_detail for r in records]
    page = await scrape_until(
        http,
        url,
        lambda p: p.successes == 3,
    )
    want = expected(await truth(url, http))
    check_histogram(page, "vllm:time_to_first_token_seconds", want["ttft"])
    check_histogram(page, "vllm:inter_token_latency_seconds", want["itl"])
    assert page.value("vllm:prompt_tokens_total") == sum(
        r.usage_prompt_tokens or 0 for r in records
    )
    assert page.value("vllm:generation_tokens_total") == sum(
        r.usage_completion_tokens or 0 for r in records
    )
    for reason in ("stop", "length"):
        n = sum(1 for r in records if FINISH[r.finish_reason or ""] == reason)
        assert page.value("vllm:request_success_total", finished_reason=reason) == n


async def test_a_non_streamed_answer_is_counted(
    serve: Callable[..., Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    url = await serve(model=MODEL)
    body = {"model": MODEL, "prompt": "one two three", "max_tokens": 4}
    async with http.post(url + "/v1/completions", json=body) as r:
        usage = orjson.loads(await r.read())["usage"]
    page = await scrape_until(
        http, url, lambda p: p.value("vllm:request_success_total", finished_reason="length") == 1
    )
    want = expected(await truth(url, http))
    check_histogram(page, "vllm:time_to_first_token_seconds", want["ttft"])
    check_histogram(page, "vllm:inter_token_latency_seconds", want["itl"])
    check_histogram(page, "vllm:e2e_request_latency_seconds", want["e2e"])
    assert page.value("vllm:prompt_tokens_total") == usage["prompt_tokens"] == 3
    assert page.value("vllm:generation_tokens_total") == usage["completion_tokens"] == 4


async def test_a_replay_serves_the_page_but_times_nothing(
    serve: Callable[..., Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    url = await serve(model=MODEL, replay=[TRANSCRIPTS])
    headers = {"x-latbench-replay": "chat_openai_usage"}
    async with http.post(url + "/v1/chat/completions", json={}, headers=headers) as r:
        assert r.status == 200
        await r.read()
    page = await scrape_until(http, url, lambda p: p.running == 0)
    assert set(page.families) == {*HIST_BUCKETS, *COUNTERS, *GAUGES}
    for name in HIST_BUCKETS:
        check_histogram(page, name, [])


def test_each_process_of_a_sim_farm_serves_its_own() -> None:
    config = SimConfig(model=MODEL, ttft=0.002, itl=0.001)
    with SimFarm(config, processes=2) as farm:

        async def run() -> list[Page]:
            async with aiohttp.ClientSession() as http:
                ep = endpoint(farm.url, "completions", ignore_eos=True)
                for _ in range(8):  # a new connection each: the kernel spreads them
                    async with aiohttp.ClientSession() as one:
                        assert (await send(one, ep, item(3))).ok
                # Each process serves its own page; read each through its admin port (SimFarm
                # keeps them in `_admin`, as its own `truth()` does).
                admin = [f"http://127.0.0.1:{port}" for port in farm._admin]
                pages = []
                for url in admin:
                    n = len(await truth(url, http))
                    pages.append(
                        await scrape_until(
                            http,
                            url,
                            lambda p, n=n: p.hist("vllm:time_to_first_token_seconds").count == n,
                        )
                    )
                return pages

        pages = asyncio.run(run())
    counts = [p.value("vllm:request_success_total", finished_reason="length") for p in pages]
    assert sum(counts) == 8
