"""The eager task factory for aiohttp's request writes (latbench/load/eager.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from latbench.load.eager import eager_request_writes, install
from latbench.shared.rxstamp import new_event_loop  # the workers' loop


class ClientRequest:
    """Stands in for aiohttp's class: the factory picks coroutines by qualified name."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    async def write_bytes(self, gate: asyncio.Future[str] | None = None) -> str:
        self.steps.append("first")
        if gate is None:
            return "done at once"
        try:
            got = await gate
        except asyncio.CancelledError:
            self.steps.append("cancelled")
            raise
        self.steps.append("rest")
        if got == "boom":
            raise RuntimeError("boom")
        return got


async def other(steps: list[str]) -> None:
    steps.append("ran")


def run(coro: Any, *, factory: bool = False) -> Any:
    """On the workers' loop; `factory`: with `eager_request_writes` as its task factory."""
    loop = new_event_loop()
    if factory:
        loop.set_task_factory(eager_request_writes)  # type: ignore[arg-type]
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_a_write_that_does_not_wait_runs_before_create_task_returns() -> None:
    async def main() -> None:
        req = ClientRequest()
        task = asyncio.create_task(req.write_bytes())
        assert req.steps == ["first"] and task.done()
        assert await task == "done at once"

    run(main(), factory=True)


def test_a_write_that_waits_starts_at_once_and_finishes_as_a_task() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for outcome in ("ok", "boom"):
            req = ClientRequest()
            gate: asyncio.Future[str] = loop.create_future()
            task = asyncio.create_task(req.write_bytes(gate))
            assert req.steps == ["first"] and not task.done()
            gate.set_result(outcome)
            if outcome == "ok":
                assert await task == "ok"
            else:
                with pytest.raises(RuntimeError, match="boom"):
                    await task
            assert req.steps == ["first", "rest"]

    run(main(), factory=True)


def test_cancelling_the_task_cancels_the_write() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        req = ClientRequest()
        gate: asyncio.Future[str] = loop.create_future()
        task = asyncio.create_task(req.write_bytes(gate))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert req.steps == ["first", "cancelled"]

    run(main(), factory=True)


def test_other_coroutines_get_ordinary_tasks() -> None:
    async def main() -> None:
        steps: list[str] = []
        task = asyncio.create_task(other(steps))
        assert steps == [] and isinstance(task, asyncio.Task)
        await task
        assert steps == ["ran"]

    run(main(), factory=True)


def test_aiohttp_requests_work_on_a_loop_with_it_installed(sim: Any) -> None:
    server = sim(ttft=0.0, itl=0.0)

    async def main() -> list[int]:
        install(asyncio.get_running_loop())
        body = {"model": "sim-model", "prompt": "hi", "max_tokens": 4, "stream": True}
        statuses = []
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # the second and third reuse the pooled connection
                async with session.post(server.url + "/v1/completions", json=body) as r:
                    statuses.append(r.status)
                    assert (await r.read()).endswith(b"data: [DONE]\n\n")
        return statuses

    assert run(main()) == [200, 200, 200]
