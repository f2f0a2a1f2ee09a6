"""The simulator as tests run it in this process (the `serve_app` and `serve` fixtures of
tests/conftest.py): its pacing and where it listens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestServer

# Fast pacing for tests that check content, not timing.
FAST: dict[str, Any] = {"ttft": 0.002, "itl": 0.001}

# `await serve(**SimConfig fields)`: its base URL; `await serve_app(...)`: the server itself.
Serve = Callable[..., Awaitable[str]]
ServeApp = Callable[..., Awaitable[TestServer]]


def base_url(server: TestServer) -> str:
    """The server's base URL, without the trailing slash the API paths add."""
    return str(server.make_url("")).rstrip("/")
