"""What a person reads about the measurement's validity: the error bound and its tolerance, the
verdict stated as a bound (never "these latencies are not the server's"), send lag in closed loop
too, loop lag and CPU marked as diagnostics or, without a bound, as proxies. The terminal and the
HTML report share one table (render.text.validity_rows)."""

from __future__ import annotations

from rich.console import Console

from latbench.records import Record
from latbench.render.sections import slo_badges, validity_html
from latbench.render.terminal import render_summary
from latbench.render.text import bound_p99, validity_rows
from latbench.shared.errors import ErrorKind
from latbench.summary import ClientStats, Summary, summarize

MS = 1_000_000


def rec(seq: int, first_late_ns: int = 0, bounded: bool = True) -> Record:
    ev = (50 * MS, 60 * MS, 70 * MS)
    return Record(
        run_id="t",
        seq=seq,
        phase="measure",
        api="chat",
        t_intended=0,
        t_sent=1 * MS,
        t_end=71 * MS,
        ev_t=ev,
        ev_kind="ccc",
        sent_late=0 if bounded else None,
        ev_late=(first_late_ns, 0, 0) if bounded else None,
    )


def client(open_loop: bool = False) -> ClientStats:
    return ClientStats(
        loop_lag_ns=[3 * MS] * 100, cpu_s=1.0, wall_s=10.0, open_loop=open_loop, unsent=0
    )


def summary(first_late_ns: int = 0, bounded: bool = True, open_loop: bool = False) -> Summary:
    records = [rec(i, first_late_ns, bounded) for i in range(20)]
    return summarize(records, client=client(open_loop))


def text(s: Summary) -> str:
    console = Console(record=True, width=100)
    render_summary(s, console)
    return console.export_text()


def test_within_tolerance_the_table_shows_the_bounds_and_the_diagnostics() -> None:
    rows = {r[0]: r[1:] for r in validity_rows(summary().validity)}
    assert rows["TTFT error bound"] == ["p50 0.00 ms, p99 0.00 ms", "p99 ≤ 5.00 ms"]
    assert rows["ITL error bound"] == ["p50 0.00 ms, p99 0.00 ms", "p99 ≤ 1.00 ms"]
    # Send lag shown in closed loop too, as a diagnostic; loop lag over the old 1 ms limit is one.
    assert rows["send lag (queue delay)"] == ["p50 1.00, p99 1.00, max 1.00 ms", "diagnostic"]
    assert rows["event-loop lag"][1] == "diagnostic"
    assert rows["client CPU"] == ["10% of one core", "diagnostic"]
    out = text(summary())
    assert "measured within tolerance: TTFT p99 off by at most 0.00 ms (tolerance 5.00 ms)" in out
    assert "CLIENT-BOUND" not in out
    assert 'class="badge b-pass">within tolerance<' in slo_badges(summary())


def test_over_tolerance_the_banner_states_the_bound() -> None:
    s = summary(first_late_ns=8 * MS)
    out = " ".join(text(s).split())  # the banner wraps
    assert "CLIENT-BOUND" in out
    assert (
        "client-bound: the TTFT error bound, 8.00 ms at p99, exceeds its 5.00 ms tolerance" in out
    )
    assert "TTFT may be overstated by up to 8.00 ms at p99 (tolerance 5.00 ms)" in out
    assert "event-loop lag p99 3.00 ms" in out
    assert "not the server's" not in out
    html = validity_html(s)
    assert "<b>client-bound: the TTFT error bound, 8.00 ms at p99" in html
    assert "TTFT may be overstated by up to 8.00 ms at p99 (tolerance 5.00 ms)" in html
    assert "not the server&#x27;s" not in html and "not the server's" not in html
    assert bound_p99(s.validity, "ttft") == "8.00"


def test_without_a_bound_the_table_says_the_proxies_judge() -> None:
    s = summary(bounded=False)
    rows = {r[0]: r[1:] for r in validity_rows(s.validity)}
    assert rows["error bound"] == ["unknown: 20 requests without one", "judged by proxies"]
    assert rows["event-loop lag"][1] == "p99 ≤ 1.00 ms (proxy)"
    assert rows["client CPU"][1] == "≤ 90% (proxy)"
    out = " ".join(text(s).split())
    assert "client-bound by proxies (20 requests carried no error bound)" in out
    assert bound_p99(s.validity, "ttft") == "–"


def test_without_a_first_token_the_table_says_so_plainly() -> None:
    failed = [
        Record(run_id="t", seq=i, phase="measure", api="chat", t_intended=0, t_sent=0,
               t_end=MS, error=ErrorKind.HTTP_STATUS, status=500, sent_late=0, ev_late=())
        for i in range(3)
    ]  # fmt: skip
    s = summarize(failed, client=client())
    rows = {r[0]: r[1:] for r in validity_rows(s.validity)}
    assert rows["error bound"] == ["unknown: no first token to bound", "judged by proxies"]
    assert "requests without one" not in text(s)


def test_open_loop_send_lag_has_its_limit() -> None:
    rows = {r[0]: r[1:] for r in validity_rows(summary(open_loop=True).validity)}
    assert rows["send lag (queue delay)"][1] == "p99 ≤ 10.00 ms"
    assert rows["unsent requests"] == ["0", "0"]
