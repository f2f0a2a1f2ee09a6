"""What a response that brings no token says: a redirect, an error status, a 2xx that is not an
event stream.

Kept apart from the streaming loop (client/stream.py) because none of it is timed: such a record
is already an error, and these only word its detail. Everything here is bounded, in bytes and in
time, since a server writes it: a body that stalls or never ends must not hold the request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

ERROR_BODY_LIMIT = 2048
BODY_SHOWN = 120  # bytes of a body that is not an event stream, shown in the detail
LOCATION_SHOWN = 300  # characters of a redirect's Location named in an error
EVENT_STREAM = "text/event-stream"


def location(resp: aiohttp.ClientResponse) -> str | None:
    """A redirect's Location as an error may name it: at most LOCATION_SHOWN characters (a
    server writes it)."""
    where = resp.headers.get("Location")
    if where is not None and len(where) > LOCATION_SHOWN:
        where = where[: LOCATION_SHOWN - 3] + "..."
    return where


def redirect_detail(resp: aiohttp.ClientResponse) -> str:
    where = location(resp)
    if where is None:
        return f"HTTP {resp.status} redirect without a Location; not followed"
    return f"HTTP {resp.status} redirect to {where}; not followed"


def not_event_stream(resp: aiohttp.ClientResponse) -> str | None:
    """The Content-Type of a 2xx that is not an event stream; None if it is one, or says nothing.

    vLLM, OpenAI, Anthropic and the simulator all send `text/event-stream` (with a charset or
    not). A missing Content-Type is let through: the SSE and API parsers still judge the body,
    and a server or proxy that streams correctly but omits the header should not be refused."""
    ctype = resp.headers.get("Content-Type")
    if ctype is None:
        return None
    if ctype.partition(";")[0].strip().lower() == EVENT_STREAM:
        return None
    return ctype


async def _body_start(resp: aiohttp.ClientResponse, limit: int, until: float) -> tuple[bytes, str]:
    """Up to `limit` bytes of a body that brings no token (what comes before `until`, loop time),
    and their text, decoded leniently. A body that stalls or breaks gives what it had: the record
    already says why the body was read at all."""
    raw = bytearray()
    try:
        async with asyncio.timeout_at(until):
            while len(raw) < limit and (piece := await resp.content.read(limit - len(raw))):
                raw += piece
    except (aiohttp.ClientError, HttpProcessingError, TimeoutError, OSError):
        pass
    return bytes(raw), raw.decode("utf-8", "replace").strip()


async def not_sse_detail(resp: aiohttp.ClientResponse, ctype: str, until: float) -> str:
    _, shown = await _body_start(resp, BODY_SHOWN, until)
    head = f"not an event stream: HTTP {resp.status} with Content-Type {ctype[:100]!r}"
    return f"{head}, body starts {shown!r}" if shown else head


async def error_body_detail(resp: aiohttp.ClientResponse, until: float) -> str:
    """An error status with its message: the JSON `error.message` (OpenAI, vLLM, Anthropic), or
    the start of the body as text."""
    raw, msg = await _body_start(resp, ERROR_BODY_LIMIT, until)
    try:
        obj: Any = orjson.loads(raw)
        if isinstance(obj, dict):
            err = obj.get("error", obj)
            msg = err.get("message", msg) if isinstance(err, dict) else str(err)
    except orjson.JSONDecodeError:
        pass
    return f"HTTP {resp.status}: {msg}" if msg else f"HTTP {resp.status}"
