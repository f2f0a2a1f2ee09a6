"""The per-request join of records with server spans (summary/spans.py): matching, counting,
the figures and their aggregates, and clock skew changing nothing but the skew estimate."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latbench.records.record import Record, RunHeader, ServerSpan, read_records
from latbench.shared.errors import ErrorKind, RecordsError
from latbench.sinks.jsonl import JsonlSink
from latbench.summary.spans import DISTRIBUTIONS, TTFT_PARTS, join_spans

MS = 1_000_000
RUN = "r1"
# The client's clock anchor: monotonic 5 s is wall 1_700_000_000 s.
HEADER = RunHeader(RUN, "test", clock_monotonic_ns=5_000 * MS, clock_wall_ns=1_700_000_000_000 * MS)


def tid(seq: int) -> str:
    """A request's trace id (never all zeros, which W3C forbids)."""
    return f"{seq + 1:032x}"


def rec(
    seq: int,
    *,
    sent_ms: float = 1000,
    ttft_ms: float = 50,
    e2e_ms: float = 100,
    tokens: int = 10,
    trace: bool = True,
    phase: str = "measure",
    error: ErrorKind | None = None,
    ttft_late_ms: float | None = 0,
    sent_late_ms: float | None = 0,
) -> Record:
    sent = int(sent_ms * MS)
    ev = (sent + int(ttft_ms * MS), sent + int(e2e_ms * MS)) if error is None else ()
    return Record(
        run_id=RUN,
        seq=seq,
        phase=phase,  # type: ignore[arg-type]
        api="chat",
        t_intended=sent,
        t_sent=sent,
        t_end=sent + int(e2e_ms * MS) + MS,
        ev_t=ev,
        ev_kind="c" * len(ev),
        usage_completion_tokens=tokens if error is None else None,
        error=error,
        trace_id=tid(seq) if trace else None,
        sent_late=None if sent_late_ms is None else int(sent_late_ms * MS),
        ev_late=None if ttft_late_ms is None or not ev else (int(ttft_late_ms * MS), 0),
    )


def span(
    seq: int,
    *,
    sent_ms: float = 1000,
    ttft: float = 0.04,
    queue: float = 0.01,
    prefill: float = 0.025,
    e2e: float = 0.09,
    tokens: int | None = 10,
    skew_s: float = 0.0,
    delay_ms: float = 0.5,
    trace_id: str | None = None,
    request_id: str | None = None,
) -> ServerSpan:
    wall = HEADER.clock_wall_ns - HEADER.clock_monotonic_ns
    start = int(sent_ms * MS) + wall + int(delay_ms * MS) + round(skew_s * 1e9)
    return ServerSpan(
        trace_id=trace_id or tid(seq),
        span_id=os.urandom(8).hex(),
        name="llm_request",
        received_ns=0,
        start_unix_ns=start,
        end_unix_ns=start + round(e2e * 1e9),
        request_id=request_id if request_id is not None else f"chatcmpl-{RUN}-{seq}",
        ttft_s=ttft,
        e2e_s=e2e,
        queue_s=queue,
        prefill_s=prefill,
        decode_s=e2e - ttft,
        inference_s=e2e - ttft + prefill,
        prompt_tokens=20,
        completion_tokens=tokens,
    )


def test_no_span_means_nothing_to_say() -> None:
    assert join_spans([rec(0)], [], HEADER) is None


def test_each_request_split_exactly() -> None:
    j = join_spans([rec(0)], [span(0)], HEADER)
    assert j is not None and j.matched == 1
    r = j.requests[0]
    assert r.client_ttft == pytest.approx(0.050)
    assert r.outside_ttft == pytest.approx(0.010)
    assert r.front_end == pytest.approx(0.040 - 0.010 - 0.025)
    assert r.outside_e2e == pytest.approx(0.010)
    # The parts add up to the client's TTFT.
    assert sum(r.value(p) or 0 for p in TTFT_PARTS) == pytest.approx(r.client_ttft)
    assert r.skew == pytest.approx(0.0005)
    assert r.matched_by == "trace_id"
    d = j.to_dict()
    assert d["matched"] == 1 and d["requests"][0]["outside_ttft"] == pytest.approx(0.010)
    assert d["requests"][0]["seq"] == 0 and d["requests"][0]["trace_id"] == tid(0)


