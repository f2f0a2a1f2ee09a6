"""The simulator's prefix cache and prompt costs (prefix.py, engine.py), over real sockets.

Each effect is asserted against the simulator's own account of what it did (`/sim/truth?raw=1`:
each request's prompt and cached tokens and the TTFT its model planned, `ttft_model_s`) and its
vLLM metrics page, never against timing: the model's figures are exact, whatever the loop did.
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import pytest
from conftest import Serve
from kit.sim import truth
from prometheus_client.parser import text_string_to_metric_families

from latbench.sim.__main__ import add_sim_arguments, config_from_args
from latbench.sim.prefix import PrefixCache, block_hashes

TTFT = 0.002  # tests/kit/sim.FAST's
PREFILL = 0.001  # s per uncached prompt token


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


async def chat(
    http: aiohttp.ClientSession, url: str, messages: list[dict[str, Any]], max_tokens: int = 1
) -> dict[str, Any]:
    body = {"model": "sim-model", "messages": messages, "max_tokens": max_tokens}
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def ask(
    http: aiohttp.ClientSession, url: str, text: str, max_tokens: int = 1
) -> dict[str, Any]:
    """One chat request of `text`, then the simulator's truth of it."""
    await chat(http, url, [{"role": "user", "content": text}], max_tokens)
    return (await truth(url, http))[-1]


async def counters(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith(("vllm:prefix_cache", "vllm:mm_cache"))
    }


async def test_a_repeated_prompt_hits_and_its_prefill_is_cheaper(serve: Serve, http) -> None:
    url = await serve(prefill_per_token=PREFILL, block_tokens=4)
    text = words("w", 10)
    first = await ask(http, url, text)
    second = await ask(http, url, text)
    assert (first["prompt_tokens"], first["cached_tokens"]) == (10, 0)
    # Two whole blocks of 4: the third is partial, and a full hit still recomputes the last token.
    assert (second["prompt_tokens"], second["cached_tokens"]) == (10, 8)
    assert first["ttft_model_s"] == pytest.approx(TTFT + PREFILL * 10)
    assert first["ttft_model_s"] - second["ttft_model_s"] == pytest.approx(PREFILL * 8)
    page = await counters(http, url)
    assert page["vllm:prefix_cache_queries_total"] == 20
    assert page["vllm:prefix_cache_hits_total"] == 8
    # As vLLM labels them: the model and the engine index.
    async with http.get(url + "/metrics") as r:
        assert 'vllm:prefix_cache_hits_total{engine="0",model_name="sim-model"} 8.0' in (
            await r.text()
        )


async def test_with_the_cache_off_nothing_hits(serve: Serve, http) -> None:
    url = await serve(prefill_per_token=PREFILL, block_tokens=4, prefix_cache=False)
    text = words("w", 10)
    first = await ask(http, url, text)
    second = await ask(http, url, text)
    assert first["cached_tokens"] == second["cached_tokens"] == 0
    assert second["ttft_model_s"] == pytest.approx(first["ttft_model_s"])
    assert (await counters(http, url))["vllm:prefix_cache_hits_total"] == 0


async def test_the_next_turn_hits_the_history_and_the_answer_it_resends(serve: Serve, http) -> None:
    url = await serve(prefill_per_token=PREFILL, block_tokens=4)
    history = [{"role": "user", "content": words("u", 8)}]
    reply = await chat(http, url, history, max_tokens=8)  # not streamed
    answer = reply["choices"][0]["message"]["content"]
    assert len(answer.split()) == 8
    history += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": words("v", 4)},
    ]
    await chat(http, url, history)
    turn2 = (await truth(url, http))[-1]
    # 8 prompt words, the 8 words of the answer (cached when it ended), 4 new: the first 16 hit.
    assert (turn2["prompt_tokens"], turn2["cached_tokens"]) == (20, 16)
    assert turn2["ttft_model_s"] == pytest.approx(TTFT + PREFILL * 4)


async def test_a_streamed_answer_is_cached_too(serve: Serve, http) -> None:
    url = await serve(block_tokens=4)
    body = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": words("u", 4)}],
        "max_tokens": 4,
        "stream": True,
    }
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        raw = await r.read()
    answer = "".join(
        part.split('"content":"', 1)[1].split('"', 1)[0]
        for part in raw.decode().split("\n\n")
        if '"content":"' in part
    )
    messages = [
        *body["messages"],
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "next"},
    ]
    await chat(http, url, messages)
    assert (await truth(url, http))[-1]["cached_tokens"] == 8


