"""Where finished records go. A sink has `add(record)` and `close(footer)`; the runner hands each
finished record to every sink, in one loop, as the request finishes. The sinks of a run are made
and closed where the run is assembled (`latbench.run.benchmark`), never swapped during it."""

from __future__ import annotations

from typing import Protocol

from latbench.records.record import Record, RunFooter


class Sink(Protocol):
    def add(self, record: Record) -> None: ...

    def close(self, footer: RunFooter | None) -> None: ...


__all__ = ["Sink"]
