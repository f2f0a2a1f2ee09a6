"""Each request joined with the server's own span of it: the split of its TTFT, exactly.

The histogram reconciliation (`summary.server_metrics`) can only place a server percentile in
a bucket. A tracing server (vLLM with `--otlp-traces-endpoint`) exports one span per request,
with its own TTFT, queue, prefill and decode times, under the trace id the client sent in
`traceparent`. Joining the two by that id gives, for every request, the part of its TTFT that
lay outside the server as one subtraction: client TTFT on the client's clock minus server TTFT
on the server's. No instant is ever compared across the two clocks, so a skew between hosts
changes no figure but the skew estimate, which is reported for what it is (skew plus one-way
delay) and used in nothing.

Per joined request (seconds; docs/metrics.md, "Per-request split", is the one definition):

    client_ttft  = first token event - send (`samples.SPANS["attempt_ttft"]`: the attempt the
                   span describes, a retried request's last send, so the time lost to refusals
                   is charged to neither side)
    server_ttft  = gen_ai.latency.time_to_first_token (vLLM 0.32: its API server's wall clock,
                   from the renderer's start on the request to the moment the API server takes
                   the engine core's output holding the first token)
    outside_ttft = client_ttft - server_ttft: the network both ways, the server's HTTP parsing
                   and validation before its renderer starts, its detokenising, framing and
                   write of the first chunk, and the client's own stamping (bounded below)
    queue, prefill, decode = gen_ai.latency.time_in_queue, _in_model_prefill, _in_model_decode
                   (vLLM: the engine core's clock)
    front_end    = server_ttft - queue - prefill: vLLM's front end around the engine core (chat
                   template, tokenising, the hop to the engine core and its intake, and the
                   first token's way back to the API server); the histogram reconciliation's
                   `server_other`, the same quantity from vLLM's histograms
    client_e2e, server_e2e, outside_e2e likewise (last token event - send; gen_ai.latency.e2e)
    skew         = the span's start (server wall clock) - the send instant on the client's wall
                   clock (the records header's anchor): clock skew + one-way delay + parsing

so client_ttft = outside_ttft + front_end + queue + prefill, exactly, per request; the split of
the mean TTFT into those four shares sums to 1.

The client's own error is carried, not hidden. Each record states how late its first event's
stamp may be (`ev_late[0]`: bytes that waited in the socket while the client was descheduled
share a later stamp) and how late its send's (`sent_late`), so each request's true client TTFT,
and so its true outside part, lies in [outside - ev_late[0], outside + sent_late]. The
distributions of client_ttft and outside_ttft carry the bound of each percentile, computed as
`summary.bound` does for the summary's TTFT (rigorous for any spread of errors); a retried
request's last send has no stored bound, so a run with one has none ("known": false).

The join is by trace id; a span whose trace id matches no record (a proxy that started its own
trace) falls back to `gen_ai.request.id`, which vLLM builds from our `X-Request-Id`
(`<run_id>-<seq>` after a prefix such as `chatcmpl-`; `cmpl-<run_id>-<seq>-<n>` for a
completions prompt, vLLM numbering each prompt of a request). Nothing is dropped silently:
measured requests that succeeded without a span, spans matching no request, second spans of one
trace (the one that started last is kept: a retry's), spans of warm-up or cool-down requests and
of failed requests, token counts that disagree and requests whose server TTFT exceeds the
client's (impossible for a correct join) are each counted, and what the run's receiver refused
is carried beside them (`receiver`, from the records file's footer). Figures are over the
measured requests that succeeded and have a span. A pure function of records and spans, like
every other summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from latbench.records.record import Record, RunHeader, ServerSpan
from latbench.summary.samples import instants, last_sent, n_out, span_ns

NS_PER_S = 1e9
# The per-request figures, in the order the tables and results show them.
FIELDS: tuple[str, ...] = (
    "client_ttft", "server_ttft", "outside_ttft", "queue", "prefill", "front_end", "decode",
    "client_e2e", "server_e2e", "outside_e2e", "ttft_late", "sent_late",
)  # fmt: skip
# The figures whose distributions the summary reports (the rest are in each request's row).
DISTRIBUTIONS: tuple[str, ...] = (
    "client_ttft", "server_ttft", "outside_ttft", "queue", "prefill", "front_end", "decode",
    "outside_e2e",
)  # fmt: skip
# The parts of client TTFT, in the order a request meets them; they sum to it exactly.
TTFT_PARTS: tuple[str, ...] = ("outside_ttft", "front_end", "queue", "prefill")
# The figures that hold the client's TTFT stamps, and so its error (the server's do not).
BOUNDED: tuple[str, ...] = ("client_ttft", "outside_ttft")
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
    # How much later than the truth the first event's stamp may be (ev_late[0]) and the
    # send's (sent_late), seconds; None: not measured (a retried request's last send).
    ttft_late: float | None = None
    sent_late: float | None = None

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
    def front_end(self) -> float | None:
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


def percentile_bounds(measured: np.ndarray, late: np.ndarray, early: np.ndarray) -> dict[str, Any]:
    """How far each reported percentile of `measured` may be from the true one, when each
    sample's true value lies in [measured - late, measured + early] (summary/bound.py: a
    percentile is monotone in every sample, so the samples' bounds bound it). Seconds."""
    out: dict[str, Any] = {"known": True}
    if measured.size == 0:
        return out | {f"p{q}": None for q in PERCENTILES}
    m = np.percentile(measured, PERCENTILES)
    lo = np.percentile(measured - late, PERCENTILES)
    hi = np.percentile(measured + early, PERCENTILES)
    for q, mv, lv, hv in zip(PERCENTILES, m, lo, hi, strict=True):
        out[f"p{q}"] = {"over_s": max(0.0, float(mv - lv)), "under_s": max(0.0, float(hv - mv))}
    return out


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
    # What the run's receiver saw and refused (the footer's `span_receiver`), when known.
    receiver: dict[str, Any] | None = None

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

    def distributions(self) -> dict[str, dict[str, Any]]:
        """Each figure's distribution; the ones that hold the client's stamps (`BOUNDED`) with
        `error_bound`, how far each percentile may be from the truth."""
        out: dict[str, dict[str, Any]] = {}
        for name in DISTRIBUTIONS:
            d: dict[str, Any] = distribution(self.values(name))
            if name in BOUNDED:
                d["error_bound"] = self.error_bound(name)
            out[name] = d
        return out

    def error_bound(self, name: str) -> dict[str, Any]:
        """`percentile_bounds` of one of `BOUNDED` over the requests that have it; "known" is
        false (and no percentile bounded) when any of them lacks its stamps' bounds."""
        rows = [r for r in self.requests if r.value(name) is not None]
        if any(r.ttft_late is None or r.sent_late is None for r in rows):
            return {"known": False}
        measured = np.asarray([r.value(name) for r in rows], dtype=np.float64)
        late = np.asarray([r.ttft_late for r in rows], dtype=np.float64)
        early = np.asarray([r.sent_late for r in rows], dtype=np.float64)
        return percentile_bounds(measured, late, early)

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
        """results.json's "server_spans": the counts (at the top, as before), what the receiver
        refused, the aggregates and every joined request's row."""
        return {
            **self.counts(),
            "receiver": self.receiver,
            "distributions": self.distributions(),
            "ttft_split": self.ttft_split(),
            "clock_skew": self.skew(),
            "requests": [r.to_dict() for r in self.requests],
        }