def test_counts_what_does_not_match() -> None:
    records = [
        rec(0),
        rec(1),  # no span
        rec(2, phase="warmup"),  # a warm-up request's span: joined, not counted in the figures
        rec(3, error=ErrorKind.HTTP_STATUS),  # failed at the client, yet the server traced it
        rec(4, error=ErrorKind.HTTP_STATUS),  # failed, no span: not "without span"
        rec(5, tokens=9),  # token counts disagree
        rec(6, phase="cooldown"),  # no span, outside the window: not counted either
    ]
    spans = [
        span(0),
        span(0),  # the exporter sent it twice
        span(2),
        span(3),
        span(5),
        span(99, request_id="chatcmpl-other-99"),  # someone else's request
        span(98, request_id=""),
    ]
    j = join_spans(records, spans, HEADER)
    assert j is not None
    assert [r.seq for r in j.requests] == [0, 5]
    assert j.counts() == {
        "spans": 7,
        "matched": 2,
        "matched_by_request_id": 0,
        "requests_without_span": 1,
        "spans_without_request": 2,
        "duplicate_spans": 1,
        "spans_of_unmeasured": 1,
        "spans_of_failed": 1,
        "token_mismatches": 1,
        "server_ttft_above_client": 0,
    }


def test_falls_back_to_the_request_id_when_the_trace_id_is_not_ours() -> None:
    # A proxy started its own trace: the span's trace id is nobody's, its request id ours, as
    # vLLM 0.32 writes it: chat "chatcmpl-<X-Request-Id>", completions "cmpl-<X-Request-Id>-0"
    # (one engine request per prompt, completion/serving.py `request_id_item`).
    records = [rec(0, trace=False), rec(1), rec(12), rec(13)]
    spans = [
        span(0, trace_id="ab" * 16),
        span(1, trace_id="cd" * 16),
        span(12, trace_id="ef" * 16, request_id=f"cmpl-{RUN}-12-0"),
        span(13, trace_id="fe" * 16, request_id=f"cmpl-{RUN}-13-x"),  # not vLLM's: no match
    ]
    j = join_spans(records, spans, HEADER)
    assert j is not None and j.matched == 3 and j.matched_by_request_id == 3
    assert [r.trace_id for r in j.requests] == ["ab" * 16, "cd" * 16, "ef" * 16]
    assert j.spans_without_request == 1 and j.requests_without_span == 1
    # Without the header there is no run id to match on: the same spans find no request.
    j = join_spans(records, spans)
    assert j is not None and j.matched == 0 and j.spans_without_request == 4
    assert j.requests_without_span == 4


def test_a_second_span_of_one_trace_keeps_the_later_attempt() -> None:
    first = span(0, ttft=0.9, sent_ms=1000)
    retry = span(0, ttft=0.04, sent_ms=2000)
    record = dataclasses.replace(
        rec(0, sent_ms=1000, ttft_ms=1050, e2e_ms=1100),
        attempts=2,
        t_last_sent=2000 * MS,
    )
    j = join_spans([record], [retry, first], HEADER)
    assert j is not None and j.duplicate_spans == 1 and j.matched == 1
    r = j.requests[0]
    assert r.retried and r.server_ttft == 0.04
    # Client TTFT of the attempt the span describes: from the last send, not the first.
    assert r.client_ttft == pytest.approx(0.050) and r.outside_ttft == pytest.approx(0.010)
    # The record's send bound is its first send's: the last one's is not known, so neither is
    # the bound of the figures that start there.
    assert r.sent_late is None and r.ttft_late == 0
    assert j.distributions()["outside_ttft"]["error_bound"] == {"known": False}


