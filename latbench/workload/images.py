"""Images in chat requests: N generated images per request, sent as data URLs.

`WithImages` wraps a single-request workload and `SessionsWithImages` a session workload
(workload/session.py); `with_images` picks the one that fits. Each adds, to the last user
message of a request (or to each turn's new message), a text part and `count` image parts in the
neutral Chat Completions form, `{"type": "image_url", "image_url": {"url": "data:image/png;
base64,..."}}`, which each API kind converts (client/apis). A request may draw 0 images: its
message then stays the plain string it was.

Why noise. Every image is uniform noise drawn from (seed, request, image index), so it is the
same in every run with the same seed and different in every request: a server that caches
processed images by content (vLLM hashes them) cannot serve one request's image from another's,
as a benchmark that resends one picture would let it. Noise is also the worst case for size
(nothing compresses), so the bytes on the wire are an upper bound for a real picture of the same
resolution; the peers' random multimodal datasets draw noise pixels too.

Why PNG by hand. Noise does not deflate, so a PNG of it is as small stored (zlib level 0) as at
any level; written here with the stdlib it costs ~0.8 ms at 512x512 and ~3.6 ms at 1024x1024,
against 15 and 59 ms for Pillow at level 0 and 27 and 107 ms at level 1 (measured on this
project's 2-core machine, best of 5). The image is built on the worker's event loop, ahead of
its request's instant (load/worker.py), where every millisecond still delays whatever else is
due then (another request's send, a stream's reads), so the fast path matters; and PNG then
needs no dependency. JPEG needs an encoder: Pillow
(libjpeg-turbo), ~1.2 ms at 512x512 and ~4.7 ms at 1024x1024, quality 75 (Pillow's default),
installed with `pip install 'latbench[images]'` (the spec refuses `format: jpeg` without it).

Bytes per image (decoded, what the record's `image_bytes` counts; base64 adds a third on the
wire): PNG 3 bytes a pixel plus 1 a row (768 KiB at 512x512, 3.0 MiB at 1024x1024); JPEG of noise
~0.6 bytes a pixel (158 kB at 512x512, 631 kB at 1024x1024). A request carries at most
`MAX_REQUEST_IMAGE_BYTES` of them: the spec refuses a count and resolution that could exceed it.

Memory: an item's images are encoded when it is built and live as long as its request; a
session's are encoded with its plan (all its turns) and live as long as the session, since each
turn resends them. A cache keeps the latest images, up to one full request's worth, so building
the same item twice (the worker's warm-up body, then its request) encodes once.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import zlib
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Literal

import numpy as np

from latbench.shared.dist import Dist
from latbench.workload.item import WorkItem, Workload, check_seed, dist_json, rng_for
from latbench.workload.session import SessionPlan, SessionWorkload, Turn

ImageFormat = Literal["png", "jpeg"]
FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg")

# Kept apart from the item and pacer streams: adding images to a workload changes none of its
# prompts, lengths or arrivals for the same seed.
COUNT_STREAM = 0x5EED_0016
PIXEL_STREAM = 0x5EED_0017
# Key prefixes, so request n's images and session s's never share a draw.
_ITEM, _SESSION = 0, 1

# The longest side accepted: past 8192 px every vision model downsamples anyway (OpenAI's to 2048,
# Qwen2-VL's to its max_pixels), and one such PNG is already 192 MiB.
MAX_SIDE = 8192
MAX_IMAGES = 64  # per request
# Decoded image bytes one request may carry: 32 MiB is ~43 MiB of base64, under the built-in
# simulator's 64 MiB body limit and the size of the largest hosted-API request bodies.
MAX_REQUEST_IMAGE_BYTES = 32 * 1024**2
JPEG_QUALITY = 75
# The cache holds one full request's images (base64 is 4/3 of the bytes), whatever their size.
_CACHE_CHARS = MAX_REQUEST_IMAGE_BYTES * 4 // 3 + 4096

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixels(seed: int, key: tuple[int, ...], width: int, height: int) -> np.ndarray:
    """The image's RGB noise, height x width x 3, from (seed, key)."""
    raw = rng_for(seed, PIXEL_STREAM, *key).bytes(width * height * 3)
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG, rows unfiltered, deflate stored (noise would not compress)."""
    height, width, _ = rgb.shape
    rows = np.empty((height, 1 + 3 * width), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = rgb.reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, no interlace
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)),
            _chunk(b"IEND", b""),
        )
    )


def jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image  # the `images` extra; the spec checks it is there for format jpeg

    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def has_jpeg() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def bytes_bound(width: int, height: int, fmt: ImageFormat) -> int:
    """The most bytes one image of this size takes. PNG: its raw rows, plus deflate's 5 bytes per
    stored block (at most 64 KiB each) and the chunks. JPEG of noise measured ~0.6 bytes a
    pixel at quality 75 with 4:2:0 chroma; 1 byte a pixel plus the headers bounds it
    (tests/workload/test_images.py checks both against the encoders)."""
    if fmt == "png":
        raw = height * (1 + 3 * width)
        return raw + 5 * (raw // 16384 + 1) + 64
    return width * height + 4096


def count_bound(count: Dist) -> float | None:
    """The most images a request may draw from `count`; None when nothing bounds it."""
    if count.max is not None:
        return count.max
    if count.kind == "fixed" or count.std == 0:
        return count.mean
    return None


def draw_images(count: Dist, rng: np.random.Generator) -> int:
    x = count.sample_one(rng)
    if not math.isfinite(x):
        return MAX_IMAGES
    return min(MAX_IMAGES, max(0, round(x)))


class ImageMaker:
    """Draws how many images a request carries and makes them, deterministic in (seed, key)."""

    def __init__(
        self,
        count: Dist,
        width: int,
        height: int,
        fmt: ImageFormat = "png",
        seed: int = 0,
    ) -> None:
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise ValueError(f"image size {width}x{height}: each side must be 1..{MAX_SIDE} px")
        if fmt not in FORMATS:
            raise ValueError(f"image format {fmt!r}: give one of {', '.join(FORMATS)}")
        self.count, self.width, self.height, self.fmt = count, width, height, fmt
        self.seed = check_seed(seed)
        self._encode = png if fmt == "png" else jpeg
        self._cache: OrderedDict[tuple[int, ...], tuple[str, int]] = OrderedDict()
        self._cached_chars = 0

    def __getstate__(self) -> dict[str, Any]:
        # Shipped to every worker in its shard: the cache stays behind.
        return {**self.__dict__, "_cache": OrderedDict(), "_cached_chars": 0}

    def image(self, key: tuple[int, ...]) -> tuple[str, int]:
        """Image `key`'s data URL and its decoded bytes."""
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        data = self._encode(pixels(self.seed, key, self.width, self.height))
        url = f"data:image/{self.fmt};base64,{base64.b64encode(data).decode('ascii')}"
        self._cache[key] = out = (url, len(data))
        self._cached_chars += len(url)
        while self._cached_chars > _CACHE_CHARS and len(self._cache) > 1:
            self._cached_chars -= len(self._cache.popitem(last=False)[1][0])
        return out

    def parts(self, key: tuple[int, ...]) -> tuple[list[dict[str, Any]], int]:
        """The image parts request `key` carries (maybe none) and their decoded bytes."""
        k = draw_images(self.count, rng_for(self.seed, COUNT_STREAM, *key))
        made = [self.image((*key, i)) for i in range(k)]
        parts = [{"type": "image_url", "image_url": {"url": url}} for url, _ in made]
        return parts, sum(size for _, size in made)

    def describe(self) -> dict[str, Any]:
        return {
            "count": dist_json(self.count),
            "width": self.width,
            "height": self.height,
            "format": self.fmt,
            "bytes_per_image_max": bytes_bound(self.width, self.height, self.fmt),
        }


