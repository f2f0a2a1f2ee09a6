"""Reading the neutral message format (Chat Completions, workload/item.py) for the kinds that
speak another one (anthropic.py, responses.py): a message's text and content parts, a data URL's
media type and payload, a tool call's parsed arguments, a tool definition's parts.

Every request of a session resends its whole history, so these run once per message per turn;
they copy nothing they need not (a data URL's base64 is sliced, never decoded: the server is the
one to check it, and a megabyte image decoded and re-encoded per turn would be client time).
"""

from __future__ import annotations

from typing import Any

import orjson

# One reading of a message's text for the whole package (its parts of type "text").
from latbench.workload.session import text_of as text_of

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class ConversionError(ValueError):
    """A message or tool definition the target API cannot carry; the message says which."""


def parts_of(content: object) -> list[dict[str, Any]]:
    """A message's content as parts: a string becomes one text part."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list | tuple):
        return [p for p in content if isinstance(p, dict)]
    return []


def image_url(part: dict[str, Any]) -> str:
    """The URL of an `image_url` part (`{"image_url": {"url": ...}}`, or the bare string some
    clients send)."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise ConversionError("an image_url part without a url")
    return url


def split_data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 payload) of a `data:<type>;base64,<data>` URL; None for another URL."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url.partition(",")
    media, _, encoding = head[5:].partition(";")
    if not sep or encoding != "base64" or not media:
        raise ConversionError(f"image data URL is not data:<type>;base64,...: {url[:60]!r}")
    return media, data


def arguments(call: dict[str, Any]) -> tuple[str, str, str]:
    """(id, name, arguments JSON text) of an assistant's `tool_calls` entry."""
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ConversionError(f"a tool call without a function name: {call!r:.120}")
    args = fn.get("arguments")
    return str(call.get("id") or ""), fn["name"], args if isinstance(args, str) else ""


def arguments_object(text: str) -> dict[str, Any]:
    """A tool call's arguments as the JSON object an `input` field must be. A model may generate
    arguments that are not JSON (cut at max_tokens, or a small model's noise): the call is still
    resent, with its id and name so that its result pairs with it, and `{}` as its input, since
    Anthropic takes nothing but an object there; the server's own record of what it generated
    is all that is lost, and the benchmark only needs the history's shape and length."""
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def function(tool: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """(name, description, parameters schema) of a Chat Completions tool definition
    (`{"type": "function", "function": {...}}`, or the function object itself)."""
    fn = tool.get("function", tool)
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or not name:
        raise ConversionError(f"a tool definition without a function name: {tool!r:.120}")
    desc = fn.get("description")
    params = fn.get("parameters")
    if not isinstance(params, dict):
        params = EMPTY_SCHEMA
    elif "type" not in params:  # chat servers assume an object; Anthropic's schema must say it
        params = {"type": "object", **params}
    return name, desc if isinstance(desc, str) else None, params
