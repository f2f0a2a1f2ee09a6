"""Every metric of METRICS.md, computed from hand-built records with known instants."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latbench import ErrorKind, RecordsError
from latbench.records import Record
from latbench.records.record import Phase, encode_record, iter_lines
from latbench.spec import DEFAULT_LIMITS, DEFAULT_SLOS, METRICS, Slo, parse_slo
from latbench.summary import ClientStats, Summary, summarize

MS = 1_000_000  # ns
NS = 1_000_000_000


def rec(
    seq: int = 0,
    *,
    ev_ms: Sequence[float] = (),
    kinds: str | None = None,
    ev_n: Sequence[int] | None = None,
    t_intended_ms: float = 0,
    t_sent_ms: float = 0,
    t_end_ms: float | None = None,
    phase: Phase = "measure",
    usage: int | None = None,
    prompt: int | None = None,
    max_tokens: int | None = None,
    error: ErrorKind | None = None,
    status: int | None = 200,
) -> Record:
    ev_t = tuple(int(x * MS) for x in ev_ms)
    if t_end_ms is None:
        t_end_ms = (ev_ms[-1] if ev_ms else t_sent_ms) + 1
    return Record(
        run_id="test",
        seq=seq,
        phase=phase,
        api="chat",
        t_intended=int(t_intended_ms * MS),
        t_sent=int(t_sent_ms * MS),
        t_headers=int(t_sent_ms * MS) + MS,
        t_end=int(t_end_ms * MS),
        ev_t=ev_t,
        ev_kind="c" * len(ev_t) if kinds is None else kinds,
        ev_n=None if ev_n is None else tuple(ev_n),
        status=status,
        usage_prompt_tokens=prompt,
        usage_completion_tokens=usage,
        max_tokens=max_tokens,
        error=error,
    )


def stream(first_ms: float = 50, step_ms: float = 10, count: int = 10) -> list[float]:
    """Event instants: the first at `first_ms` after t=0, then one every `step_ms`."""
    return [first_ms + step_ms * i for i in range(count)]


def only(summary: Summary, metric: str) -> float:
    st_ = summary.latency[metric]
    assert st_.count == 1, f"{metric}: {st_.count} samples"
    assert st_.mean is not None
    return st_.mean


# ---------------------------------------------------------------------------------------------
# Latency metrics, one by one


def test_one_token_per_event_every_metric_exactly() -> None:
    # Scheduled at 0, sent 2 ms late; tokens at 50 ms then every 10 ms (10 events).
    r = rec(ev_ms=stream(50, 10, 10), t_intended_ms=0, t_sent_ms=2)
    s = summarize([r])
    assert only(s, "ttft") == 0.048
    assert only(s, "ttfo") == 0.048
    assert only(s, "tpot") == 0.09 / 9
    assert only(s, "e2e") == 0.138
    assert only(s, "queue_delay") == 0.002
    assert only(s, "ttft_from_schedule") == 0.05
    assert only(s, "e2e_from_schedule") == 0.14
    itl = s.latency["itl"]
    assert itl.count == 9 and itl.min == itl.max == 0.01
    # At one token per event, ITL per token equals ITL.
    assert s.latency["itl_per_token"] == itl


def test_multi_token_events_divide_each_gap_by_the_later_events_tokens() -> None:
    r = rec(ev_ms=[50, 60, 80, 90], ev_n=[1, 3, 2, 2])
    s = summarize([r], percentiles=(50,))
    assert sorted(np.round(np.array([0.01, 0.02, 0.01]), 12)) == sorted(
        np.round([s.latency["itl"].min, s.latency["itl"].p(50), s.latency["itl"].max], 12)
    )
    per_token = s.latency["itl_per_token"]
    assert per_token.count == 3
    assert per_token.min == pytest.approx(0.01 / 3, rel=1e-12)
    assert per_token.p(50) == pytest.approx(0.005, rel=1e-12)
    assert per_token.max == pytest.approx(0.01, rel=1e-12)
    # N_out is the sum of ev_n (8) when usage is absent: TPOT = 40 ms / 7.
    assert s.tokens.output_total == 8
    assert dict(s.tokens.sources) == {"usage": 0, "ev_n": 1, "events": 0}
    assert only(s, "tpot") == pytest.approx(0.04 / 7, rel=1e-12)


def test_reasoning_counts_for_ttft_but_not_for_ttfo() -> None:
    thinking = rec(0, ev_ms=[50, 60, 70, 80], kinds="rrcc")
    only_thinking = rec(1, ev_ms=[30, 40], kinds="rr")
    s = summarize([thinking, only_thinking])
    assert s.latency["ttft"].count == 2
    assert s.latency["ttft"].min == 0.03 and s.latency["ttft"].max == 0.05
    # A request that never produced content has no TTFO sample.
    assert only(s, "ttfo") == 0.07


def test_tpot_uses_usage_tokens_over_event_count() -> None:
    events = stream(50, 10, 10)  # first 50, last 140: 90 ms of decoding
    from_usage = summarize([rec(ev_ms=events, usage=19)])
    assert only(from_usage, "tpot") == 0.09 / 18
    assert dict(from_usage.tokens.sources) == {"usage": 1, "ev_n": 0, "events": 0}
    assert from_usage.tokens.disagreements["usage_vs_events"] == 1
    from_events = summarize([rec(ev_ms=events)])
    assert only(from_events, "tpot") == 0.01
    assert dict(from_events.tokens.sources) == {"usage": 0, "ev_n": 0, "events": 1}


def test_one_output_token_gives_no_tpot_sample_and_no_failing_verdict() -> None:
    s = summarize([rec(ev_ms=[40], usage=1)])
    assert s.latency["tpot"].count == 0
    assert s.latency["tpot"].mean is None and s.latency["tpot"].p(99) is None
    assert s.latency["itl"].count == 0
    assert s.decode_rate.count == 0
    tpot_result = next(r for r in s.slos if r.slo.metric == "tpot")
    assert tpot_result.passed is None and tpot_result.attainment is None
    assert s.slo_passed  # TTFT 40 ms passes; TPOT has nothing to judge


def test_decode_rate_is_the_inverse_of_tpot() -> None:
    s = summarize([rec(0, ev_ms=stream(50, 10, 5)), rec(1, ev_ms=stream(50, 20, 5))])
    assert s.decode_rate.count == 2
    assert s.decode_rate.min == pytest.approx(50.0)
    assert s.decode_rate.max == pytest.approx(100.0)


def test_event_with_zero_reported_tokens_keeps_its_gap_once() -> None:
    s = summarize([rec(ev_ms=[50, 60, 70], ev_n=[1, 0, 2])])
    assert s.latency["itl_per_token"].min == pytest.approx(0.005)
    assert s.latency["itl_per_token"].max == pytest.approx(0.01)


def test_ev_n_that_does_not_match_the_events_is_ignored() -> None:
    s = summarize([rec(ev_ms=[50, 60, 70], ev_n=[5, 5])])
    assert dict(s.tokens.sources) == {"usage": 0, "ev_n": 0, "events": 1}
    assert s.tokens.output_total == 3


# ---------------------------------------------------------------------------------------------
# Which requests are measured


def test_failed_requests_leave_distributions_but_count_in_errors_and_goodput() -> None:
    ok = [rec(i, ev_ms=stream(50, 10, 5)) for i in range(3)]
    failed = [
        # A failed request keeps what it measured; none of it may reach the distributions.
        rec(10, ev_ms=[900, 990], error=ErrorKind.STREAM_TRUNCATED),
        rec(11, error=ErrorKind.HTTP_STATUS, status=503),
        rec(12, error=ErrorKind.HTTP_STATUS, status=503),
        rec(13, error=ErrorKind.HTTP_STATUS, status=429),
        rec(14, error=ErrorKind.TIMEOUT_FIRST_TOKEN, status=None),
    ]
    s = summarize(ok + failed)
    assert s.latency["ttft"].count == 3 and s.latency["ttft"].max == 0.05
    assert s.latency["itl"].count == 12 and s.latency["itl"].max == 0.01
    assert (s.requests.measured, s.requests.succeeded, s.requests.failed) == (8, 3, 5)
    assert dict(s.requests.errors_by_kind) == {
        "http_status": 3,
        "stream_truncated": 1,
        "timeout_first_token": 1,
    }
    assert dict(s.requests.errors_by_status) == {429: 1, 503: 2}
    assert s.rates.good == 3
    assert s.rates.goodput_fraction == 3 / 8
    assert s.tokens.output_total == 15  # failed requests' tokens are not output


def test_the_failed_share_counts_overtime_cuts_and_leaves_out_cancelled_ones() -> None:
    """A stop's or an abort's cuts are latbench's; an overtime cut is the server not finishing."""
    ok = [rec(i, ev_ms=stream(50, 10, 5)) for i in range(6)]
    cut = [
        rec(10, ev_ms=[50], error=ErrorKind.OVERTIME),
        rec(11, ev_ms=[50], error=ErrorKind.OVERTIME),
        rec(12, ev_ms=[50], error=ErrorKind.CANCELLED),
        rec(13, error=ErrorKind.HTTP_STATUS, status=500),
    ]
    f = summarize(ok + cut).failures
    assert (f.failed, f.overtime, f.cancelled, f.judged) == (3, 2, 1, 9)
    assert f.fraction == 3 / 9 and not f.passed
    assert f.describe() == (
        "3 of 9 measured requests failed (33.3%, 2 of them cut at the overtime), "
        "over the 1% limit; 1 cancelled, not counted"
    )
    assert f.to_dict()["overtime"] == 2


