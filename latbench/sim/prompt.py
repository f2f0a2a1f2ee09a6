"""A request's prompt as the simulator reads it: its tokens in order, its images, the tools it
offers and the tool results that answer the last user message.

The simulator's "tokenizer" is whitespace: each word is one token, so prompt lengths are easy to
predict in tests. A prompt's tokens are the words of its parts in the order the request gives
them, roles left out: the tool definitions (name, description, then the parameters' schema as
compact JSON: chat templates put tools first), then each message's text, each tool call's name
and arguments, and each tool result's text. The same history resent is therefore the same token
sequence, and hits the prefix cache (prefix.py), as it would on vLLM.

An image is `image_tokens` tokens (SimConfig), all the same placeholder keyed by the image's
data, as vLLM keys the blocks an image fills by the image's hash; with `image_tokens: 0` an image
adds no tokens. Each image's offset (the tokens before it) is kept: the engine charges
`ttft_per_image` only for images the prefix cache does not already cover (engine.py). Images
must be data URLs: the simulator fetches nothing, so an http URL is a 400. The data URL's media
type must be an image type and its base64 data must decode to an image of that type (checked by
its leading magic bytes), each failure a 400 naming the field.

Each format's body is read by its module (request.py for chat and completions,
anthropic_format.py, responses_format.py) into one `Prompt`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import orjson

from latbench.sim.formats import ApiError
from latbench.sim.prefix import Token

# Each accepted image media type and the bytes its data starts with.
IMAGE_MAGIC: dict[str, bytes] = {
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/jpeg": b"\xff\xd8\xff",
    "image/gif": b"GIF8",
    "image/webp": b"RIFF",
}


@dataclass(slots=True)
class Prompt:
    """One request's prompt, built part by part by its format's reader."""

    image_tokens: int = 0  # tokens each image counts for (SimConfig.image_tokens)
    tokens: list[Token] = field(default_factory=list)
    images: int = 0
    image_keys: list[int] = field(default_factory=list)  # each image's key, its data's hash
    image_offsets: list[int] = field(default_factory=list)  # each image's first token's index
    tools: list[str] = field(default_factory=list)  # the names of the tools offered, in order
    tool_results: int = 0  # tool results since the last user message

    def words(self, text: str) -> None:
        self.tokens.extend(text.split())

    def json_words(self, obj: Any) -> None:
        """An object's compact JSON, as words (a tool's schema, a tool call's input)."""
        self.words(orjson.dumps(obj).decode())

    def tool(self, name: str, description: Any, schema: Any) -> None:
        self.tools.append(name)
        self.words(name)
        if isinstance(description, str):
            self.words(description)
        if schema is not None:
            self.json_words(schema)

    def user_turn(self) -> None:
        self.tool_results = 0

    def tool_result(self) -> None:
        self.tool_results += 1

    def data_url(self, url: object, where: str) -> None:
        """An image given as a URL: only `data:<image type>;base64,<data>` is taken."""
        if not isinstance(url, str):
            raise ApiError(400, f"{where} must be a string (a data URL)", where)
        if not url.startswith("data:"):
            raise ApiError(
                400,
                f"{where}: the simulator fetches no URLs; send the image as a data URL "
                "(data:image/png;base64,...)",
                where,
            )
        head, comma, data = url[5:].partition(",")
        media, _, encoding = head.partition(";")
        if not comma or encoding != "base64":
            raise ApiError(
                400, f"{where}: expected a base64 data URL, data:<media type>;base64,<data>", where
            )
        self.image(media, data, where)

    def image(self, media: object, data: object, where: str) -> None:
        """An image given as its media type and base64 data."""
        if media not in IMAGE_MAGIC:
            raise ApiError(
                400,
                f"{where}: unsupported image media type {media!r}; expected one of "
                f"{', '.join(IMAGE_MAGIC)}",
                where,
            )
        if not isinstance(data, str) or not data:
            raise ApiError(400, f"{where}: the image data is missing", where)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            message = f"{where}: the image data is not valid base64 ({e})"
            raise ApiError(400, message, where) from None
        if not raw.startswith(IMAGE_MAGIC[media]) or (
            media == "image/webp" and raw[8:12] != b"WEBP"
        ):
            raise ApiError(
                400,
                f"{where}: the image data is not {media} (its first bytes are not that format's)",
                where,
            )
        key = hash(data)
        self.images += 1
        self.image_keys.append(key)
        self.image_offsets.append(len(self.tokens))
        self.tokens.extend([("image", key)] * self.image_tokens)


def text_of(value: object, where: str) -> str:
    """A field that must be a string."""
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a string", where)
    return value


def object_of(value: object, where: str) -> dict[str, Any]:
    """A field that must be a JSON object."""
    if not isinstance(value, dict):
        raise ApiError(400, f"{where} must be an object", where)
    return value


def name_of(value: object, where: str) -> str:
    """A tool's or a tool call's name: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{where} must be a non-empty string", where)
    return value
