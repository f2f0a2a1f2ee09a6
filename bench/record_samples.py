"""`python -m bench.record_samples`: what one record's metrics cost on the runner's loop.

The Prometheus sink calls `summary.samples.record_samples` once per finished record, on the
runner's event loop, so its cost bounds how many records a second the live export keeps up with.
Best of 5 repeats of 20,000 calls, for records of 0, 1 and 100 events. Pure CPU; no network.
"""

from __future__ import annotations

import timeit

from latbench.records import Record
from latbench.summary.samples import record_samples

NS = 1_000_000_000


def record(events: int) -> Record:
    t = NS
    return Record(
        run_id="r",
        seq=1,
        phase="measure",
        api="chat",
        t_intended=t,
        t_sent=t,
        t_headers=t + 1_000_000,
        t_end=t + 10_000_000 * (events + 5),
        status=200,
        ev_t=[t + 50_000_000 + i * 10_000_000 for i in range(events)],
        ev_n=None,
        usage_completion_tokens=events,
    )


def main() -> None:
    for events in (0, 1, 100):
        r = record(events)
        best = min(timeit.repeat(lambda r=r: record_samples(r), number=20_000, repeat=5))
        print(f"record_samples, {events:3d} events: {best / 20_000 * 1e6:.1f} us")


if __name__ == "__main__":
    main()
