"""The find-max plan's capacity search: which value to try next, from the outcomes so far.

A pure state machine (no clock, no I/O) so that the search can be tested on made-up outcomes;
sweep/run.py runs the steps it asks for.
"""

from __future__ import annotations

import math

from latbench.sweep.plans import DEFAULT_MAX_STEPS, DEFAULT_RESOLUTION, Variable
from latbench.sweep.steps import Outcome

GROWTH = 2.0


class CapacitySearch:
    """Which value to try next, from the outcomes so far. No clock, no I/O.

    Grows by `GROWTH` from `start` until a step fails (or shrinks by it until one passes), then
    narrows [lo, hi] at its geometric middle until `hi / lo - 1 <= resolution` (for concurrency:
    until hi = lo + 1). Stops at a client-bound step, at `limit`, or after `max_steps` steps.
    """

    def __init__(
        self,
        variable: Variable,
        start: float,
        *,
        limit: float | None = None,
        resolution: float = DEFAULT_RESOLUTION,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        self.variable = variable
        self.integer = variable == "concurrency"
        self.limit = limit
        self.resolution = resolution
        self.max_steps = max_steps
        self.lo: float | None = None  # highest value that passed
        self.hi: float | None = None  # lowest value that failed
        self.steps = 0
        self.stopped_by: str | None = None
        self._next: float | None = self._round(start if limit is None else min(start, limit))

    def _round(self, v: float) -> float:
        return float(max(1, round(v))) if self.integer else v

    def next_value(self) -> float | None:
        if self.stopped_by is not None or self.steps >= self.max_steps:
            if self.stopped_by is None:
                self.stopped_by = "steps"
            return None
        return self._next

    def record(self, value: float, outcome: Outcome) -> None:
        self.steps += 1
        if outcome == "client-bound":
            self.stopped_by = "client"
            return
        if outcome == "pass":
            self.lo = value if self.lo is None else max(self.lo, value)
        else:
            self.hi = value if self.hi is None else min(self.hi, value)
        lo, hi = self.lo, self.hi
        if hi is None:  # nothing failed yet: grow
            assert lo is not None
            if self.limit is not None and lo >= self.limit:
                self.stopped_by = "limit"
                return
            nxt = lo * GROWTH
            self._next = self._round(nxt if self.limit is None else min(nxt, self.limit))
        elif lo is None:  # nothing passed yet: shrink
            nxt = self._round(hi / GROWTH)
            if nxt >= hi or (not self.integer and hi / GROWTH < 1e-3):
                self.stopped_by = "floor"
                return
            self._next = nxt
        else:
            if self._narrow_enough(lo, hi):
                self.stopped_by = "resolution"
                return
            mid = self._round(math.sqrt(lo * hi))
            if self.integer and not lo < mid < hi:
                mid = lo + 1
            self._next = mid

    def _narrow_enough(self, lo: float, hi: float) -> bool:
        if self.integer:
            return hi - lo <= 1
        return hi / lo - 1 <= self.resolution
