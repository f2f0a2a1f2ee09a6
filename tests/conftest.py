"""The fixtures tests in every folder share: simulators (a child process, or the app in this
process) and the HTTP client sessions that talk to them. A fixture whose configuration differs
for a reason stays in its test file, named for the difference."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from kit.sim import FAST, Serve, ServeApp, base_url

from latbench.sim import SimConfig, SimProcess, create_app


@pytest.fixture
def sim() -> Iterator[Callable[..., SimProcess]]:
    """`sim(**SimConfig fields)` starts a simulator child process; all are stopped at teardown."""
    started: list[SimProcess] = []

    def start(**fields: object) -> SimProcess:
        proc = SimProcess(SimConfig.model_validate(fields))
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """One simulator child process for a module's tests, its URL. TTFT 20 ms, 5 ms between
    tokens: a 16-token request takes ~100 ms."""
    with SimProcess(SimConfig(ttft=0.02, itl=0.005)) as proc:
        yield proc.url


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """`await serve_app(**SimConfig fields)` runs the simulator's app in this process, FAST
    unless told; the server, whose `app` a test may inspect. All are closed at teardown."""
    servers: list[TestServer] = []

    async def start(**fields: Any) -> TestServer:
        server = TestServer(create_app(SimConfig.model_validate({**FAST, **fields})))
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def serve(serve_app: ServeApp) -> Serve:
    """`await serve(**SimConfig fields)`: as `serve_app`, the server's base URL."""

    async def start(**fields: Any) -> str:
        return base_url(await serve_app(**fields))

    return start


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, as the tests' own code would make one."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session whose every request is capped at 30 s: a stream that hangs fails its
    test instead of holding the run."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s
