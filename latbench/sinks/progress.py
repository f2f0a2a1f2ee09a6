"""Live progress on a terminal: done, in flight, errors, recent TTFT/ITL p50/p99, tokens/s.

Only counters and two bounded rings of recent samples are kept; percentiles are computed at each
refresh (twice a second), not per record. Silent when the console is not a terminal.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from time import monotonic_ns

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.text import Text

from latbench.records.record import Record, RunFooter

RECENT = 2000  # samples kept for the live percentiles


class ProgressSink:
    def __init__(
        self,
        console: Console,
        inflight: Callable[[], int],
        total_requests: int | None,
        duration_s: float | None,
    ) -> None:
        self._inflight = inflight
        self._total = total_requests
        self._duration = duration_s
        self._t0 = monotonic_ns()
        self.done = 0
        self.errors = 0
        self.tokens = 0
        self._ttft: deque[int] = deque(maxlen=RECENT)
        self._itl: deque[int] = deque(maxlen=RECENT * 8)
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(
                get_renderable=self._render, console=console, refresh_per_second=2, transient=True
            )
            self._live.start()

    def add(self, record: Record) -> None:
        self.done += 1
        if not record.ok:
            self.errors += 1
        ev = record.ev_t
        if ev:
            self.tokens += record.usage_completion_tokens or len(ev)
            if record.ok:
                self._ttft.append(ev[0] - record.t_sent)
                self._itl.extend(b - a for a, b in itertools.pairwise(ev))

    def close(self, footer: RunFooter | None) -> None:
        if self._live is not None:
            self._live.stop()

    def _render(self) -> Text:
        elapsed = (monotonic_ns() - self._t0) / 1e9
        if self._total:
            goal = f"{self.done}/{self._total}"
        elif self._duration:
            goal = f"{min(elapsed, self._duration):.0f}/{self._duration:.0f} s"
        else:
            goal = str(self.done)
        parts = [
            f"{goal}  done {self.done}  in flight {self._inflight()}  errors {self.errors}",
            f"TTFT p50/p99 {_pct(self._ttft)}",
            f"ITL p50/p99 {_pct(self._itl)}",
            f"{self.tokens / elapsed if elapsed > 0 else 0:,.0f} tok/s",
        ]
        return Text("  |  ".join(parts))


def _pct(samples: deque[int]) -> str:
    if not samples:
        return "-"
    p50, p99 = np.percentile(np.fromiter(samples, dtype=np.int64), [50, 99]) / 1e6
    return f"{p50:.1f}/{p99:.1f} ms"
