"""Images in the simulator's three chat-like formats (prompt.py), over real sockets.

Each image adds `image_tokens` to the prompt and, unless the prefix cache already holds it,
`ttft_per_image` to the TTFT its model plans, both read back from `/sim/truth?raw=1`; `/metrics`
counts images as vLLM's multi-modal cache does. A malformed image is a 400 naming the field.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from conftest import Serve
from kit.sim import truth
from prometheus_client.parser import text_string_to_metric_families

from latbench.client.preflight import ANTHROPIC_VERSION

HEADERS = {"anthropic-version": ANTHROPIC_VERSION}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(40))).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(40)).decode()
PER_IMAGE = 0.01
PATH = {"chat": "/v1/chat/completions", "anthropic": "/v1/messages", "responses": "/v1/responses"}
PERSONALITY = {"chat": "openai", "anthropic": "anthropic", "responses": "responses"}


def image_part(api: str, data: str, media: str = "image/png") -> dict[str, Any]:
    url = f"data:{media};base64,{data}"
    if api == "chat":
        return {"type": "image_url", "image_url": {"url": url}}
    if api == "anthropic":
        source = {"type": "base64", "media_type": media, "data": data}
        return {"type": "image", "source": source}
    return {"type": "input_image", "image_url": url}


def request(api: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    text = {"type": "input_text" if api == "responses" else "text", "text": "what is this"}
    message = [{"role": "user", "content": [text, *parts]}]
    if api == "responses":
        return {"model": "sim-model", "input": message, "max_output_tokens": 2}
    return {"model": "sim-model", "messages": message, "max_tokens": 2}


async def send(http: aiohttp.ClientSession, url: str, api: str, parts: list[Any]) -> Any:
    async with http.post(url + PATH[api], json=request(api, parts), headers=HEADERS) as r:
        return r.status, await r.json()


async def last_truth(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    return (await truth(url, http))[-1]


@pytest.mark.parametrize("api", ["chat", "anthropic", "responses"])
async def test_each_image_adds_its_ttft_and_tokens(serve: Serve, http, api: str) -> None:
    url = await serve(api=PERSONALITY[api], ttft_per_image=PER_IMAGE, image_tokens=5)
    status, _ = await send(http, url, api, [])
    assert status == 200
    none = await last_truth(http, url)
    status, answer = await send(
        http, url, api, [image_part(api, PNG), image_part(api, JPEG, "image/jpeg")]
    )
    assert status == 200, answer
    two = await last_truth(http, url)
    assert (none["images"], two["images"]) == (0, 2)
    assert two["prompt_tokens"] - none["prompt_tokens"] == 10  # image_tokens each
    assert two["ttft_model_s"] - none["ttft_model_s"] == pytest.approx(2 * PER_IMAGE)
    usage = answer["usage"]
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    assert prompt == two["prompt_tokens"]


def user(text: str, *images: str) -> dict[str, Any]:
    """A chat user message: its text (4 words: one block of 4 tokens), then its images (PNG or
    JPEG data)."""
    parts = [image_part("chat", d, "image/png" if d == PNG else "image/jpeg") for d in images]
    return {"role": "user", "content": [{"type": "text", "text": text}, *parts]}


@pytest.mark.parametrize("image_tokens", [4, 0])
async def test_an_image_the_prefix_cache_holds_is_not_encoded_again(
    serve: Serve, http, image_tokens: int
) -> None:
    """vLLM skips the encoder for an image whose tokens the prefix cache already computed; an
    image beyond the cached prefix, or another image in the same place, is encoded. With
    `image_tokens: 0` an image is held when a cached token follows it and its data was seen."""
    url = await serve(ttft=0.002, ttft_per_image=PER_IMAGE, image_tokens=image_tokens,
                      block_tokens=4)  # fmt: skip
    a, b, c = user("a b c d", PNG), user("e f g h"), user("i j k l")
    bodies = [
        [a, b],  # new: the PNG is encoded
        [a, b, c],  # the same history resent: the PNG lies inside the cached prefix
        [user("a b c d", JPEG), b, c],  # another image in the same place
        [a, b, c, user("m n o p", JPEG)],  # the PNG held, the JPEG after the cached prefix
    ]
    for messages in bodies:
        body = {"model": "sim-model", "messages": messages, "max_tokens": 2}
        async with http.post(url + PATH["chat"], json=body) as r:
            assert r.status == 200, await r.text()
    served = await truth(url, http)
    assert [e["images"] for e in served] == [1, 1, 1, 2]
    assert [e["images_encoded"] for e in served] == [1, 0, 1, 1], served
    assert [e["cached_tokens"] > 0 for e in served] == [False, True, True, True]
    for e in served:
        planned = 0.002 + PER_IMAGE * e["images_encoded"]
        assert e["ttft_model_s"] == pytest.approx(planned, abs=1e-9)
    async with http.get(url + "/sim/truth") as r:
        assert (await r.json())["images_encoded"] == 3


async def test_the_metrics_count_images_and_repeats(serve: Serve, http) -> None:
    url = await serve()
    await send(http, url, "chat", [image_part("chat", PNG)])
    await send(http, url, "chat", [image_part("chat", PNG), image_part("chat", JPEG, "image/jpeg")])
    async with http.get(url + "/metrics") as r:
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    assert families["vllm:mm_cache_queries"].samples[0].value == 3
    assert families["vllm:mm_cache_hits"].samples[0].value == 1  # the PNG, sent again
    async with http.get(url + "/sim/truth") as r:
        assert (await r.json())["images"] == 3


async def test_image_tokens_count_against_the_context_length(serve: Serve, http) -> None:
    url = await serve(image_tokens=100, max_model_len=64, default_max_tokens=2)
    status, answer = await send(http, url, "chat", [image_part("chat", PNG)])
    assert status == 400
    assert "(103 in the messages, 2 in the completion)" in answer["error"]["message"]


BAD = "data:image/png;base64,"
CASES = [
    (
        "chat",
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        "messages[0].content[1].image_url.url: the simulator fetches no URLs",
    ),
    (
        "chat",
        {"type": "image_url", "image_url": {"url": BAD + "not*base64"}},
        "messages[0].content[1].image_url.url: the image data is not valid base64",
    ),
    (
        "chat",
        {"type": "image_url", "image_url": {"url": "data:text/plain;base64," + PNG}},
        "messages[0].content[1].image_url.url: unsupported image media type 'text/plain'",
    ),
    (
        "chat",
        {"type": "image_url", "image_url": {"url": BAD + JPEG}},
        "messages[0].content[1].image_url.url: the image data is not image/png (its first bytes",
    ),
    (
        "chat",
        {"type": "image_url", "image_url": {"url": "data:image/png," + PNG}},
        "messages[0].content[1].image_url.url: expected a base64 data URL",
    ),
    (
        "chat",
        {"type": "image_url", "image_url": {}},
        "messages[0].content[1].image_url.url must be a string",
    ),
    (
        "anthropic",
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        "messages.0.content.1.source.type: the simulator takes base64 images only",
    ),
    (
        "anthropic",
        {"type": "image", "source": {"type": "base64", "media_type": "image/png"}},
        "messages.0.content.1.source: the image data is missing",
    ),
    (
        "anthropic",
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG}},
        "messages.0.content.1.source: unsupported image media type 'image/bmp'",
    ),
    (
        "responses",
        {"type": "input_image", "image_url": "http://example.com/a.png"},
        "input[0].content[1].image_url: the simulator fetches no URLs",
    ),
    (
        "responses",
        {"type": "input_image", "image_url": BAD + PNG[:-3]},
        "input[0].content[1].image_url: the image data is not valid base64",
    ),
]


@pytest.mark.parametrize(("api", "part", "message"), CASES)
async def test_a_malformed_image_is_a_400_naming_the_field(
    serve: Serve, http, api: str, part: dict[str, Any], message: str
) -> None:
    url = await serve(api=PERSONALITY[api])
    status, answer = await send(http, url, api, [part])
    assert status == 400
    assert answer["error"]["message"].startswith(message), answer