def test_warmup_and_cooldown_are_left_out() -> None:
    warm = rec(0, phase="warmup", ev_ms=[500], t_intended_ms=-1000, t_sent_ms=-1000)
    measured = rec(1, ev_ms=[50, 60], t_end_ms=70)
    cool = rec(2, phase="cooldown", ev_ms=[5000], t_intended_ms=4000, t_sent_ms=4000, t_end_ms=6000)
    s = summarize([warm, measured, cool])
    assert only(s, "ttft") == 0.05
    assert (s.requests.measured, s.requests.warmup, s.requests.cooldown) == (1, 1, 1)
    # Without the run's load the phases place the edges: the first measured send, the first
    # cool-down send.
    assert s.window is not None
    assert (s.window.start_ns, s.window.end_ns) == (0, 4000 * MS)


def test_window_is_derived_from_the_records_when_not_given() -> None:
    records = [
        rec(0, t_intended_ms=100, t_sent_ms=105, ev_ms=[150, 160], t_end_ms=170),
        rec(1, t_intended_ms=200, t_sent_ms=200, ev_ms=[260], t_end_ms=1100),
        # A failed request still bounds the window: it was part of the offered load.
        rec(2, t_intended_ms=50, t_sent_ms=60, error=ErrorKind.CONNECT_REFUSED, t_end_ms=61),
    ]
    s = summarize(records)
    assert s.window is not None and s.window.derived
    # From the first intended send to just after the last instant, so that [start, end) holds it.
    assert (s.window.start_ns, s.window.end_ns) == (50 * MS, 1100 * MS + 1)
    given_window = summarize(records, window=(0, 2 * NS)).window
    assert given_window is not None and not given_window.derived
    assert given_window.duration_s == 2.0