def with_parts(content: Any, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A message's content with image parts after its text."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}, *parts]
    if isinstance(content, list | tuple):
        return [*content, *parts]
    raise ValueError(f"a user message's content is {type(content).__name__}, not text or parts")


class WithImages:
    """A single-request workload whose requests carry images in their last user message.

    An item with images asks for no prompt length (`prompt_tokens` None): the server counts
    each image's tokens in its usage too, so the text's asked length no longer describes the
    prompt, and the summary's asked-vs-reported check would warn about every such request.
    """

    def __init__(self, inner: Workload, images: ImageMaker) -> None:
        self.inner, self.images = inner, images

    def item(self, n: int) -> WorkItem:
        item = self.inner.item(n)
        parts, size = self.images.parts((_ITEM, n))
        if not parts:
            return item
        messages = list(item.messages)
        last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
        if last is None:
            raise ValueError(f"request {n} has no user message to attach images to")
        messages[last] = {**messages[last], "content": with_parts(messages[last]["content"], parts)}
        return replace(
            item,
            messages=tuple(messages),
            prompt_tokens=None,
            images=item.images + len(parts),
            image_bytes=item.image_bytes + size,
        )

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "images": self.images.describe()}


class SessionsWithImages:
    """A session workload whose turns each carry images in their new user message; each later
    turn resends them with the conversation (the same strings, not encoded again)."""

    def __init__(self, inner: SessionWorkload, images: ImageMaker) -> None:
        self.inner, self.images = inner, images

    def session(self, s: int) -> SessionPlan:
        plan = self.inner.session(s)
        turns: list[Turn] = []
        carried = 0  # what the last turn's request resends
        for t, turn in enumerate(plan.turns):
            parts, size = self.images.parts((_SESSION, s, t))
            carried += size
            if carried > MAX_REQUEST_IMAGE_BYTES:
                raise ValueError(
                    f"session {s}: turn {t} would resend {carried / 1024**2:.1f} MiB of images, "
                    f"over the cap of {MAX_REQUEST_IMAGE_BYTES // 1024**2} MiB a request: fewer "
                    "images a turn, or a lower resolution"
                )
            if parts:
                turn = replace(
                    turn,
                    content=tuple(with_parts(turn.content, parts)),
                    prompt_tokens=None,
                    images=turn.images + len(parts),
                    image_bytes=turn.image_bytes + size,
                )
            turns.append(turn)
        return replace(plan, turns=tuple(turns))

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "images": self.images.describe()}


def with_images(
    inner: Workload | SessionWorkload, images: ImageMaker
) -> WithImages | SessionsWithImages:
    """`inner` with images: on each turn of a session workload, else on each request. Two
    classes, not one with both methods, because the worker tells a session workload by its
    `session` method (the runtime-checkable protocol)."""
    if isinstance(inner, SessionWorkload):
        return SessionsWithImages(inner, images)
    return WithImages(inner, images)
