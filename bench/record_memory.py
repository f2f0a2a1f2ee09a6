"""`python -m bench.record_memory`: bytes the runner holds per finished record, as it keeps them
(event instants and counts in typed arrays) and as tuples of Python ints (before), side by side.

A 128-event record goes through the worker-to-runner frame codec (`latbench/load/wire.py`) N times;
tracemalloc counts what the decoded records hold. Pure CPU and memory; no network.
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from latbench.load import wire as _wire
from latbench.records.record import Record


def as_tuples(run_id: str, m: list[Any]) -> Record:
    """The decoding before typed arrays: every instant a Python int in a tuple."""
    v = m[1:]
    base = v[_wire._T_SENT]
    v[_wire._EV_T] = tuple([base + t for t in v[_wire._EV_T]])
    v[_wire._EV_N] = None if v[_wire._EV_N] is None else tuple(v[_wire._EV_N])
    return Record(run_id, *v)


def held(decode: Callable[[str, list[Any]], Record], payload: bytes, n: int) -> float:
    tracemalloc.start()
    kept = [decode("run", orjson.loads(payload)) for _ in range(n)]
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    return size / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=128)
    ap.add_argument("--records", type=int, default=5000)
    ns = ap.parse_args()
    t0 = 10**13  # a monotonic instant some hours after boot, as in real runs
    rec = Record(
        "run", 1, "measure", "chat", t0, t0 + 10_000,
        ev_t=tuple(t0 + 50_000_000 + i * 10_000_000 for i in range(ns.events)),
        ev_kind="c" * ns.events, ev_n=(1,) * ns.events, status=200,
        usage_completion_tokens=ns.events,
    )  # fmt: skip
    payload = orjson.dumps(_wire.pack_record(rec))
    arrays = held(_wire.unpack_record, payload, ns.records)
    tuples = held(as_tuples, payload, ns.records)
    print(json.dumps({
        "events_per_record": ns.events,
        "bytes_per_record_arrays": round(arrays),
        "bytes_per_record_tuples": round(tuples),
        "ratio_arrays_over_tuples": round(arrays / tuples, 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