def test_each_request_carries_its_stamps_error_bound() -> None:
    """The client's first event may be stamped late (ev_late[0]: bytes that waited in the socket
    share a later stamp) and its send too (sent_late): each request's true outside part lies
    in [outside - ev_late[0], outside + sent_late], and each percentile's bound follows."""
    n = 10
    # Request i: outside 10 ms + i ms, of which up to 2i ms may be the client's late stamp.
    records = [
        rec(i, sent_ms=1000 + 100 * i, ttft_ms=50 + i, ttft_late_ms=2 * i, sent_late_ms=0.5)
        for i in range(n)
    ]
    spans = [span(i, sent_ms=1000 + 100 * i) for i in range(n)]
    j = join_spans(records, spans, HEADER)
    assert j is not None
    r = j.requests[3]
    assert r.ttft_late == pytest.approx(0.006) and r.sent_late == pytest.approx(0.0005)
    assert j.to_dict()["requests"][3]["ttft_late"] == pytest.approx(0.006)
    outside = np.asarray([0.010 + i / 1e3 for i in range(n)])
    late = np.asarray([2 * i / 1e3 for i in range(n)])
    dist = j.distributions()
    for name in ("client_ttft", "outside_ttft"):
        bound = dist[name]["error_bound"]
        assert bound["known"] is True
    bound = dist["outside_ttft"]["error_bound"]
    for q in (50, 90, 99):
        over = np.percentile(outside, q) - np.percentile(outside - late, q)
        assert bound[f"p{q}"]["over_s"] == pytest.approx(over)
        assert bound[f"p{q}"]["under_s"] == pytest.approx(0.0005)
    # The server's figures hold none of the client's stamps: no bound on them.
    assert "error_bound" not in dist["server_ttft"]
    # One request without its bound leaves every percentile's unknown, as in summary/bound.py.
    records[4] = dataclasses.replace(records[4], ev_late=None)
    j = join_spans(records, spans, HEADER)
    assert j is not None and j.distributions()["outside_ttft"]["error_bound"] == {"known": False}


def test_the_receivers_account_is_carried() -> None:
    receiver = {"endpoint": "http://127.0.0.1:1/v1/traces", "rejected_spans": 2}
    j = join_spans([rec(0)], [span(0)], HEADER, receiver)
    assert j is not None and j.to_dict()["receiver"] == receiver


def test_a_server_ttft_above_the_clients_is_counted() -> None:
    j = join_spans([rec(0, ttft_ms=30)], [span(0, ttft=0.04)], HEADER)
    assert j is not None and j.server_ttft_above_client == 1
    assert j.requests[0].outside_ttft == pytest.approx(-0.010)


def test_aggregates() -> None:
    n = 100
    records = [rec(i, sent_ms=1000 + 10 * i, ttft_ms=50 + i / 10) for i in range(n)]
    spans = [span(i, sent_ms=1000 + 10 * i, ttft=0.04, queue=0.01 + i / 1e5) for i in range(n)]
    j = join_spans(records, spans, HEADER)
    assert j is not None
    d = j.to_dict()
    dist = d["distributions"]
    assert set(dist) == set(DISTRIBUTIONS)
    outside = np.array([0.010 + i / 1e4 for i in range(n)])
    assert dist["outside_ttft"]["n"] == n
    assert dist["outside_ttft"]["p50"] == pytest.approx(np.percentile(outside, 50))
    assert dist["outside_ttft"]["p99"] == pytest.approx(np.percentile(outside, 99))
    assert dist["outside_ttft"]["min"] == pytest.approx(0.010)
    assert dist["outside_ttft"]["max"] == pytest.approx(0.010 + 99 / 1e4)
    assert dist["server_ttft"]["mean"] == pytest.approx(0.04)
    split = d["ttft_split"]
    assert split["n"] == n
    assert sum(split["of_mean"].values()) == pytest.approx(1.0)
    mean_ttft = float(np.mean([0.050 + i / 1e4 for i in range(n)]))
    assert split["of_mean"]["outside_ttft"] == pytest.approx(outside.mean() / mean_ttft)
    assert 0 < split["median_share"]["queue"] < split["median_share"]["prefill"]
    assert d["clock_skew"]["n"] == n
    assert d["clock_skew"]["median"] == pytest.approx(0.0005)
    assert d["clock_skew"]["max"] - d["clock_skew"]["min"] == pytest.approx(0, abs=1e-9)


