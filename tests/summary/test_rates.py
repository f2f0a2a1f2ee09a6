"""Rates over the measurement window (docs/metrics.md, "Rates"), on hand-built runs of every load
mode whose answer is known: users or arrivals laid out as the runner would send them, each
request streaming `TOKENS` tokens on a fixed timetable, phases given by the runner's own rule
(`load.pacers.phase_of`). The window is derived from the records and the load, as the runner
records it in the footer and as a summary of a file without one derives it."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import pytest

from latbench import ErrorKind
from latbench.load.pacers import PoissonPacer, phase_of
from latbench.records import Record
from latbench.records.record import RecordsFile
from latbench.spec import DEFAULT_SLOS, LoadSpec, RunSpec, Slo
from latbench.summary import Summary, summarize
from latbench.summary.compare import RunSamples
from latbench.summary.samples import derived_window
from latbench.summary.summary import summarize_file

MS = 1_000_000  # ns
S = 1_000_000_000
START = 10 * S  # the run's start: any instant, rates must not care
TTFT_MS = 50
ITL_MS = 10
TOKENS = 96  # 50 ms + 95 x 10 ms: every request lasts exactly 1 s
E2E_MS = TTFT_MS + (TOKENS - 1) * ITL_MS


def request(n: int, load: LoadSpec, t_ms: float, *, itl_ms: float = ITL_MS) -> Record:
    """Request n, intended and sent at `t_ms` after the start, streaming on the timetable."""
    t = START + round(t_ms * MS)
    events = tuple(t + round((TTFT_MS + itl_ms * i) * MS) for i in range(TOKENS))
    phase = phase_of(
        n,
        t - START,
        warmup_s=load.warmup,
        cooldown_s=load.cooldown,
        warmup_requests=load.warmup_requests,
        cooldown_requests=load.cooldown_requests,
        duration_s=load.duration,
        total_requests=load.requests,
    )
    return Record(
        run_id="rates", seq=n, phase=phase, api="chat", t_intended=t, t_sent=t,
        t_end=events[-1], ev_t=events, ev_kind="c" * TOKENS, usage_completion_tokens=TOKENS,
    )  # fmt: skip


def closed_loop(load: LoadSpec, cycle_ms: Sequence[float] | None = None) -> list[Record]:
    """The runner's closed loop: each user sends its next request the moment its last one ended,
    numbered in the order sent, until the request budget or the duration runs out. User u's
    requests take `cycle_ms[u]` (the gaps between tokens absorb the difference); by default
    all last `E2E_MS`, so the users finish together, in waves."""
    assert load.concurrency is not None
    cycles = list(cycle_ms or [E2E_MS] * load.concurrency)
    users = [(0.0, u) for u in range(len(cycles))]
    records: list[Record] = []
    while users:
        t_ms, u = heapq.heappop(users)
        n = len(records)
        if (load.requests is not None and n >= load.requests) or (
            load.duration is not None and t_ms >= load.duration * 1000
        ):
            continue
        itl = (cycles[u] - TTFT_MS) / (TOKENS - 1)
        records.append(request(n, load, t_ms, itl_ms=itl))
        heapq.heappush(users, (t_ms + cycles[u], u))
    return records


def open_loop(load: LoadSpec, offsets_ms: Sequence[float]) -> list[Record]:
    """Request n at `offsets_ms[n]`, each on its own (an unbounded server: no queue)."""
    assert load.duration is not None
    return [request(n, load, t) for n, t in enumerate(offsets_ms) if t < load.duration * 1000]


def replay(records: Sequence[Record], load: LoadSpec, **kw: object) -> Summary:
    """The summary of a records file without a footer: window derived from records and load."""
    return summarize(records, load=load, **kw)  # type: ignore[arg-type]


def window_s(s: Summary) -> tuple[float, float]:
    assert s.window is not None
    return (s.window.start_ns - START) / S, (s.window.end_ns - START) / S


# ---------------------------------------------------------------------------------------------
# Closed loop


def test_closed_loop_with_warm_up_counts_what_the_window_held() -> None:
    # 8 users, 1 s per request: the server finishes 8 requests and 768 tokens a second. The
    # first measured requests go out only when the warm-up ones end, so a window that counted
    # measured requests alone would start with the server's output unseen (the issue: 5% low on
    # the default demo, here 14%).
    load = LoadSpec(concurrency=8, duration=4.5, warmup=1.5)
    records = closed_loop(load)
    s = replay(records, load)
    assert window_s(s) == (1.5, 4.5)  # start + warm-up to start + duration
    assert s.rates.requests_per_s == pytest.approx(8.0, rel=1e-12)
    assert s.rates.output_tokens_per_s == pytest.approx(8 * TOKENS, rel=1e-12)
    measured = [r for r in records if r.phase == "measure"]
    assert len(measured) == 24  # sent at 2, 3 and 4 s
    old = len(measured) / ((max(r.t_end or 0 for r in measured) - START) / S - 1.5)
    assert old == pytest.approx(8 * 0.857, rel=1e-3)  # what latbench used to report


@pytest.mark.parametrize("warmup", [1.0, 1.1, 1.25, 1.5, 1.9])
def test_a_window_that_cuts_through_waves_is_not_quantised(warmup: float) -> None:
    # 2.5 requests' time long: a count of whole completions would read 2 or 3 waves of 8
    # (+-20%). Each request counts for the share of its output inside, so only the 50 ms TTFT
    # at an edge, when no token arrives, moves the figure (at most 5% of one request a user).
    load = LoadSpec(concurrency=8, duration=warmup + 2.5, warmup=warmup)
    s = replay(closed_loop(load), load)
    assert s.rates.requests_per_s == pytest.approx(8.0, rel=0.05 / 2.5)
    assert s.rates.output_tokens_per_s == pytest.approx(8 * TOKENS, rel=0.05 / 2.5)


def test_users_of_different_speeds_add_up() -> None:
    cycles = [1000.0, 1300.0, 1700.0, 2300.0]
    load = LoadSpec(concurrency=4, duration=42.0, warmup=2.0)
    s = replay(closed_loop(load, cycles), load)
    steady = sum(1000 / c for c in cycles)
    # Over 40 s, each user's edges move its count by at most its TTFT's share of a request.
    assert s.rates.requests_per_s == pytest.approx(steady, rel=0.01)
    assert s.rates.output_tokens_per_s == pytest.approx(steady * TOKENS, rel=0.01)


def test_a_run_bounded_by_a_request_count_is_rated_over_its_makespan() -> None:
    # 10 requests by 4 users: 4, 4 and 2 sent at 0, 1 and 2 s, the last done at 3 s. No steady
    # state to find: the rate is the run's own, as `vllm bench serve` gives it.
    load = LoadSpec(concurrency=4, requests=10)
    s = replay(closed_loop(load), load)
    assert s.window is not None
    assert (s.window.start_ns, s.window.end_ns) == (START, START + 3 * S + 1)
    assert s.rates.requests_per_s == pytest.approx(10 / s.window.duration_s, rel=1e-12)
    assert s.rates.output_tokens_per_s == pytest.approx(960 / s.window.duration_s, rel=1e-12)


def test_warm_up_and_cool_down_in_requests_bound_the_window_at_their_sends() -> None:
    # 16 requests by 4 users: 0-3 warm up (sent at 0 s), 12-15 cool down (sent at 3 s).
    load = LoadSpec(concurrency=4, requests=16, warmup_requests=4, cooldown_requests=4)
    s = replay(closed_loop(load), load)
    assert window_s(s) == (1.0, 3.0)
    assert s.requests.measured == 8
    assert s.rates.requests_per_s == pytest.approx(4.0, rel=1e-12)


def test_a_cool_down_in_seconds_ends_the_window_before_the_duration() -> None:
    load = LoadSpec(concurrency=8, duration=6.0, warmup=1.0, cooldown=2.0)
    s = replay(closed_loop(load), load)
    assert window_s(s) == (1.0, 4.0)
    assert s.rates.requests_per_s == pytest.approx(8.0, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Open loop


def test_open_loop_at_a_constant_rate_reads_the_rate() -> None:
    # 10 requests a second, each streaming for 1 s: 10 in flight, 960 tokens a second. Those
    # sent in the last second of the duration end after it: their output inside still counts.
    load = LoadSpec(mode="constant", rate=10, duration=10.0, warmup=2.0)
    s = replay(open_loop(load, [100.0 * n for n in range(200)]), load)
    assert window_s(s) == (2.0, 10.0)
    assert s.rates.requests_per_s == pytest.approx(10.0, rel=1e-12)
    assert s.rates.output_tokens_per_s == pytest.approx(960.0, rel=1e-12)


def test_open_loop_poisson_arrivals_average_to_the_rate() -> None:
    # Unbiased: over independent schedules, the mean of the rates is the offered rate.
    load = LoadSpec(mode="poisson", rate=20, duration=32.0, warmup=2.0)
    rates, tokens = [], []
    for seed in range(8):
        pacer = PoissonPacer(20, seed=seed)
        s = replay(open_loop(load, [pacer.offset_ns(n) / MS for n in range(1000)]), load)
        assert s.rates.requests_per_s is not None and s.rates.output_tokens_per_s is not None
        rates.append(s.rates.requests_per_s)
        tokens.append(s.rates.output_tokens_per_s)
    # 8 x 600 arrivals: the mean's own spread is about 1.5%.
    assert sum(rates) / len(rates) == pytest.approx(20.0, rel=0.05)
    assert sum(tokens) / len(tokens) == pytest.approx(20.0 * TOKENS, rel=0.05)


# ---------------------------------------------------------------------------------------------
# What counts


def rec(
    seq: int,
    events_ms: Sequence[float],
    *,
    phase: str = "measure",
    sent_ms: float = 0,
    usage: int | None = None,
    ev_n: Sequence[int] | None = None,
    error: ErrorKind | None = None,
) -> Record:
    ev = tuple(round(t * MS) for t in events_ms)
    sent = round(sent_ms * MS)
    return Record(
        run_id="rates", seq=seq, phase=phase, api="chat", t_intended=sent, t_sent=sent,  # type: ignore[arg-type]
        t_end=ev[-1] if ev else sent, ev_t=ev, ev_kind="c" * len(ev),
        ev_n=None if ev_n is None else tuple(ev_n), usage_completion_tokens=usage, error=error,
    )  # fmt: skip


def test_a_request_cut_by_an_edge_counts_for_its_output_inside() -> None:
    # Ten events at 100..1000 ms, the window [0, 550 ms): five of them.
    s = summarize([rec(0, [100.0 * i for i in range(1, 11)])], window=(0, 550 * MS))
    assert s.rates.requests_in_window == 0.5
    assert s.rates.output_tokens_in_window == 5.0
    # The server's usage says 20 tokens for those ten events: half of them arrived inside.
    s = summarize([rec(0, [100.0 * i for i in range(1, 11)], usage=20)], window=(0, 550 * MS))
    assert (s.rates.requests_in_window, s.rates.output_tokens_in_window) == (0.5, 10.0)
    # Per-event counts weigh the events: 1+1+1+1+6 of 14 inside.
    counts = [1, 1, 1, 1, 6, 1, 1, 1, 1, 0]
    s = summarize([rec(0, [100.0 * i for i in range(1, 11)], ev_n=counts)], window=(0, 550 * MS))
    assert s.rates.output_tokens_in_window == 10.0
    assert s.rates.requests_in_window == pytest.approx(10 / 14)


def test_warm_up_output_inside_the_window_counts_and_failed_output_never() -> None:
    warm = rec(0, [100, 200, 300, 400], phase="warmup")  # two of four events inside
    measured = rec(1, [300, 400])
    failed = rec(2, [300, 400], error=ErrorKind.CONNECTION_RESET)
    s = summarize([warm, measured, failed], window=(250 * MS, 1000 * MS), slos=())
    assert s.rates.requests_in_window == 1.5
    assert s.rates.output_tokens_in_window == 4.0
    assert s.rates.requests_per_s == pytest.approx(1.5 / 0.75)
    assert s.requests.measured == 2 and s.rates.good == 1  # the counts stay the measured ones


def test_goodput_counts_the_share_of_requests_that_met_every_slo() -> None:
    slow_warm = rec(0, [300, 400], phase="warmup")  # TTFT 300 ms: missed the SLO
    fast_warm = rec(1, [50, 150, 250, 350], phase="warmup")  # half inside, met it
    fast = rec(2, [250, 350], sent_ms=200)
    s = summarize(
        [slow_warm, fast_warm, fast], window=(200 * MS, 1200 * MS), slos=(Slo("ttft", 99, 0.1),)
    )
    assert s.rates.goodput_per_s == pytest.approx(1.5)
    assert s.rates.requests_per_s == pytest.approx(2.5)
    assert s.rates.goodput_fraction == 1.0  # of the measured request


def test_a_request_without_token_events_counts_at_its_end() -> None:
    r = Record(
        run_id="rates", seq=0, phase="measure", api="chat", t_intended=0, t_sent=0,
        t_end=300 * MS, usage_completion_tokens=7,
    )  # fmt: skip
    inside = summarize([r], window=(0, 400 * MS))
    outside = summarize([r], window=(0, 200 * MS))
    assert (inside.rates.requests_in_window, inside.rates.output_tokens_in_window) == (1.0, 7.0)
    assert (outside.rates.requests_in_window, outside.rates.output_tokens_in_window) == (0, 0)


def test_the_derived_window_needs_a_measured_request() -> None:
    load = LoadSpec(concurrency=1, duration=5.0, warmup=1.0)
    assert derived_window([rec(0, [50], phase="warmup")], load) is None
    assert derived_window([], load) is None


def test_compare_estimates_the_rates_the_summary_gives() -> None:
    # One file, one answer: `latbench compare` reads a run's rates as its summary does. (It
    # counted the 16 measured requests here: 6.4/s for a steady 8.)
    load = LoadSpec(concurrency=8, duration=3.75, warmup=1.25)
    records = closed_loop(load)
    window = derived_window(records, load)
    s = summarize(records, window=window)
    run = RunSamples(records, window, DEFAULT_SLOS)
    for name in ("requests_per_s", "output_tokens_per_s", "goodput_per_s"):
        assert run.estimate(name, "") == pytest.approx(getattr(s.rates, name), rel=1e-12)


def test_compare_estimates_the_rates_the_summary_gives_without_a_footer() -> None:
    # A killed run's file: both derive the window from the records and the spec's load (it
    # opens at start + warm-up). Derived from the phases alone, compare's opened at the first
    # measured send, after the warm-up requests ended: 8.042/s against the summary's 8.067.
    load = LoadSpec(concurrency=8, duration=3.75, warmup=1.25)
    spec = RunSpec(load=load)
    f = RecordsFile(header=None, records=closed_loop(load), footer=None)
    s = summarize_file(f, spec)
    assert s.window is not None and s.window.derived
    assert s.rates.requests_per_s == pytest.approx(8.0, rel=0.05)
    run = RunSamples.of_file(f, spec)
    for name in ("requests_per_s", "output_tokens_per_s", "goodput_per_s"):
        assert run.estimate(name, "") == pytest.approx(getattr(s.rates, name), rel=1e-12)