async def test_the_least_recently_used_blocks_are_evicted(serve: Serve, http) -> None:
    # Room for 4 blocks of 4; each prompt of 9 words fills 2 (a 1-token answer fills none).
    url = await serve(block_tokens=4, prefix_cache_blocks=4)
    a, b, c = words("a", 9), words("b", 9), words("c", 9)
    assert (await ask(http, url, a))["cached_tokens"] == 0
    assert (await ask(http, url, b))["cached_tokens"] == 0
    assert (await ask(http, url, a))["cached_tokens"] == 8  # a is now the most recent
    assert (await ask(http, url, c))["cached_tokens"] == 0  # evicts b, the least recent
    assert (await ask(http, url, a))["cached_tokens"] == 8
    assert (await ask(http, url, b))["cached_tokens"] == 0


async def test_token_id_prompts_are_cached(serve: Serve, http) -> None:
    url = await serve(block_tokens=4)
    body = {"model": "sim-model", "prompt": list(range(9)), "max_tokens": 1}
    for _ in range(2):
        async with http.post(url + "/v1/completions", json=body) as r:
            assert r.status == 200
    assert [t["cached_tokens"] for t in await truth(url, http)] == [0, 8]


def test_blocks_chain_so_a_block_hits_only_after_the_same_prefix() -> None:
    cache = PrefixCache(block_tokens=2, capacity=100)
    cache.insert(block_hashes(["a", "b", "c", "d"], 2))
    assert cache.lookup(block_hashes(["a", "b", "c", "d", "e"], 2), 5) == 4
    # The same second block after another first one is another block.
    assert cache.lookup(block_hashes(["x", "y", "c", "d", "e"], 2), 5) == 0
    # A prompt all cached still recomputes its last token: only its first block counts.
    assert cache.lookup(block_hashes(["a", "b", "c", "d"], 2), 4) == 2
    assert (cache.queries, cache.hits) == (14, 6)


async def test_context_length_lengthens_each_step(serve: Serve, http) -> None:
    per_token = 0.0001
    url = await serve(itl_per_context_token=per_token)
    plain = await serve()
    text = words("w", 10)
    with_context = await ask(http, url, text, max_tokens=5)
    without = await ask(http, plain, text, max_tokens=5)
    # 4 steps after the first of 5 one-token events, each by (10 prompt + i generated) tokens.
    extra = per_token * sum(10 + i for i in range(1, 5))
    assert with_context["decode_model_s"] - without["decode_model_s"] == pytest.approx(extra)
    assert with_context["ttft_model_s"] == pytest.approx(without["ttft_model_s"])


async def test_a_prompt_over_the_context_length_is_refused_as_vllm_does(serve: Serve, http) -> None:
    url = await serve(max_model_len=16, default_max_tokens=4)
    body = {"model": "sim-model", "messages": [{"role": "user", "content": words("w", 12)}]}
    body["max_tokens"] = 5
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 400
        message = (await r.json())["error"]["message"]
    assert message.startswith("This model's maximum context length is 16 tokens. However, you")
    assert "(12 in the messages, 5 in the completion)" in message


def test_the_flags_set_the_knobs() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    flags = ["--no-prefix-cache", "--block-tokens", "8", "--prefill-per-token", "0.001"]
    flags += ["--itl-per-context-token", "1e-5", "--image-tokens", "3", "--ttft-per-image", "0.1"]
    flags += ["--tool-steps", "2", "--prefix-cache-blocks", "10"]
    config = config_from_args(parser.parse_args(flags))
    assert config.model_dump(include=set(KNOBS)) == KNOBS
    assert config_from_args(parser.parse_args([])).prefix_cache  # on by default, as in vLLM


KNOBS = {
    "prefix_cache": False,
    "block_tokens": 8,
    "prefill_per_token": 0.001,
    "itl_per_context_token": 1e-5,
    "image_tokens": 3,
    "ttft_per_image": 0.1,
    "tool_steps": 2,
    "prefix_cache_blocks": 10,
}