def test_window_falls_back_to_the_last_event_without_t_end() -> None:
    r = Record("t", 0, "measure", "chat", t_intended=0, t_sent=0, ev_t=(50 * MS, 80 * MS))
    s = summarize([r])
    assert s.window is not None and s.window.end_ns == 80 * MS + 1


def test_rates_over_the_window() -> None:
    records = [rec(i, ev_ms=stream(50, 10, 10), usage=10) for i in range(4)]
    records.append(rec(9, error=ErrorKind.TIMEOUT_TOTAL))
    s = summarize(records, window=(0, 2 * NS))
    assert s.rates.requests_per_s == 2.0  # 4 succeeded / 2 s; the failure is not completed
    assert s.rates.output_tokens_per_s == 20.0
    assert s.rates.goodput_per_s == 2.0


def test_nothing_measured_gives_empty_figures_and_no_pass() -> None:
    s = summarize([rec(0, phase="warmup", ev_ms=[50])])
    assert s.window is None
    assert s.rates.requests_per_s is None and s.rates.goodput_fraction is None
    assert all(st_.count == 0 and st_.mean is None for st_ in s.latency.values())
    assert not s.slo_passed
    data = orjson.loads(orjson.dumps(s.to_dict()))
    # Empty distributions keep their shape, with None for every figure.
    keys = ["count", "mean", "std", "min", "max", "p50", "p90", "p95", "p99", "p99.9"]
    assert data["latency"]["ttft"] == {k: 0 if k == "count" else None for k in keys}


