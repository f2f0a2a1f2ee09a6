"""Live progress of a run: done, in flight, errors, recent TTFT/ITL p50/p99, output tokens/s.

`Progress` is the one live count, shared by the terminal line (`ProgressSink`) and the service's
run progress, so both show the same figures. It counts with the summary's rules
(`summary.samples`): output tokens are N_out of the succeeded requests (usage, else the per-event
counts, else one per event), TTFT is one sample per succeeded request with a token event, ITL is
every gap between its events. Every phase counts: the progress describes the run so far, warm-up
included, as its elapsed time does. Only counters and two bounded rings of recent samples are
kept; percentiles are computed when read (twice a second at most), not per record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import monotonic_ns

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.text import Text

from latbench.records.record import Record, RunFooter
from latbench.summary.samples import instants, itl_ns, n_out, span_ns

RECENT = 2000  # requests behind the live TTFT percentiles; ITL keeps the latest 8x as many gaps


class Progress:
    """A sink with a run's live counters. `started_ns` is when the run's clock started (None:
    not yet); `inflight` tells the requests in flight."""

    def __init__(self) -> None:
        self.done = 0
        self.errors = 0
        self.measured = 0
        self.output_tokens = 0
        self.started_ns: int | None = None
        self.inflight: Callable[[], int] = lambda: 0
        self._ttft: deque[int] = deque(maxlen=RECENT)
        self._itl: deque[int] = deque(maxlen=RECENT * 8)

    def add(self, record: Record) -> None:
        self.done += 1
        self.measured += record.phase == "measure"
        if not record.ok:
            self.errors += 1
            return
        self.output_tokens += n_out(record)
        ttft = span_ns(instants(record), "ttft")
        if ttft is not None:
            self._ttft.append(ttft)
            self._itl.extend(itl_ns(record).tolist())

    def close(self, footer: RunFooter | None) -> None:
        pass

    def elapsed_s(self) -> float:
        return 0.0 if self.started_ns is None else (monotonic_ns() - self.started_ns) / 1e9

    def recent_ttft_ns(self) -> tuple[float, float] | None:
        """p50 and p99 of the recent TTFTs, in ns; None before the first."""
        return _p50_p99(self._ttft)

    def recent_itl_ns(self) -> tuple[float, float] | None:
        """p50 and p99 of the recent ITL gaps, in ns; None before the first."""
        return _p50_p99(self._itl)


def _p50_p99(ns: deque[int]) -> tuple[float, float] | None:
    if not ns:
        return None
    p50, p99 = np.percentile(np.fromiter(ns, dtype=np.int64), [50, 99])
    return float(p50), float(p99)


class ProgressSink(Progress):
    """The progress as one line on a terminal; silent when the console is not a terminal."""

    def __init__(
        self,
        console: Console,
        inflight: Callable[[], int],
        total_requests: int | None,
        duration_s: float | None,
    ) -> None:
        super().__init__()
        self.inflight = inflight
        self.started_ns = monotonic_ns()
        self._total = total_requests
        self._duration = duration_s
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(
                get_renderable=self._render, console=console, refresh_per_second=2, transient=True
            )
            self._live.start()

    def close(self, footer: RunFooter | None) -> None:
        if self._live is not None:
            self._live.stop()

    def _render(self) -> Text:
        elapsed = self.elapsed_s()
        if self._total:
            goal = f"{self.done}/{self._total}"
        elif self._duration:
            goal = f"{min(elapsed, self._duration):.0f}/{self._duration:.0f} s"
        else:
            goal = str(self.done)
        parts = [
            f"{goal}  done {self.done}  in flight {self.inflight()}  errors {self.errors}",
            f"TTFT p50/p99 {_ms(self.recent_ttft_ns())}",
            f"ITL p50/p99 {_ms(self.recent_itl_ns())}",
            f"{self.output_tokens / elapsed if elapsed > 0 else 0:,.0f} tok/s",
        ]
        return Text("  |  ".join(parts))


def _ms(p50_p99_ns: tuple[float, float] | None) -> str:
    if p50_p99_ns is None:
        return "-"
    p50, p99 = p50_p99_ns
    return f"{p50 / 1e6:.1f}/{p99 / 1e6:.1f} ms"
