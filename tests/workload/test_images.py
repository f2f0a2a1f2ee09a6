"""Images in requests (workload/images.py): decodable PNG and JPEG of the asked size, the same for
the same seed and different per request and per image, the byte bound the spec relies on, the
parts placed in the last user message of an item and of each session turn, and the spec's
errors naming the field."""

from __future__ import annotations

import base64
import io
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image

from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError
from latbench.spec import load_spec
from latbench.workload import SyntheticWorkload
from latbench.workload.images import (
    MAX_IMAGES,
    ImageMaker,
    SessionsWithImages,
    WithImages,
    bytes_bound,
    jpeg,
    pixels,
    png,
    with_images,
)
from latbench.workload.session import SessionPlan, SessionWorkload, Turn


def decode(url: str) -> tuple[str, bytes]:
    head, _, data = url.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64")
    return head.removeprefix("data:").removesuffix(";base64"), base64.b64decode(data)


def image_urls(message: dict[str, Any]) -> list[str]:
    content = message["content"]
    assert isinstance(content, list | tuple)
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"]


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 3), (64, 48), (300, 200)])
def test_png_decodes_to_the_pixels(width: int, height: int) -> None:
    rgb = pixels(3, (0, 1, 2), width, height)
    data = png(rgb)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.size == (width, height) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), rgb)
    assert len(data) <= bytes_bound(width, height, "png")


@pytest.mark.parametrize(("width", "height"), [(1, 1), (16, 9), (333, 77), (640, 480)])
def test_jpeg_decodes_to_its_size_within_the_bound(width: int, height: int) -> None:
    data = jpeg(pixels(3, (0, 1, 2), width, height))
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (width, height)
    assert len(data) <= bytes_bound(width, height, "jpeg")


def test_the_png_bound_holds_past_many_deflate_blocks() -> None:
    # 1000x700 is 2.1 MB of rows: dozens of stored blocks, each with its own header.
    data = png(pixels(0, (0,), 1000, 700))
    assert len(data) <= bytes_bound(1000, 700, "png")
    assert len(data) >= 700 * (1 + 3 * 1000)  # stored: nothing of noise compresses


def test_images_are_the_same_per_seed_and_differ_per_request_and_image() -> None:
    def urls(seed: int, n: int) -> list[str]:
        w = WithImages(
            SyntheticWorkload(8, 4, seed=seed), ImageMaker(Dist(mean=2), 32, 16, seed=seed)
        )
        return image_urls(w.item(n).messages[-1])

    assert urls(1, 5) == urls(1, 5)
    assert len({*urls(1, 5), *urls(1, 6)}) == 4  # two per request, all four distinct
    assert urls(1, 5) != urls(2, 5)


def test_item_carries_text_then_images_and_counts_them() -> None:
    inner = SyntheticWorkload(8, 4, seed=0)
    w = WithImages(inner, ImageMaker(Dist(mean=3), 40, 30, "jpeg", seed=0))
    plain, item = inner.item(2), w.item(2)
    content = item.messages[-1]["content"]
    assert content[0] == {"type": "text", "text": plain.messages[-1]["content"]}
    urls = image_urls(item.messages[-1])
    assert len(urls) == 3 == item.images
    decoded = [decode(u) for u in urls]
    assert {mime for mime, _ in decoded} == {"image/jpeg"}
    assert item.image_bytes == sum(len(b) for _, b in decoded)
    assert Image.open(io.BytesIO(decoded[0][1])).size == (40, 30)
    # Text the same; the asked length dropped (the server counts image tokens in its usage too).
    assert item.prompt == plain.prompt and item.max_tokens == plain.max_tokens
    assert plain.prompt_tokens is not None and item.prompt_tokens is None


def test_a_draw_of_zero_leaves_the_request_as_it_was() -> None:
    inner = SyntheticWorkload(8, 4, seed=0)
    counts = Dist(kind="uniform", min=0, max=2)
    w = WithImages(inner, ImageMaker(counts, 8, 8, seed=0))
    items = [w.item(n) for n in range(60)]
    assert {i.images for i in items} == {0, 1, 2}
    for n, item in enumerate(items):
        if item.images == 0:
            assert item == inner.item(n)


def test_draws_are_capped() -> None:
    w = WithImages(SyntheticWorkload(8, 4), ImageMaker(Dist(mean=10_000), 1, 1))
    assert w.item(0).images == MAX_IMAGES


def test_a_pickled_maker_makes_the_same_images_without_its_cache() -> None:
    maker = ImageMaker(Dist(mean=1), 16, 16, seed=9)
    url = maker.image((0, 1, 0))
    copy = pickle.loads(pickle.dumps(maker))
    assert copy._cache == {} and copy.image((0, 1, 0)) == url


def test_the_cache_stays_within_one_requests_worth() -> None:
    maker = ImageMaker(Dist(mean=1), 2048, 2048, seed=0)  # 12 MiB a PNG, 16 MiB as base64
    for i in range(5):
        maker.image((0, i, 0))
    assert len(maker._cache) == 2  # 32 MiB of base64 is the most it keeps