def test_to_dict_is_plain_json_in_seconds() -> None:
    records = [rec(0, ev_ms=stream(50, 10, 3)), rec(1, error=ErrorKind.HTTP_STATUS, status=503)]
    s = summarize(records, window=(0, NS), client=steady())
    data = orjson.loads(orjson.dumps(s.to_dict()))  # no numpy option: plain Python values only
    assert data["latency"]["ttft"]["p50"] == 0.05
    assert data["latency"]["itl"]["count"] == 2
    assert data["requests"] == {
        "measured": 2,
        "succeeded": 1,
        "failed": 1,
        "warmup": 0,
        "cooldown": 0,
    }
    assert data["errors"] == {"total": 1, "by_kind": {"http_status": 1}, "by_status": {"503": 1}}
    assert data["slo"]["passed"] is True
    assert [r["slo"] for r in data["slo"]["results"]] == [
        "ttft:p99<=100ms",
        "itl:p99<=100ms",
        "tpot:p99<=100ms",
    ]
    assert data["rates"]["requests_per_s"] == 1.0 and data["rates"]["goodput_fraction"] == 0.5
    assert data["client_bound"] is False and data["validity"]["known"] is True
    assert data["window"] == {"start_ns": 0, "end_ns": NS, "duration_s": 1.0, "derived": False}


def test_every_request_failed_never_passes() -> None:
    s = summarize([rec(0, error=ErrorKind.HTTP_STATUS, status=500)])
    assert s.requests.succeeded == 0
    assert not s.slo_passed


# ---------------------------------------------------------------------------------------------
# Tokens


def test_requested_vs_received_and_prompt_totals() -> None:
    records = [
        rec(0, ev_ms=[50, 60], usage=10, max_tokens=10, prompt=100),
        rec(1, ev_ms=[50, 60], usage=8, max_tokens=10, prompt=200),
        rec(2, ev_ms=[50, 60], usage=12, max_tokens=10),
        rec(3, ev_ms=[50, 60], usage=7),
    ]
    tok = summarize(records).tokens
    assert (tok.requested, tok.received_exact, tok.received_fewer, tok.received_more) == (
        3,
        1,
        1,
        1,
    )
    assert tok.output_total == 37
    assert tok.prompt_total == 300 and tok.prompt_reported == 2


def test_disagreements_between_token_sources() -> None:
    records = [
        rec(0, ev_ms=[50, 60], ev_n=[2, 2], usage=5),  # usage 5, sum 4, 2 events
        rec(1, ev_ms=[50, 60], ev_n=[1, 1], usage=2),  # all agree
        rec(2, ev_ms=[50, 60, 70], usage=4),  # no ev_n: usage 4 vs 3 events
    ]
    tok = summarize(records).tokens
    assert dict(tok.disagreements) == {
        "usage_vs_ev_n": 1,
        "usage_vs_events": 2,
        "ev_n_vs_events": 1,
    }
    assert tok.prompt_total is None


