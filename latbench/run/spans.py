"""A run's share of the server's spans: the receiver, where each span goes, and the wait for
the last ones.

The receiver is bound first, before the run's directory is made: a port in use or a missing
OpenTelemetry binding is a clear error with nothing left behind. Its spans go to the records
file and the Prometheus series once they exist (`attach`); one that comes before (a span of
another client's request) waits for them, so none is lost and none lands before the records
file's header.

A tracing server exports its spans in batches (vLLM every OTEL_BSP_SCHEDULE_DELAY, 5 s by
default), so when the last request ends its span may still be on the way. The run therefore
waits after its runner, until every measured request that succeeded has its span,
`target.span_wait` has passed, or the user skips the wait (`skip`: a Ctrl-C, the service's
cancel), whichever comes first, and only then closes the records file: the span lines land
before its footer, and a span that never came is a count in the join (`summary/spans.py`),
never a silent hole.

A span is kept (`spans`) only once the records file holds it, so results.json's join and a
summary of the file agree; a span the file could not take is refused to the receiver, which
counts it. A live observer (Prometheus) that fails on one span is counted and the others still
see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from latbench.otlp.receiver import SpanReceiver
from latbench.records.record import Record, ServerSpan


class RunSpans:
    """The receiver of one run and the spans it got, each written (`write`, the records file)
    then handed to `observers` (the Prometheus series) as it arrives, on the run's event loop."""

    def __init__(self, host: str, port: int) -> None:
        self.spans: list[ServerSpan] = []
        self.observer_errors = 0  # spans an observer failed on (kept all the same)
        self.last_observer_error: str | None = None
        self._write: Callable[[ServerSpan], None] | None = None
        self._observers: list[Callable[[ServerSpan], None]] = []
        self._early: list[ServerSpan] = []  # came before `attach`
        self._seen: set[str] = set()
        self._waiting: set[str] = set()
        self._all_here = asyncio.Event()
        self._skip = asyncio.Event()
        self.receiver = SpanReceiver(self._add, host, port)

    async def start(self) -> None:
        await self.receiver.start()

    async def stop(self) -> None:
        await self.receiver.stop()

    def attach(
        self,
        write: Callable[[ServerSpan], None],
        observers: Sequence[Callable[[ServerSpan], None]] = (),
    ) -> None:
        """Where spans go from now on; the ones that came before go there first."""
        self._write = write
        self._observers = list(observers)
        early, self._early = self._early, []
        for span in early:
            try:
                self._add(span)
            except Exception as e:  # the receiver counted it as handed on: count it here
                self.receiver.counts.spans -= 1
                self.receiver.counts.rejected_spans += 1
                self.receiver.counts.last_span_rejection = f"span {span.trace_id}: {e}"

    def _add(self, span: ServerSpan) -> None:
        if self._write is None:
            self._early.append(span)
            return
        self._write(span)  # raises when the file cannot take it: the receiver counts it
        self.spans.append(span)
        self._seen.add(span.trace_id)
        for observe in self._observers:
            try:
                observe(span)
            except Exception as e:
                self.observer_errors += 1
                self.last_observer_error = f"span {span.trace_id}: {e}"
        if self._waiting:
            self._waiting.discard(span.trace_id)
            if not self._waiting:
                self._all_here.set()

    def missing(self, records: Iterable[Record]) -> set[str]:
        """The trace ids of the measured, succeeded records that have no span yet."""
        return {
            r.trace_id for r in records if r.trace_id is not None and r.phase == "measure" and r.ok
        } - self._seen

    def skip(self) -> None:
        """End a wait for spans now (and any later one): the user does not want to wait."""
        self._skip.set()

    async def wait_for(self, records: Iterable[Record], timeout_s: float) -> int:
        """Wait until each measured, succeeded record has its span, at most `timeout_s`, or
        until `skip`; returns how many are still missing."""
        self._waiting = self.missing(records)
        if self._waiting and timeout_s > 0 and not self._skip.is_set():
            self._all_here.clear()
            waits = [
                asyncio.ensure_future(self._all_here.wait()),
                asyncio.ensure_future(self._skip.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        left = len(self._waiting)
        self._waiting = set()
        return left
