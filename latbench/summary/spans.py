"""Each request joined with the server's own span of it: the split of its TTFT, exactly.

The histogram reconciliation (`summary.server_metrics`) can only place a server percentile in
a bucket. A tracing server (vLLM with `--otlp-traces-endpoint`) exports one span per request,
with its own TTFT, queue, prefill and decode times, under the trace id the client sent in
`traceparent`. Joining the two by that id gives, for every request, the part of its TTFT that
lay outside the server (client, network, HTTP, tokenisation, framing) as one subtraction: client
TTFT on the client's clock minus server TTFT on the server's. No instant is ever compared across
the two clocks, so a skew between hosts changes nothing but the (reported) skew estimate.

Nothing is dropped silently: requests without a span, spans without a request and trace ids
that came more than once are counted, and the figures say over how many requests they are.
A pure function of records and spans, like every other summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latbench.records.record import Record, ServerSpan
from latbench.summary.samples import instants, n_out, span_ns

NS_PER_S = 1e9
# The per-request figures, in the order the tables and results show them.
FIELDS: tuple[str, ...] = (
    "client_ttft", "server_ttft", "outside_ttft", "queue", "prefill", "decode",
    "client_e2e", "server_e2e", "outside_e2e",
)  # fmt: skip


@dataclass(frozen=True)
class JoinedRequest:
    """One request's client figures beside its server span's, seconds; None where either side
    has no value."""

    seq: int
    trace_id: str
    client_ttft: float | None
    server_ttft: float | None
    queue: float | None
    prefill: float | None
    decode: float | None
    client_e2e: float | None
    server_e2e: float | None
    client_tokens: int
    server_tokens: int | None

    @property
    def outside_ttft(self) -> float | None:
        if self.client_ttft is None or self.server_ttft is None:
            return None
        return self.client_ttft - self.server_ttft

    @property
    def outside_e2e(self) -> float | None:
        if self.client_e2e is None or self.server_e2e is None:
            return None
        return self.client_e2e - self.server_e2e

    def value(self, name: str) -> float | None:
        v: float | None = getattr(self, name)
        return v

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"seq": self.seq, "trace_id": self.trace_id}
        for name in FIELDS:
            d[name] = self.value(name)
        d["client_tokens"] = self.client_tokens
        d["server_tokens"] = self.server_tokens
        return d


@dataclass(frozen=True)
class SpanJoin:
    """The measured requests joined with the spans. `requests` holds the matched ones."""

    requests: list[JoinedRequest] = field(default_factory=list)
    requests_without_span: int = 0
    spans_without_request: int = 0
    duplicate_spans: int = 0
    token_mismatches: int = 0

    @property
    def matched(self) -> int:
        return len(self.requests)

    def values(self, name: str) -> np.ndarray:
        """One figure over the matched requests that have it, seconds."""
        got = [v for r in self.requests if (v := r.value(name)) is not None]
        return np.asarray(got, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "requests_without_span": self.requests_without_span,
            "spans_without_request": self.spans_without_request,
            "duplicate_spans": self.duplicate_spans,
            "token_mismatches": self.token_mismatches,
            "requests": [r.to_dict() for r in self.requests],
        }


def join_spans(records: Sequence[Record], spans: Sequence[ServerSpan]) -> SpanJoin | None:
    """The measured, succeeded records joined with `spans` by trace id; None when the run
    received no span at all (the server does not trace: nothing to say)."""
    if not spans:
        return None
    by_trace: dict[str, ServerSpan] = {}
    duplicates = 0
    for s in spans:
        if s.trace_id in by_trace:
            duplicates += 1
        else:
            by_trace[s.trace_id] = s
    used: set[str] = set()
    joined: list[JoinedRequest] = []
    without = mismatches = 0
    for r in records:
        if r.trace_id is None:
            continue
        span = by_trace.get(r.trace_id)
        if span is None:
            if r.phase == "measure" and r.ok:
                without += 1
            continue
        used.add(r.trace_id)
        if r.phase != "measure" or not r.ok:
            continue
        at = instants(r)
        ttft = span_ns(at, "ttft")
        e2e = span_ns(at, "e2e")
        tokens = n_out(r)
        if span.completion_tokens is not None and span.completion_tokens != tokens:
            mismatches += 1
        joined.append(
            JoinedRequest(
                seq=r.seq,
                trace_id=r.trace_id,
                client_ttft=None if ttft is None else ttft / NS_PER_S,
                server_ttft=span.ttft_s,
                queue=span.queue_s,
                prefill=span.prefill_s,
                decode=span.decode_s,
                client_e2e=None if e2e is None else e2e / NS_PER_S,
                server_e2e=span.e2e_s,
                client_tokens=tokens,
                server_tokens=span.completion_tokens,
            )
        )
    return SpanJoin(
        requests=joined,
        requests_without_span=without,
        spans_without_request=len(by_trace) - len(used),
        duplicate_spans=duplicates,
        token_mismatches=mismatches,
    )