# ---------------------------------------------------------------------------------------------
# SLOs and goodput


def ttft_records(ms: Sequence[float]) -> list[Record]:
    return [rec(i, ev_ms=[x, x + 10]) for i, x in enumerate(ms)]


def test_slo_attainment_counts_exactly_at_threshold_as_attained() -> None:
    records = ttft_records([50, 100, 150, 200])
    slos = (Slo("ttft", 50, 0.1), Slo("ttft", 99, 0.2), Slo("ttft", 50, 0.049))
    at, above, below = summarize(records, slos=slos).slos
    assert at.attainment == 0.5  # 50 and exactly 100
    assert at.value_s == pytest.approx(0.125)
    assert at.passed is False
    assert above.attainment == 1.0 and above.passed is True
    assert above.value_s == pytest.approx(float(np.percentile([0.05, 0.1, 0.15, 0.2], 99)))
    assert below.attainment == 0.0 and below.passed is False


def test_slo_value_exactly_at_threshold_passes() -> None:
    (result,) = summarize(ttft_records([100, 100]), slos=(Slo("ttft", 99, 0.1),)).slos
    assert result.value_s == 0.1 and result.passed is True
    assert summarize(ttft_records([100, 100]), slos=(Slo("ttft", 99, 0.1),)).slo_passed


def test_goodput_needs_every_slo_and_every_gap() -> None:
    good = rec(0, ev_ms=[50, 150, 160])  # ITL gap of exactly 100 ms meets <= 100 ms
    slow_first = rec(1, ev_ms=[150, 160, 170])
    one_long_gap = rec(2, ev_ms=[50, 60, 161])
    failed = rec(3, ev_ms=[50, 60], error=ErrorKind.CONNECTION_RESET)
    single = rec(4, ev_ms=[50])  # no gaps, no TPOT: judged on TTFT alone
    slos = (Slo("ttft", 99, 0.1), Slo("itl", 99, 0.1), Slo("tpot", 99, 0.1))
    s = summarize([good, slow_first, one_long_gap, failed, single], window=(0, NS), slos=slos)
    assert s.rates.good == 2
    assert s.rates.goodput_per_s == 2.0
    assert s.rates.goodput_fraction == 2 / 5
    assert s.rates.requests_per_s == 4.0


def test_goodput_on_itl_per_token_uses_every_per_token_gap() -> None:
    # Gap of 150 ms into a 2-token event: 75 ms per token, within 100 ms.
    r = rec(0, ev_ms=[50, 200], ev_n=[1, 2])
    assert summarize([r], slos=(Slo("itl_per_token", 99, 0.1),)).rates.good == 1
    assert summarize([r], slos=(Slo("itl", 99, 0.1),)).rates.good == 0


def test_no_slos_means_every_success_is_good() -> None:
    s = summarize([rec(0, ev_ms=[5000]), rec(1, error=ErrorKind.TIMEOUT_IDLE)], slos=())
    assert s.rates.good == 1 and s.slos == () and s.slo_passed


def test_default_slos_are_100ms_p99_for_ttft_itl_tpot() -> None:
    assert [(s.metric, s.percentile, s.threshold_s) for s in DEFAULT_SLOS] == [
        ("ttft", 99.0, 0.1),
        ("itl", 99.0, 0.1),
        ("tpot", 99.0, 0.1),
    ]
    failing = summarize([rec(0, ev_ms=[50, 60, 300])])  # one 240 ms gap
    assert [r.passed for r in failing.slos] == [True, False, False]
    assert not failing.slo_passed


# ---------------------------------------------------------------------------------------------
# Validity


