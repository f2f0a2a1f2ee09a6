"""A service run's live progress: the terminal's counts, and a wake-up for whoever follows it.

`RunProgress` is the progress sink the run manager hands to `run_benchmark`. The API's run JSON
and its event stream read `snapshot()`; a client following the run waits on `wait()` instead of
polling, and the run manager calls `notify()` on every state change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from latbench.records.record import Record, RunFooter
from latbench.sinks.progress import Progress


class RunProgress(Progress):
    """The run's live progress (counted as the terminal's is), and a wake-up for every client
    following the run."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def add(self, record: Record) -> None:
        super().add(record)
        self.notify()

    def close(self, footer: RunFooter | None) -> None:
        self.notify()

    def notify(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def wait(self, timeout: float) -> bool:
        """Until the next change (True), at most `timeout` seconds (False)."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        elapsed = self.elapsed_s()
        return {
            "elapsed_s": round(elapsed, 3),
            "done": self.done,
            "measured": self.measured,
            "errors": self.errors,
            "inflight": self.inflight(),
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": round(self.output_tokens / elapsed, 3) if elapsed else None,
            "recent_ttft_s": _seconds(self.recent_ttft_ns()),
            "recent_itl_s": _seconds(self.recent_itl_ns()),
        }


def _seconds(p50_p99_ns: tuple[float, float] | None) -> dict[str, float] | None:
    if p50_p99_ns is None:
        return None
    p50, p99 = p50_p99_ns
    return {"p50": round(p50 / 1e9, 6), "p99": round(p99 / 1e9, 6)}
