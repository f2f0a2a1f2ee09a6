"""A run's share of the server's spans: the receiver, where each span goes, and the wait for
the last ones.

A tracing server exports its spans in batches (vLLM every OTEL_BSP_SCHEDULE_DELAY, 5 s by
default), so when the last request ends its span may still be on the way. The run therefore
waits after its runner, until every measured request that succeeded has its span or
`target.span_wait` has passed, whichever comes first, and only then closes the records file:
the span lines land before its footer, and a span that never came is a count in the join
(`summary/spans.py`), never a silent hole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress

from latbench.otlp.receiver import SpanReceiver
from latbench.records.record import Record, ServerSpan


class RunSpans:
    """The receiver of one run and the spans it got, each handed to `sinks` (the records file,
    the Prometheus series) as it arrives, on the run's event loop."""

    def __init__(
        self, host: str, port: int, sinks: Sequence[Callable[[ServerSpan], None]] = ()
    ) -> None:
        self.spans: list[ServerSpan] = []
        self._sinks = list(sinks)
        self._seen: set[str] = set()
        self._waiting: set[str] = set()
        self._all_here = asyncio.Event()
        self.receiver = SpanReceiver(self._add, host, port)

    async def start(self) -> None:
        await self.receiver.start()

    async def stop(self) -> None:
        await self.receiver.stop()

    def _add(self, span: ServerSpan) -> None:
        self.spans.append(span)
        self._seen.add(span.trace_id)
        for sink in self._sinks:
            sink(span)
        if self._waiting:
            self._waiting.discard(span.trace_id)
            if not self._waiting:
                self._all_here.set()

    def missing(self, records: Iterable[Record]) -> set[str]:
        """The trace ids of the measured, succeeded records that have no span yet."""
        return {
            r.trace_id for r in records if r.trace_id is not None and r.phase == "measure" and r.ok
        } - self._seen

    async def wait_for(self, records: Iterable[Record], timeout_s: float) -> int:
        """Wait until each measured, succeeded record has its span, at most `timeout_s`;
        returns how many are still missing."""
        self._waiting = self.missing(records)
        if self._waiting and timeout_s > 0:
            self._all_here.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._all_here.wait(), timeout_s)
        left = len(self._waiting)
        self._waiting = set()
        return left