def steady(open_loop: bool = True, **kw: object) -> ClientStats:
    d: dict[str, object] = {
        "loop_lag_ns": [100_000] * 100,
        "cpu_s": 1.0,
        "wall_s": 10.0,
        "open_loop": open_loop,
        "unsent": 0,
    }
    d.update(kw)
    return ClientStats(**d)  # type: ignore[arg-type]


def test_no_client_stats_means_validity_unknown() -> None:
    s = summarize([rec(ev_ms=[50])])
    assert not s.validity.known and s.validity.client_bound is None
    assert s.client_bound is False  # unknown is not evidence of a client-bound run
    assert s.validity.queue_delay_p99_s == 0.0


def test_a_client_that_kept_up_is_not_client_bound() -> None:
    s = summarize([rec(ev_ms=[50])], client=steady())
    v = s.validity
    assert v.known and v.client_bound is False and v.reasons == ()
    assert v.loop_lag_p99_s == pytest.approx(0.0001)
    assert v.client_cpu == 0.1
    assert not s.client_bound


def test_loop_lag_above_1ms_is_client_bound() -> None:
    lag = [100_000] * 97 + [5 * MS] * 3
    s = summarize([rec(ev_ms=[50])], client=steady(loop_lag_ns=lag))
    assert s.client_bound
    (reason,) = s.validity.reasons
    assert "event-loop lag p99" in reason and "1.00 ms" in reason
    assert s.validity.loop_lag_max_s == 0.005


def test_queue_delay_and_unsent_count_only_in_open_loop() -> None:
    late = [rec(i, t_intended_ms=0, t_sent_ms=20, ev_ms=[70]) for i in range(5)]
    open_loop = summarize(late, client=steady(open_loop=True, unsent=2))
    assert open_loop.client_bound
    assert len(open_loop.validity.reasons) == 2
    assert "queue delay p99 is 20.00 ms" in open_loop.validity.reasons[0]
    assert "10.00 ms" in open_loop.validity.reasons[0]
    assert "2 scheduled requests were never sent" in open_loop.validity.reasons[1]
    closed = summarize(late, client=steady(open_loop=False, unsent=2))
    assert not closed.client_bound and closed.validity.reasons == ()


def test_queue_delay_validity_includes_failed_requests() -> None:
    records = [rec(0, ev_ms=[50])] + [
        rec(i, t_sent_ms=30, error=ErrorKind.TIMEOUT_CONNECT) for i in range(1, 10)
    ]
    s = summarize(records, client=steady())
    assert s.latency["queue_delay"].max == 0.0  # the latency row: successes only
    assert s.validity.queue_delay_p99_s == pytest.approx(0.03)
    assert s.client_bound


def test_client_cpu_above_limit_is_client_bound() -> None:
    s = summarize([rec(ev_ms=[50])], client=steady(cpu_s=9.5, wall_s=10.0))
    assert s.validity.client_cpu == 0.95 > DEFAULT_LIMITS.client_cpu
    (reason,) = s.validity.reasons
    assert "95% of one core" in reason and "90%" in reason


def test_client_stats_round_trip_through_json() -> None:
    c = steady(loop_lag_ns=[1, 2, 3], unsent=4)
    back = ClientStats.from_dict(orjson.loads(orjson.dumps(c.to_dict())))
    assert back.to_dict() == c.to_dict()
    with pytest.raises(RecordsError, match="cpu_s"):
        ClientStats.from_dict({"loop_lag_ns": [], "wall_s": 1, "open_loop": True, "unsent": 0})