@dataclass
class Conversations:
    """A session workload of fixed turns, to wrap."""

    turns: int

    def session(self, s: int) -> SessionPlan:
        return SessionPlan(
            turns=tuple(Turn(f"turn {t} of {s}", 4, prompt_tokens=3) for t in range(self.turns))
        )

    def describe(self) -> dict[str, Any]:
        return {"source": "conversations"}


def test_sessions_get_images_on_each_turn() -> None:
    w = with_images(Conversations(4), ImageMaker(Dist(mean=1), 12, 12, seed=4))
    assert isinstance(w, SessionsWithImages) and isinstance(w, SessionWorkload)
    plan = w.session(3)
    assert plan == w.session(3)  # deterministic in (seed, s)
    urls = []
    for t, turn in enumerate(plan.turns):
        assert turn.images == 1 and turn.prompt_tokens is None
        assert turn.content[0] == {"type": "text", "text": f"turn {t} of 3"}
        (url,) = [p["image_url"]["url"] for p in turn.content[1:]]
        urls.append(url)
        assert turn.image_bytes == len(decode(url)[1])
    assert len(set(urls)) == 4
    assert not set(urls) & {p["image_url"]["url"] for p in w.session(4).turns[0].content[1:]}
    assert w.describe()["images"]["width"] == 12 and w.describe()["source"] == "conversations"


def test_a_session_whose_last_turn_would_resend_too_much_is_refused() -> None:
    # 3 MiB a 1024x1024 PNG, one a turn: the 11th turn would resend 33 MiB.
    w = with_images(Conversations(11), ImageMaker(Dist(mean=1), 1024, 1024, seed=0))
    with pytest.raises(ValueError, match=r"session 0: turn 10 would resend 33\.0 MiB"):
        w.session(0)
    assert len(with_images(Conversations(10), w.images).session(0).turns) == 10


def test_a_single_request_workload_is_not_taken_for_a_session_one() -> None:
    w = with_images(SyntheticWorkload(8, 4), ImageMaker(Dist(mean=1), 8, 8))
    assert isinstance(w, WithImages) and not isinstance(w, SessionWorkload)


def spec(images: dict[str, Any], api: str = "chat") -> dict[str, Any]:
    return {"target": {"api": api}, "workload": {"images": images}, "load": {"requests": 1}}


def test_spec_builds_the_images() -> None:
    s = load_spec(spec({"count": {"kind": "normal", "mean": 2, "std": 1, "max": 4}, "width": 64}))
    assert s.workload.images is not None
    assert (s.workload.images.width, s.workload.images.height, s.workload.images.format) == (
        64,
        512,
        "png",
    )


@pytest.mark.parametrize(
    ("images", "api", "says"),
    [
        ({"width": 0}, "chat", "workload.images.width"),
        ({"height": 9000}, "chat", "workload.images.height"),
        ({"format": "gif"}, "chat", "workload.images.format"),
        ({"count": "normal:2,1"}, "chat", "set count.max"),
        ({"count": 65, "width": 8, "height": 8}, "chat", "over the cap of 64"),
        ({"count": 4, "width": 2048, "height": 2048}, "chat", "48.0 MiB a request, over the cap"),
        ({"count": 1}, "completions", "workload.images: target.api 'completions'"),
    ],
)
def test_spec_errors_name_the_field(images: dict[str, Any], api: str, says: str) -> None:
    with pytest.raises(SpecError, match=says.replace(".", r"\.").replace("(", r"\(")):
        load_spec(spec(images, api))


def test_sessions_resending_more_than_the_cap_are_refused() -> None:
    data = spec({"count": 2, "width": 1024, "height": 1024})  # 6 MiB a turn
    data["workload"]["sessions"] = {"turns": {"kind": "uniform", "min": 1, "max": 6}}
    with pytest.raises(SpecError, match=r"workload: images: up to 12 png images .* last turn"):
        load_spec(data)
    data["workload"]["sessions"] = {"turns": 5}
    load_spec(data)


def test_the_cap_is_on_the_format_bytes() -> None:
    # Four 2048x2048 images: 48 MiB of PNG is refused, ~16 MiB of JPEG is not.
    load_spec(spec({"count": 4, "width": 2048, "height": 2048, "format": "jpeg"}))
    assert bytes_bound(2048, 2048, "jpeg") * 4 < bytes_bound(2048, 2048, "png") * 4 / 2


def test_without_pillow_png_works_and_jpeg_is_a_spec_error() -> None:
    """The plain install has no Pillow (it is the `images` extra): PNG images are still made, and
    a spec asking for JPEG says what to install. Pillow is hidden from a child Python."""
    script = """
import sys
sys.modules["PIL"] = None  # import PIL now raises ImportError, as where it is not installed
from latbench.shared.dist import Dist
from latbench.shared.errors import SpecError
from latbench.spec import load_spec
from latbench.workload import SyntheticWorkload
from latbench.workload.images import ImageMaker, WithImages
item = WithImages(SyntheticWorkload(8, 4), ImageMaker(Dist(mean=1), 8, 8, "png")).item(0)
print("png", item.images, item.image_bytes)
try:
    load_spec({"workload": {"images": {"format": "jpeg"}}})
except SpecError as e:
    print(e)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "png 1 " in done.stdout
    assert (
        "workload.images.format: jpeg needs Pillow, which is not installed: "
        "pip install 'latbench[images]'" in done.stdout
    )
