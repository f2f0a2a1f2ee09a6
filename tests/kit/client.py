"""One request through latbench's client, as the client-stage tests send it: the options a
simulator accepts, and the request sent as a worker sends a measured one."""

from __future__ import annotations

from time import monotonic_ns
from typing import Any

import aiohttp

from latbench.client import Endpoint, RequestOptions, stream_request
from latbench.records import Record
from latbench.workload import WorkItem


def options(extensions: bool = False, **extra_body: Any) -> RequestOptions:
    """The simulator's model; vLLM's extensions only when asked; `extra_body` sent as is."""
    return RequestOptions(
        model="sim-model", vllm_extensions=extensions, ignore_eos=True, extra_body=extra_body
    )


async def one(http: aiohttp.ClientSession, ep: Endpoint, item: WorkItem) -> Record:
    """`item` sent to `ep`, intended now: its record."""
    t = monotonic_ns()
    return await stream_request(http, ep, item, run_id="t", seq=0, phase="measure", t_intended=t)