# ---------------------------------------------------------------------------------------------
# parse_slo


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ttft:p99<=100ms", Slo("ttft", 99.0, 0.1)),
        ("itl<=0.1", Slo("itl", 99.0, 0.1)),
        ("tpot:p90<=80ms", Slo("tpot", 90.0, 0.08)),
        ("e2e:p50<=2s", Slo("e2e", 50.0, 2.0)),
        ("TTFO : P99.9 <= 250 us", Slo("ttfo", 99.9, 0.00025)),
        ("queue_delay:p100<=10ms", Slo("queue_delay", 100.0, 0.01)),
        ("itl_per_token<=.05", Slo("itl_per_token", 99.0, 0.05)),
        ("e2e_from_schedule:p95<=1.5s", Slo("e2e_from_schedule", 95.0, 1.5)),
    ],
)
def test_parse_slo_accepted_forms(text: str, expected: Slo) -> None:
    assert parse_slo(text) == expected


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("ttft:p99<100ms", ["'ttft:p99<100ms'", "METRIC[:pNN]<=THRESHOLD"]),
        ("tfft<=1s", ["unknown metric 'tfft'", "allowed: ttft, ttfo, itl, itl_per_token, tpot"]),
        ("ttft:99<=1s", ["percentile '99'", "p50, p99, p99.9"]),
        ("ttft:p101<=1s", ["percentile 'p101'", "0..100"]),
        ("ttft<=fast", ["threshold 'fast'", "s, ms or us"]),
        ("ttft<=100 min", ["threshold '100 min'"]),
    ],
)
def test_parse_slo_errors_name_the_bad_part(text: str, needles: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        parse_slo(text)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_slo_text_round_trips() -> None:
    for slo in (*DEFAULT_SLOS, Slo("e2e", 50, 2.0), Slo("tpot", 99.9, 0.08)):
        assert parse_slo(str(slo)) == slo
    assert str(DEFAULT_SLOS[0]) == "ttft:p99<=100ms"


def test_slo_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="allowed: ttft"):
        Slo("latency")
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        Slo("ttft", 101)
    with pytest.raises(ValueError, match="not a duration"):
        Slo("ttft", 99, -1)


def test_summarize_rejects_percentiles_outside_0_100() -> None:
    with pytest.raises(ValueError, match="101"):
        summarize([], percentiles=(50, 101))


# ---------------------------------------------------------------------------------------------
# Properties over random runs

instants_ms = st.lists(st.integers(min_value=0, max_value=5_000), min_size=0, max_size=12)


@st.composite
def records(draw: st.DrawFn) -> list[Record]:
    out = []
    for seq in range(draw(st.integers(min_value=0, max_value=25))):
        sent = draw(st.integers(min_value=0, max_value=1_000))
        intended = sent - draw(st.integers(min_value=0, max_value=50))
        gaps = draw(instants_ms)
        events = list(np.cumsum([sent + 1, *gaps])) if gaps or draw(st.booleans()) else []
        kinds = "".join(draw(st.sampled_from("rc")) for _ in events)
        counts = st.lists(st.integers(1, 4), min_size=len(events), max_size=len(events))
        ev_n = draw(st.none() | counts)
        out.append(
            rec(
                seq,
                ev_ms=[float(x) for x in events],
                kinds=kinds,
                ev_n=ev_n,
                t_intended_ms=intended,
                t_sent_ms=sent,
                phase=draw(
                    st.sampled_from(["measure", "measure", "measure", "warmup", "cooldown"])
                ),
                usage=draw(st.none() | st.integers(0, 60)),
                max_tokens=draw(st.none() | st.integers(0, 60)),
                error=draw(st.none() | st.none() | st.sampled_from(list(ErrorKind))),
            )
        )
    return out


