"""Each request joined with the server's own span of it: the split of its TTFT, exactly.

The histogram reconciliation (`summary.server_metrics`) can only place a server percentile in
a bucket. A tracing server (vLLM with `--otlp-traces-endpoint`) exports one span per request,
with its own TTFT, queue, prefill and decode times, under the trace id the client sent in
`traceparent`. Joining the two by that id gives, for every request, the part of its TTFT that
lay outside the server (client, network, HTTP parsing, framing) as one subtraction: client
TTFT on the client's clock minus server TTFT on the server's. No instant is ever compared across
the two clocks, so a skew between hosts changes no figure but the skew estimate, which is
reported for what it is (skew plus one-way delay) and used in nothing.

Per joined request (seconds):

    client_ttft  = first token event - send (the attempt the span describes: a retried
                   request's last send, so the time lost to refusals is not charged to anyone)
    server_ttft  = gen_ai.latency.time_to_first_token (vLLM: from its API server's arrival)
    outside_ttft = client_ttft - server_ttft
    queue, prefill, decode = gen_ai.latency.time_in_queue, _in_model_prefill, _in_model_decode
    intake       = server_ttft - queue - prefill (vLLM: arrival to the engine's queue:
                   tokenisation and the hop to the engine core)
    client_e2e, server_e2e, outside_e2e likewise (last token event - send; gen_ai.latency.e2e)
    skew         = the span's start (server wall clock) - the send instant on the client's wall
                   clock (the records header's anchor): clock skew + one-way delay + parsing

so client_ttft = outside_ttft + intake + queue + prefill, exactly, per request; the split of the
mean TTFT into those four shares sums to 1.

The join is by trace id; a span whose trace id matches no record (a proxy that started its own
trace) falls back to `gen_ai.request.id`, which vLLM builds from our `X-Request-Id`
(`<run_id>-<seq>`, after a prefix such as `chatcmpl-`). Nothing is dropped silently: measured
requests that succeeded without a span, spans matching no request, second spans of one trace
(the one that started last is kept: a retry's), spans of warm-up or cool-down requests and of
failed requests, token counts that disagree and requests whose server TTFT exceeds the client's
(impossible for a correct join) are each counted. Figures are over the measured requests that
succeeded and have a span. A pure function of records and spans, like every other summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from latbench.records.record import Record, RunHeader, ServerSpan
from latbench.summary.samples import n_out

NS_PER_S = 1e9
# The per-request figures, in the order the tables and results show them.
FIELDS: tuple[str, ...] = (
    "client_ttft", "server_ttft", "outside_ttft", "queue", "prefill", "intake", "decode",
    "client_e2e", "server_e2e", "outside_e2e",
)  # fmt: skip
# The figures whose distributions the summary reports (the rest are in each request's row).
DISTRIBUTIONS: tuple[str, ...] = (
    "client_ttft", "server_ttft", "outside_ttft", "queue", "prefill", "intake", "decode",
    "outside_e2e",
)  # fmt: skip
# The parts of client TTFT, in the order a request meets them; they sum to it exactly.
TTFT_PARTS: tuple[str, ...] = ("outside_ttft", "intake", "queue", "prefill")
PERCENTILES: tuple[int, ...] = (50, 90, 99)
MatchedBy = Literal["trace_id", "request_id"]


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
    skew: float | None = None
    matched_by: MatchedBy = "trace_id"
    retried: bool = False

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

    @property
    def intake(self) -> float | None:
        if self.server_ttft is None or self.queue is None or self.prefill is None:
            return None
        return self.server_ttft - self.queue - self.prefill

    def value(self, name: str) -> float | None:
        v: float | None = getattr(self, name)
        return v

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"seq": self.seq, "trace_id": self.trace_id}
        for name in FIELDS:
            d[name] = self.value(name)
        d["client_tokens"] = self.client_tokens
        d["server_tokens"] = self.server_tokens
        d["skew"] = self.skew
        d["matched_by"] = self.matched_by
        d["retried"] = self.retried
        return d


def distribution(values: np.ndarray) -> dict[str, float | int | None]:
    """n, mean, min, p50, p90, p99, max (np.percentile, linear, as the summary's); None when
    empty."""
    if values.size == 0:
        return {"n": 0, "mean": None, "min": None, "p50": None, "p90": None, "p99": None,
                "max": None}  # fmt: skip
    p = np.percentile(values, PERCENTILES).tolist()
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "min": float(values.min()),
        **{f"p{q}": v for q, v in zip(PERCENTILES, p, strict=True)},
        "max": float(values.max()),
    }


@dataclass(frozen=True)
class SpanJoin:
    """The measured requests joined with the spans. `requests` holds the matched ones."""

    requests: list[JoinedRequest] = field(default_factory=list)
    requests_without_span: int = 0
    spans_without_request: int = 0
    duplicate_spans: int = 0
    token_mismatches: int = 0
    spans_of_unmeasured: int = 0  # warm-up and cool-down requests' spans: joined, not counted
    spans_of_failed: int = 0  # measured requests that failed at the client but have a span
    server_ttft_above_client: int = 0  # server TTFT > client TTFT: a wrong join, or a bug
    total_spans: int = 0

    @property
    def matched(self) -> int:
        return len(self.requests)

    @property
    def matched_by_request_id(self) -> int:
        return sum(r.matched_by == "request_id" for r in self.requests)

    def values(self, name: str) -> np.ndarray:
        """One figure over the matched requests that have it, seconds."""
        got = [v for r in self.requests if (v := r.value(name)) is not None]
        return np.asarray(got, dtype=np.float64)

    def distributions(self) -> dict[str, dict[str, float | int | None]]:
        return {name: distribution(self.values(name)) for name in DISTRIBUTIONS}

    def ttft_split(self) -> dict[str, Any]:
        """Client TTFT split into `TTFT_PARTS`: `of_mean`, each part's mean over the mean client
        TTFT (they sum to 1), and `median_share`, the median over requests of each part's share
        of that request's TTFT (robust, but they need not sum to 1). Over the requests that
        have every part."""
        whole = [r for r in self.requests if all(r.value(n) is not None for n in TTFT_PARTS)]
        ttft = np.asarray([r.client_ttft for r in whole], dtype=np.float64)
        of_mean: dict[str, float | None] = {}
        median_share: dict[str, float | None] = {}
        total = float(ttft.sum()) if ttft.size else 0.0
        for name in TTFT_PARTS:
            part = np.asarray([r.value(name) for r in whole], dtype=np.float64)
            of_mean[name] = float(part.sum() / total) if total > 0 else None
            positive = ttft > 0
            median_share[name] = (
                float(np.median(part[positive] / ttft[positive])) if positive.any() else None
            )
        return {"n": len(whole), "of_mean": of_mean, "median_share": median_share}

    def skew(self) -> dict[str, float | int | None]:
        """The span start minus the send on the client's wall clock: clock skew between the
        hosts plus the one-way delay and the server's parsing. Median and spread; reported
        only, never used in a figure."""
        s = np.asarray([r.skew for r in self.requests if r.skew is not None], dtype=np.float64)
        if s.size == 0:
            return {"n": 0, "median": None, "p10": None, "p90": None, "min": None, "max": None}
        p10, p50, p90 = np.percentile(s, [10, 50, 90]).tolist()
        return {"n": int(s.size), "median": p50, "p10": p10, "p90": p90,
                "min": float(s.min()), "max": float(s.max())}  # fmt: skip

    def counts(self) -> dict[str, int]:
        return {
            "spans": self.total_spans,
            "matched": self.matched,
            "matched_by_request_id": self.matched_by_request_id,
            "requests_without_span": self.requests_without_span,
            "spans_without_request": self.spans_without_request,
            "duplicate_spans": self.duplicate_spans,
            "spans_of_unmeasured": self.spans_of_unmeasured,
            "spans_of_failed": self.spans_of_failed,
            "token_mismatches": self.token_mismatches,
            "server_ttft_above_client": self.server_ttft_above_client,
        }

    def to_dict(self) -> dict[str, Any]:
        """results.json's "server_spans": the counts (at the top, as before), the aggregates
        and every joined request's row."""
        return {
            **self.counts(),
            "distributions": self.distributions(),
            "ttft_split": self.ttft_split(),
            "clock_skew": self.skew(),
            "requests": [r.to_dict() for r in self.requests],
        }


def _request_seq(request_id: str | None, run_id: str | None) -> int | None:
    """The seq in a span's `gen_ai.request.id` (`<prefix><run_id>-<seq>`), None if it is not
    one of this run's."""
    if request_id is None or not run_id:
        return None
    _, sep, tail = request_id.rpartition(run_id + "-")
    if not sep or not tail.isdigit() or len(tail) > 18:
        return None
    return int(tail)


def _pick(spans: list[ServerSpan]) -> ServerSpan:
    # Several spans of one trace: the last to start is the last attempt's, whose answer the
    # client read (a span sent twice is the same span either way).
    return max(spans, key=lambda s: s.start_unix_ns if s.start_unix_ns is not None else -1)


def join_spans(
    records: Sequence[Record], spans: Sequence[ServerSpan], header: RunHeader | None = None
) -> SpanJoin | None:
    """The measured, succeeded records joined with `spans`; None when the run received no span
    at all (the server does not trace: nothing to say). `header` (the records file's) gives the
    run id for the request-id fallback and the clock anchor for the skew estimate; without it
    the join is by trace id only and the skew is not estimated."""
    if not spans:
        return None
    by_trace: dict[str, list[ServerSpan]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    duplicates = sum(len(v) - 1 for v in by_trace.values())
    run_id = header.run_id if header is not None else None
    traced = {r.trace_id for r in records if r.trace_id is not None}
    # The fallback: spans whose trace id is no record's, by the seq their request id names.
    by_seq: dict[int, list[ServerSpan]] = {}
    for tid, group in by_trace.items():
        if tid in traced:
            continue
        for s in group:
            seq = _request_seq(s.request_id, run_id)
            if seq is not None:
                by_seq.setdefault(seq, []).append(s)
    anchor = None if header is None else header.clock_wall_ns - header.clock_monotonic_ns

    used: set[str] = set()  # trace ids of the spans that found their request
    joined: list[JoinedRequest] = []
    without = mismatches = unmeasured = failed = above = 0
    for r in records:
        group = by_trace.get(r.trace_id) if r.trace_id is not None else None
        how: MatchedBy = "trace_id"
        if group is None:
            group = by_seq.get(r.seq)
            how = "request_id"
        if group is None:
            if r.phase == "measure" and r.ok:
                without += 1
            continue
        used.update(s.trace_id for s in group)
        if r.phase != "measure":
            unmeasured += 1
            continue
        if not r.ok:
            failed += 1
            continue
        span = _pick(group)
        retried = r.attempts > 1 and r.t_last_sent is not None
        sent = r.t_last_sent if retried and r.t_last_sent is not None else r.t_sent
        ev = r.ev_t
        tokens = n_out(r)
        if span.completion_tokens is not None and span.completion_tokens != tokens:
            mismatches += 1
        item = JoinedRequest(
            seq=r.seq,
            trace_id=span.trace_id,
            client_ttft=(ev[0] - sent) / NS_PER_S if ev else None,
            server_ttft=span.ttft_s,
            queue=span.queue_s,
            prefill=span.prefill_s,
            decode=span.decode_s,
            client_e2e=(ev[-1] - sent) / NS_PER_S if ev else None,
            server_e2e=span.e2e_s,
            client_tokens=tokens,
            server_tokens=span.completion_tokens,
            skew=None
            if anchor is None or span.start_unix_ns is None
            else (span.start_unix_ns - (sent + anchor)) / NS_PER_S,
            matched_by=how,
            retried=retried,
        )
        if (o := item.outside_ttft) is not None and o < 0:
            above += 1
        joined.append(item)
    return SpanJoin(
        requests=joined,
        requests_without_span=without,
        # Counted once per trace: its second copies are already in duplicate_spans.
        spans_without_request=sum(t not in used for t in by_trace),
        duplicate_spans=duplicates,
        token_mismatches=mismatches,
        spans_of_unmeasured=unmeasured,
        spans_of_failed=failed,
        server_ttft_above_client=above,
        total_spans=len(spans),
    )
