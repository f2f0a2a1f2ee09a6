"""Each stair of a staircase run (`load.mode: steps`) on its own: the rate it offered, the rate
the client sent at, and the TTFT and ITL it got, so one run reads like a sweep's steps. A ramp
(`load.mode: ramp`) is read the same way in `RAMP_STAIRS` stairs of equal time, each offering
what its schedule planned on it: the requests intended on it (every phase) over its duration.

A pure function of the records and the spec's stairs: a request belongs to the stair its
`t_intended` falls on, counted from the run's start, which is request 0's `t_intended` (every
pacer puts request 0 at offset 0), so `latbench summary FILE` recomputes the same stairs. The
latency figures are the measured (`measure` phase) requests that succeeded, as the summary's
are; a stair inside the warm-up shows none. `sent_per_s` counts every request whose `t_sent`
lies on the stair, whatever its phase, over the stair's duration: below `rate`, the client did
not keep the schedule there (its send lag says by how much).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.records.record import Record
from latbench.summary.samples import NS_PER_S, Samples

if TYPE_CHECKING:
    from latbench.spec import LoadSpec
    from latbench.summary.summary import Stats

STAIR_PERCENTILES: tuple[float, ...] = (50.0, 99.0)
RAMP_STAIRS = 10  # a ramp is read in this many stairs of equal time


@dataclass(frozen=True)
class Stair:
    index: int
    rate: float  # offered, requests/s (a ramp's: planned on the stair over its duration)
    start_s: float  # from the run's start
    duration_s: float
    requests: int  # measured requests intended on the stair
    succeeded: int
    failed: int
    sent_per_s: float  # every request sent on the stair, over its duration
    ttft: Stats
    itl: Stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "sent_per_s": round(self.sent_per_s, 6),
            "ttft": self.ttft.to_dict(),
            "itl": self.itl.to_dict(),
        }


def stair_stats(records: Sequence[Record], load: LoadSpec | None) -> tuple[Stair, ...] | None:
    """The stairs of a `steps` run, or a ramp read as `RAMP_STAIRS` stairs of equal time; None
    for any other load, or without records."""
    # Imported here: summary.py imports this module for its `stairs` field.
    from latbench.summary.summary import Stats

    if load is None or load.mode not in ("steps", "ramp") or not records:
        return None
    start = min(r.t_intended for r in records)
    intended = np.fromiter((r.t_intended for r in records), dtype=np.int64, count=len(records))
    sent = np.fromiter((r.t_sent for r in records), dtype=np.int64, count=len(records))
    if load.mode == "steps":
        durations = [s.duration for s in load.steps or []]
        rates: list[float | None] = [s.rate for s in load.steps or []]
    else:
        # Over the ramp's duration, or (over its requests) up to its last intended send.
        span = load.duration or (int(intended.max()) - start + 1) / NS_PER_S
        durations = [span / RAMP_STAIRS] * RAMP_STAIRS
        rates = [None] * RAMP_STAIRS  # what the schedule planned on each: counted below
    edges = np.cumsum([0.0, *durations])
    bounds = [start + round(e * NS_PER_S) for e in edges]
    # The last stair is closed at its end too: nothing is intended after the run's duration.
    on_stair = np.clip(np.searchsorted(bounds, intended, side="right") - 1, 0, len(durations) - 1)
    out = []
    for k, (rate, duration) in enumerate(zip(rates, durations, strict=True)):
        here = [r for r, i in zip(records, on_stair, strict=True) if i == k]
        mine = [r for r in here if r.phase == "measure"]
        ok = [r for r in mine if r.error is None]
        s = Samples.build(ok)
        n_sent = int(((sent >= bounds[k]) & (sent < bounds[k + 1])).sum())
        out.append(
            Stair(
                index=k,
                rate=len(here) / duration if rate is None else rate,
                start_s=float(edges[k]),
                duration_s=duration,
                requests=len(mine),
                succeeded=len(ok),
                failed=len(mine) - len(ok),
                sent_per_s=n_sent / duration,
                ttft=Stats.of(s.samples("ttft"), STAIR_PERCENTILES),
                itl=Stats.of(s.samples("itl"), STAIR_PERCENTILES),
            )
        )
    return tuple(out)