def naive_samples(rs: list[Record]) -> dict[str, list[float]]:
    """The contract's definitions written the slow, obvious way, to check the vectorised ones."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for r in rs:
        if r.phase != "measure" or r.error is not None:
            continue
        out["queue_delay"].append((r.t_sent - r.t_intended) / NS)
        if not r.ev_t:
            continue
        first, last = r.ev_t[0], r.ev_t[-1]
        out["ttft"].append((first - r.t_sent) / NS)
        out["e2e"].append((last - r.t_sent) / NS)
        out["ttft_from_schedule"].append((first - r.t_intended) / NS)
        out["e2e_from_schedule"].append((last - r.t_intended) / NS)
        if "c" in r.ev_kind:
            out["ttfo"].append((r.ev_t[r.ev_kind.index("c")] - r.t_sent) / NS)
        counts = list(r.ev_n) if r.ev_n is not None else [1] * len(r.ev_t)
        for i in range(1, len(r.ev_t)):
            gap = r.ev_t[i] - r.ev_t[i - 1]
            out["itl"].append(gap / NS)
            out["itl_per_token"].append(gap / (counts[i] * NS))
        n_out = r.usage_completion_tokens
        if n_out is None:
            n_out = sum(counts)
        if n_out > 1:
            out["tpot"].append((last - first) / ((n_out - 1) * NS))
    return out


@settings(max_examples=80, deadline=None)
@given(records())
def test_vectorised_metrics_equal_the_naive_definitions(rs: list[Record]) -> None:
    pcts = (0, 25, 50, 90, 99, 99.9, 100)
    s = summarize(rs, percentiles=pcts)
    for metric, samples in naive_samples(rs).items():
        got = s.latency[metric]
        assert got.count == len(samples), metric
        if samples:
            expected = np.percentile(np.array(samples), pcts)
            assert [got.p(p) for p in pcts] == pytest.approx(list(expected), rel=1e-12, abs=0)
            assert got.mean == pytest.approx(float(np.mean(samples)), rel=1e-9, abs=1e-15)
            assert got.min == min(samples) and got.max == max(samples)


@settings(max_examples=80, deadline=None)
@given(records())
def test_summary_invariants(rs: list[Record]) -> None:
    s = summarize(rs, client=steady())
    measured = [r for r in rs if r.phase == "measure"]
    ok = [r for r in measured if r.error is None]
    req = s.requests
    assert req.measured == len(measured) and req.succeeded == len(ok)
    assert req.succeeded + req.failed == req.measured
    assert sum(req.errors_by_kind.values()) == req.failed
    assert req.warmup + req.cooldown + req.measured == len(rs)
    assert 0 <= s.rates.good <= req.succeeded
    assert sum(s.tokens.sources.values()) == len(ok)
    for result in s.slos:
        assert result.attainment is None or 0 <= result.attainment <= 1
    for st_ in s.latency.values():
        if st_.count:
            assert st_.min is not None and st_.max is not None
            values = [st_.min, *st_.percentiles.values(), st_.max]
            assert None not in values and values == sorted(values)  # type: ignore[type-var]
    if s.window is not None:
        assert s.window.end_ns >= s.window.start_ns
    # Plain JSON: no numpy scalars, no NaN.
    text = orjson.dumps(s.to_dict())
    assert b"NaN" not in text and not math.isnan(len(text))


@settings(max_examples=40, deadline=None)
@given(records())
def test_replayed_records_summarize_the_same(rs: list[Record]) -> None:
    lines = [encode_record(r) for r in rs]
    replayed = [x for x in iter_lines(lines) if isinstance(x, Record)]
    assert summarize(replayed).to_dict() == summarize(rs).to_dict()


@pytest.mark.parametrize(
    ("field", "values"),
    [("ev_t", [2**63]), ("ev_t", [2**64 - 1]), ("ev_n", [2**63]), ("ev_n", [1, -1]),
     ("ev_n", [1.5])],
)  # fmt: skip
def test_event_values_an_int64_array_cannot_hold_are_refused_naming_the_line(
    field: str, values: list[object]
) -> None:
    """JSON readers hand back integers up to 2**64 - 1 as ints; array('q') then raises
    OverflowError, which must be the records file's error, not a traceback."""
    good = encode_record(rec(0, ev_ms=[50, 60], ev_n=[1, 1]))
    bad = orjson.loads(good)
    bad[field] = values * 2 if len(values) == 1 else values
    lines = [good, orjson.dumps(bad)]
    with pytest.raises(RecordsError, match=r"^run\.jsonl:2: not a latbench records line"):
        list(iter_lines(lines, "run.jsonl"))
