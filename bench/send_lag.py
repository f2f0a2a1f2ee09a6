"""`python -m bench.send_lag`: where the time goes between the moment a request is due and the
moment its bytes leave, on a worker's own set-up (the stdlib loop with kernel stamps, eager
request writes, the StampingConnector), against the simulator.

Each of `--streams` closed-loop users sends requests for `--seconds`; aiohttp's trace hooks stamp
when the request entered aiohttp (`request_start`), when it had its connection (pooled or new),
and when its headers were written; the record's `t_sent` is the kernel's transmit stamp of the
last byte (latbench/shared/rxstamp.py), and the simulator's truth gives the kernel's arrival stamp
at the server. Before issue 15, `t_sent` was taken where `due` is here, so every leg below was in
TTFT. Prints one JSON line per stream count: p50 / p99 of each leg, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.request
from time import monotonic_ns
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import orjson

from latbench.client import (
    API_KINDS,
    Endpoint,
    RequestOptions,
    StampingConnector,
    Timeouts,
    stream_request,
)
from latbench.load.eager import install as install_eager_writes
from latbench.shared import rxstamp
from latbench.sim import SimConfig, SimProcess
from latbench.workload import WorkItem

LEGS = ("due_to_aiohttp", "aiohttp_to_connection", "connection_to_headers", "headers_to_wire",
        "wire_to_server", "due_to_wire")  # fmt: skip


def _tracer(marks: dict[int, dict[str, int]]) -> aiohttp.TraceConfig:
    tc = aiohttp.TraceConfig()

    def hook(name: str) -> Any:
        async def note(_s: Any, ctx: SimpleNamespace, _p: Any) -> None:
            marks.setdefault(ctx.trace_request_ctx["seq"], {}).setdefault(name, monotonic_ns())

        return note

    tc.on_request_start.append(hook("aiohttp"))
    tc.on_connection_reuseconn.append(hook("connection"))
    tc.on_connection_create_end.append(hook("connection"))
    tc.on_request_headers_sent.append(hook("headers"))
    return tc


async def measure(url: str, streams: int, seconds: float) -> dict[str, Any]:
    ep = Endpoint(url, API_KINDS["chat"], RequestOptions("sim-model", True, True, {}),
                  {}, Timeouts(total=60))  # fmt: skip
    item = WorkItem(prompt="a b c", messages=({"role": "user", "content": "a b c"},),
                    prompt_tokens=3, max_tokens=16)  # fmt: skip
    marks: dict[int, dict[str, int]] = {}
    due: dict[int, int] = {}
    records = []
    seqs = iter(range(1 << 30))
    end = monotonic_ns() + int(seconds * 1e9)
    connector = StampingConnector(limit=streams, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[_tracer(marks)]) as s:
        post = s.post

        def traced(*a: Any, **k: Any) -> Any:  # the request's number reaches the trace hooks
            return post(*a, **k, trace_request_ctx={"seq": current[0]})

        s.post = traced  # type: ignore[method-assign]
        current = [0]

        async def user() -> None:
            while monotonic_ns() < end:
                n = current[0] = next(seqs)
                due[n] = t = monotonic_ns()
                records.append(await stream_request(s, ep, item, run_id="b", seq=n,
                                                    phase="measure", t_intended=t))  # fmt: skip

        await asyncio.gather(*(user() for _ in range(streams)))
    return {"records": records, "marks": marks, "due": due}


def legs(run: dict[str, Any], truth: list[dict[str, Any]], skip: int) -> dict[str, Any]:
    # The server's arrivals in order, matched to the sends in order (kept on loopback).
    ok = sorted((r for r in run["records"] if r.ok and r.seq >= skip), key=lambda r: r.t_sent)
    arrivals = sorted(e["arrival_ns"] for e in truth)
    out: dict[str, list[float]] = {k: [] for k in LEGS}
    j = 0
    for r in ok:
        while j < len(arrivals) and arrivals[j] < r.t_sent - 100_000:
            j += 1
        m = run["marks"].get(r.seq, {})
        if j == len(arrivals) or len(m) < 3:
            continue
        due = run["due"][r.seq]
        for k, a, b in (("due_to_aiohttp", due, m["aiohttp"]),
                        ("aiohttp_to_connection", m["aiohttp"], m["connection"]),
                        ("connection_to_headers", m["connection"], m["headers"]),
                        ("headers_to_wire", m["headers"], r.t_sent),
                        ("wire_to_server", r.t_sent, arrivals[j]),
                        ("due_to_wire", due, r.t_sent)):  # fmt: skip
            out[k].append((b - a) / 1e6)
        j += 1
    return {
        k: [round(float(np.percentile(v, p)), 3) for p in (50, 99)] for k, v in out.items() if v
    } | {"requests": len(out["due_to_wire"])}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.send_lag", description=__doc__)
    ap.add_argument("--streams", default="16,64")
    ap.add_argument("--seconds", type=float, default=5.0)
    ns = ap.parse_args()
    with SimProcess(SimConfig(ttft=0.05, itl=0.01)) as sim:
        for k in (int(x) for x in ns.streams.split(",")):
            urllib.request.urlopen(urllib.request.Request(sim.url + "/sim/truth/reset", b""))
            loop = rxstamp.new_event_loop()
            install_eager_writes(loop)
            run = loop.run_until_complete(measure(sim.url, k, ns.seconds))
            loop.close()
            with urllib.request.urlopen(sim.url + "/sim/truth?raw=1") as t:
                truth = orjson.loads(t.read())["requests"]
            line = {
                "streams": k,
                "kernel_stamps": rxstamp.AVAILABLE,
                "load_avg_1m": os.getloadavg()[0],
                "ms_p50_p99": legs(run, truth, skip=k),
            }
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