def test_no_header_no_skew() -> None:
    j = join_spans([rec(0)], [span(0)])
    assert j is not None and j.requests[0].skew is None
    assert j.to_dict()["clock_skew"]["n"] == 0


@settings(max_examples=60, deadline=None)
@given(
    skew=st.floats(min_value=-86_400, max_value=86_400, allow_nan=False),
    ttfts=st.lists(st.integers(min_value=1, max_value=5_000), min_size=1, max_size=20),
)
def test_clock_skew_changes_no_figure_but_the_skew(skew: float, ttfts: list[int]) -> None:
    records = [rec(i, sent_ms=1000 + i, ttft_ms=t, e2e_ms=t + 50) for i, t in enumerate(ttfts)]
    spans = [span(i, sent_ms=1000 + i, ttft=t / 2000) for i, t in enumerate(ttfts)]
    skewed = [span(i, sent_ms=1000 + i, ttft=t / 2000, skew_s=skew) for i, t in enumerate(ttfts)]
    a, b = join_spans(records, spans, HEADER), join_spans(records, skewed, HEADER)
    assert a is not None and b is not None
    da, db = a.to_dict(), b.to_dict()
    sa, sb = da.pop("clock_skew"), db.pop("clock_skew")
    for row in (*da["requests"], *db["requests"]):
        row.pop("skew")
    assert da == db
    assert math.isclose(sb["median"] - sa["median"], skew, abs_tol=1e-6)


def test_the_records_file_carries_the_spans(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    sink = JsonlSink(path, HEADER)
    records = [rec(0), rec(1)]
    spans = [span(0), span(1)]
    for r, s in zip(records, spans, strict=True):
        sink.add(r)
        sink.add_span(s)
    sink.close(None)
    f = read_records(path)
    assert f.spans == spans
    live = join_spans(records, spans, HEADER)
    again = join_spans(f.records, f.spans, f.header)
    assert live is not None and again is not None
    assert again.to_dict() == live.to_dict()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"request_id": 5}, "span request_id is 5, not a string"),
        ({"service": ["vllm"]}, "span service is ['vllm'], not a string"),
        ({"start_unix_ns": 1 << 63}, "span start_unix_ns is 9223372036854775808, not a 64-bit"),
        ({"completion_tokens": -1}, "span completion_tokens is -1, not a non-negative"),
        ({"completion_tokens": 1.5}, "span completion_tokens is 1.5"),
        ({"ttft_s": -5}, "span ttft_s is -5, not a non-negative number of seconds"),
        ({"queue_s": "0.1"}, "span queue_s is '0.1'"),
        ({"trace_id": "AB" * 16}, "span trace_id is"),
    ],
)
def test_a_span_line_the_join_cannot_use_is_refused_by_name(
    tmp_path: Path, change: dict[str, object], says: str
) -> None:
    """Every reader of a records file does arithmetic on a span's values: one that is not a
    value of its kind is a clear error naming it (the receiver refuses such a span with the
    same rules, records.record.check_span, so a run never writes one)."""
    path = tmp_path / "records.jsonl"
    sink = JsonlSink(path, HEADER)
    sink.add_span(span(0))
    sink.close(None)
    lines = path.read_bytes().splitlines()
    d = orjson.loads(lines[1])
    d.update(change)
    path.write_bytes(b"\n".join([lines[0], orjson.dumps(d), *lines[2:]]) + b"\n")
    with pytest.raises(RecordsError, match=re.escape(says)):
        read_records(path)


def test_a_span_field_this_latbench_does_not_know_is_left_out(tmp_path: Path) -> None:
    """A later latbench may add a field to span lines; this one reads the rest, as it does for
    request lines."""
    path = tmp_path / "records.jsonl"
    sink = JsonlSink(path, HEADER)
    sink.add_span(span(0))
    sink.close(None)
    lines = path.read_bytes().splitlines()
    d = orjson.loads(lines[1]) | {"gen_ai_system": "vllm"}
    path.write_bytes(b"\n".join([lines[0], orjson.dumps(d), *lines[2:]]) + b"\n")
    [got] = read_records(path).spans
    assert got.trace_id == tid(0) and got.ttft_s == 0.04
