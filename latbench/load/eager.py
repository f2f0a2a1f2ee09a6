"""Send a request's bytes when it is sent, not one event-loop turn later.

aiohttp buffers a request's headers and writes them with the body in a task. From Python 3.12 it
starts that task eagerly, so the bytes leave inside `session.post`; on 3.11 the task waits for
the next turn of the loop, behind every other ready callback. In a worker busy with dozens of
streams that turn lands in every TTFT as client delay (measured in docs/performance.md).

`eager_request_writes` is a task factory that gives 3.11 the same behaviour, for aiohttp's body
writes only: it runs the coroutine's first step at once, and hands the rest (if any) to a task.
Every other coroutine gets an ordinary task.
"""

from __future__ import annotations

import asyncio
import os
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any

EAGER = ("ClientRequest.write_bytes", "ClientRequest._write_bytes")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, Any]:
    """Go on with a coroutine that has already run up to its first suspension, which gave
    `waiting` (what it awaits) to its driver: the same protocol as `yield from`."""
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as e:  # cancellation included: the coroutine decides
            try:
                waiting = coro.throw(e)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def eager_request_writes(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
) -> asyncio.Future[Any]:
    if getattr(coro, "__qualname__", "") not in EAGER:
        return asyncio.Task(coro, loop=loop, **kwargs)
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        done = loop.create_future()
        done.set_result(stop.value)
        return done
    except BaseException as e:  # it belongs to whoever awaits the task
        failed = loop.create_future()
        failed.set_exception(e)
        return failed
    return asyncio.Task(_resume(coro, waiting), loop=loop, **kwargs)  # type: ignore[arg-type]


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Python 3.12 and later start aiohttp's writes eagerly themselves.
    `LATBENCH_EAGER_WRITES=0` leaves the loop as it is, for bench/ab.py's comparison."""
    if sys.version_info < (3, 12) and os.environ.get("LATBENCH_EAGER_WRITES") != "0":
        loop.set_task_factory(eager_request_writes)  # type: ignore[arg-type]