def _request_seq(request_id: str | None, run_id: str | None) -> int | None:
    """The seq in a span's `gen_ai.request.id`, None if it is not one of this run's: vLLM's
    `<prefix><run_id>-<seq>` (chat), or `cmpl-<run_id>-<seq>-<n>` (completions: vLLM's
    engine request per prompt n of the request, serving.py `request_id_item`; latbench sends
    one prompt, n = 0)."""
    if request_id is None or not run_id:
        return None
    _, sep, tail = request_id.rpartition(run_id + "-")
    seq, _, prompt = tail.partition("-")
    if not sep or not seq.isdigit() or len(seq) > 18:
        return None
    if prompt and (not prompt.isdigit() or len(prompt) > 9):
        return None
    return int(seq)


def _pick(spans: list[ServerSpan]) -> ServerSpan:
    # Several spans of one trace: the last to start is the last attempt's, whose answer the
    # client read (a span sent twice is the same span either way).
    return max(spans, key=lambda s: s.start_unix_ns if s.start_unix_ns is not None else -1)


def join_spans(
    records: Sequence[Record],
    spans: Sequence[ServerSpan],
    header: RunHeader | None = None,
    receiver: dict[str, Any] | None = None,
) -> SpanJoin | None:
    """The measured, succeeded records joined with `spans`; None when the run received no span
    at all (the server does not trace: nothing to say). `header` (the records file's) gives the
    run id for the request-id fallback and the clock anchor for the skew estimate; without it
    the join is by trace id only and the skew is not estimated. `receiver` (the footer's
    `span_receiver`) is carried into the result as it is."""
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
        sent = last_sent(r)
        retried = r.attempts > 1 and r.t_last_sent is not None
        at = instants(r)
        ttft_ns, e2e_ns = span_ns(at, "attempt_ttft"), span_ns(at, "attempt_e2e")
        tokens = n_out(r)
        if span.completion_tokens is not None and span.completion_tokens != tokens:
            mismatches += 1
        item = JoinedRequest(
            seq=r.seq,
            trace_id=span.trace_id,
            client_ttft=None if ttft_ns is None else ttft_ns / NS_PER_S,
            server_ttft=span.ttft_s,
            queue=span.queue_s,
            prefill=span.prefill_s,
            decode=span.decode_s,
            client_e2e=None if e2e_ns is None else e2e_ns / NS_PER_S,
            server_e2e=span.e2e_s,
            client_tokens=tokens,
            server_tokens=span.completion_tokens,
            skew=None
            if anchor is None or span.start_unix_ns is None
            else (span.start_unix_ns - (sent + anchor)) / NS_PER_S,
            matched_by=how,
            retried=retried,
            ttft_late=r.ev_late[0] / NS_PER_S if r.ev_late else None,
            # The record's bound is its first send's: a retried request's last send has none.
            sent_late=None if retried or r.sent_late is None else r.sent_late / NS_PER_S,
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
        receiver=receiver,
    )
