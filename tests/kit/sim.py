"""The simulator as tests run it in this process (the `serve_app` and `serve` fixtures of
tests/conftest.py): its pacing and where it listens; one child process per API personality
(`personalities`); and its own account of what it served (`/sim/truth?raw=1`), read the same
way by every test that checks latbench against it."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from latbench.sim import SimConfig, SimProcess

# Fast pacing for tests that check content, not timing.
FAST: dict[str, Any] = {"ttft": 0.002, "itl": 0.001}

# `await serve(**SimConfig fields)`: its base URL; `await serve_app(...)`: the server itself.
Serve = Callable[..., Awaitable[str]]
ServeApp = Callable[..., Awaitable[TestServer]]

TRUTH = "/sim/truth?raw=1"


@contextmanager
def personalities(**config: Any) -> Iterator[dict[str, SimProcess]]:
    """One simulator child process per API personality ("openai", which serves chat and
    completions, "anthropic", "responses"), each with `config`'s SimConfig fields; all stopped
    on the way out. A module-scoped fixture yields from it (spec.target.SIM_API maps an API
    kind to its personality)."""
    procs = {
        p: SimProcess(SimConfig(api=p, **config)) for p in ("openai", "anthropic", "responses")
    }
    try:
        for proc in procs.values():
            proc.start()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def base_url(server: TestServer) -> str:
    """The server's base URL, without the trailing slash the API paths add."""
    return str(server.make_url("")).rstrip("/")


async def truth(url: str, http: aiohttp.ClientSession | None = None) -> list[dict[str, Any]]:
    """Each request the simulator at `url` kept, oldest first: its arrival, the instant it wrote
    each event and what its model made of it (latbench.sim.engine.Truth). Awaited, so it serves
    a simulator in this process (the `serve` fixture) as well as one in another."""
    if http is None:
        async with aiohttp.ClientSession() as own:
            return await truth(url, own)
    async with http.get(url + TRUTH) as r:
        r.raise_for_status()
        return list((await r.json())["requests"])


def truth_of(url: str) -> list[dict[str, Any]]:
    """`truth` for synchronous code: blocks, so only for a simulator in another process
    (`SimProcess`, the `sim` and `sim_url` fixtures)."""
    with urllib.request.urlopen(url + TRUTH, timeout=10) as r:
        return list(json.load(r)["requests"])
