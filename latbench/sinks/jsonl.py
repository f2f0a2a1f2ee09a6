"""Append-only records file: a header, one line per finished request (and per server span
received), a footer at a clean end.

Each line is written and flushed to the OS as its request finishes, so a killed client keeps every
record it had finished (a machine crash can still lose what the OS had not written out).
"""

from __future__ import annotations

from pathlib import Path

from latbench.records.record import (
    GpuSample,
    Record,
    RunFooter,
    RunHeader,
    ServerSpan,
    encode_footer,
    encode_gpu,
    encode_header,
    encode_record,
    encode_span,
)


class JsonlSink:
    def __init__(self, path: Path, header: RunHeader) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = path.open("ab", buffering=0)  # unbuffered: one write() per line
        self._f.write(encode_header(header))

    def add(self, record: Record) -> None:
        self._f.write(encode_record(record))

    def add_span(self, span: ServerSpan) -> None:
        """The server's span of a request, as the receiver got it (`records.record.ServerSpan`),
        among the request lines, so the records file alone recomputes the join."""
        self._f.write(encode_span(span))

    def add_gpu(self, sample: GpuSample) -> None:
        """A GPU sample (`records.record.GpuSample`), among the request lines as it is taken,
        so the records file alone recomputes the energy figures."""
        self._f.write(encode_gpu(sample))

    def close(self, footer: RunFooter | None) -> None:
        if footer is not None:
            self._f.write(encode_footer(footer))
        self._f.close()
