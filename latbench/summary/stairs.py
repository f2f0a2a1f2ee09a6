"""Each stair of a staircase run (`load.mode: steps`) on its own: the rate it offered, the rate
the client sent at, and the TTFT and ITL it got, so one run reads like a sweep's steps. A ramp
(`load.mode: ramp`) is read the same way in `RAMP_STAIRS` stairs of equal time.

The offered rate is the schedule's (`spec.schedule`: the integral of the rate over the stair, over
its duration), never a count of the records: a ramp's Poisson draws would show as its rate, and a
run stopped early (over-saturated, or stopped) would show its later stairs offering 0. Those
stairs say instead how much of them ran (`ran_s`, 0: not run), from the footer's stop instant.
With a session workload the schedule paces sessions, so `rate` is sessions/s (`rate_unit`).

The rest is a pure function of the records: a request belongs to the stair its `t_intended`
falls on, counted from the run's start, which is request 0's `t_intended` (every pacer puts
request 0 at offset 0), so `latbench summary FILE` recomputes the same stairs. The latency
figures are the measured (`measure` phase) requests that succeeded, as the summary's are; a
stair inside the warm-up shows none. Requests cancelled by a stop are counted apart from the
failed ones, as in the failed share. `sent_per_s` counts every request whose `t_sent` lies on
the stair, whatever its phase, over the part of the stair that ran: below `rate`, the client did
not keep the schedule there (its send lag says by how much).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from latbench.records.record import Record
from latbench.shared.errors import ErrorKind
from latbench.spec.schedule import expected_by, span_s
from latbench.summary.samples import NS_PER_S, Samples

if TYPE_CHECKING:
    from latbench.spec import LoadSpec
    from latbench.summary.summary import Stats

STAIR_PERCENTILES: tuple[float, ...] = (50.0, 99.0)
RAMP_STAIRS = 10  # a ramp is read in this many stairs of equal time


@dataclass(frozen=True)
class Stair:
    index: int
    rate: float  # offered by the schedule, per second, in `rate_unit`s
    start_s: float  # from the run's start
    duration_s: float
    ran_s: float  # how much of it ran before a stop: duration_s, less, or 0 (not run)
    requests: int  # measured requests intended on the stair
    succeeded: int
    failed: int  # cancelled ones aside
    cancelled: int  # cut by a stop or an abort
    sent_per_s: float  # every request sent on the stair, over the part that ran
    ttft: Stats
    itl: Stats
    rate_unit: str = "requests"  # or "sessions": what the schedule paces

    @property
    def ran(self) -> bool:
        return self.ran_s > 0

    @property
    def cut(self) -> bool:
        """Stopped part-way through."""
        return 0 < self.ran_s < self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 9),
            "rate_unit": self.rate_unit,
            "start_s": round(self.start_s, 9),
            "duration_s": round(self.duration_s, 9),
            "ran_s": round(self.ran_s, 9),
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "sent_per_s": round(self.sent_per_s, 6),
            "ttft": self.ttft.to_dict(),
            "itl": self.itl.to_dict(),
        }


def stair_stats(
    records: Sequence[Record], load: LoadSpec | None, stopped_ns: int | None = None
) -> tuple[Stair, ...] | None:
    """The stairs of a `steps` run, or a ramp read as `RAMP_STAIRS` stairs of equal time; None
    for any other load, a ramp of one request, or without records. `stopped_ns`: when a stop
    ended the sending (the footer's), None when nothing stopped it."""
    # Imported here: summary.py imports this module for its `stairs` field.
    from latbench.summary.summary import Stats

    if load is None or load.mode not in ("steps", "ramp") or not records:
        return None
    start = min(r.t_intended for r in records)
    intended = np.fromiter((r.t_intended for r in records), dtype=np.int64, count=len(records))
    sent = np.fromiter((r.t_sent for r in records), dtype=np.int64, count=len(records))
    if load.mode == "steps":
        durations = [s.duration for s in load.steps or []]
        rates = [s.rate for s in load.steps or []]
    else:
        span = span_s(load)
        if span <= 0:  # a ramp over one request plans no time to read in stairs
            return None
        durations = [span / RAMP_STAIRS] * RAMP_STAIRS
        rates = []
    edges = [float(e) for e in np.cumsum([0.0, *durations])]
    if not rates:  # a ramp's: the schedule's arrivals on each stair, over its duration
        rates = [
            (expected_by(load, b) - expected_by(load, a)) / d
            for a, b, d in zip(edges, edges[1:], durations, strict=False)
        ]
    bounds = [start + round(e * NS_PER_S) for e in edges]
    ran_until = float("inf") if stopped_ns is None else (stopped_ns - start) / NS_PER_S
    sessions = any(r.session is not None for r in records)
    # The last stair is closed at its end too: nothing is intended after the run's duration.
    on_stair = np.clip(np.searchsorted(bounds, intended, side="right") - 1, 0, len(durations) - 1)
    out = []
    for k, (rate, duration) in enumerate(zip(rates, durations, strict=True)):
        here = [r for r, i in zip(records, on_stair, strict=True) if i == k]
        mine = [r for r in here if r.phase == "measure"]
        ok = [r for r in mine if r.error is None]
        cancelled = sum(1 for r in mine if r.error == ErrorKind.CANCELLED)
        s = Samples.build(ok)
        ran_s = min(duration, max(0.0, ran_until - edges[k]))
        n_sent = int(((sent >= bounds[k]) & (sent < bounds[k + 1])).sum())
        out.append(
            Stair(
                index=k,
                rate=rate,
                start_s=edges[k],
                duration_s=duration,
                ran_s=ran_s,
                requests=len(mine),
                succeeded=len(ok),
                failed=len(mine) - len(ok) - cancelled,
                cancelled=cancelled,
                sent_per_s=n_sent / ran_s if ran_s > 0 else 0.0,
                ttft=Stats.of(s.samples("ttft"), STAIR_PERCENTILES),
                itl=Stats.of(s.samples("itl"), STAIR_PERCENTILES),
                rate_unit="sessions" if sessions else "requests",
            )
        )
    return tuple(out)
