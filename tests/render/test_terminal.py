"""The terminal report shows the summary's figures, its verdicts and a loud client-bound banner."""

from __future__ import annotations

import re

from rich.console import Console

from latbench import ErrorKind
from latbench.records import Record
from latbench.render.terminal import render_summary
from latbench.spec import Slo
from latbench.summary import ClientStats, Summary, summarize

MS = 1_000_000


def rec(seq: int, events_ms: list[int], **kw: object) -> Record:
    return Record(
        run_id="t",
        seq=seq,
        phase="measure",
        api="chat",
        t_intended=0,
        t_sent=0,
        t_end=(events_ms[-1] + 1) * MS if events_ms else MS,
        ev_t=tuple(x * MS for x in events_ms),
        ev_kind="c" * len(events_ms),
        **kw,  # type: ignore[arg-type]
    )


def client(**kw: object) -> ClientStats:
    d: dict[str, object] = {
        "loop_lag_ns": [50_000] * 100,
        "cpu_s": 2.0,
        "wall_s": 10.0,
        "open_loop": True,
        "unsent": 0,
    }
    d.update(kw)
    return ClientStats(**d)  # type: ignore[arg-type]


def run_summary(c: ClientStats | None) -> Summary:
    # TTFT 50 ms and 150 ms, ITL 10 ms; one HTTP 503.
    records = [
        rec(0, [50, 60, 70], usage_completion_tokens=3, max_tokens=3, usage_prompt_tokens=40),
        rec(1, [150, 160, 170], usage_completion_tokens=3, max_tokens=3, usage_prompt_tokens=40),
        rec(2, [], error=ErrorKind.HTTP_STATUS, status=503),
    ]
    return summarize(records, window=(0, 2_000 * MS), percentiles=(50, 99), client=c)


def render(summary: Summary, width: int = 120, **console_kw: object) -> str:
    console = Console(record=True, width=width, **console_kw)  # type: ignore[arg-type]
    render_summary(summary, console)
    return console.export_text(styles=bool(console_kw))


def row(text: str, label: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.strip().startswith(label + " "))
    return re.split(r"\s{2,}", line.strip())


def test_latency_table_shows_the_figures_in_ms() -> None:
    text = render(run_summary(client()))
    assert row(text, "TTFT") == ["TTFT", "ms", "2", "100.0", "100.0", "149.0", "150.0"]
    assert row(text, "ITL") == ["ITL", "ms", "4", "10.00", "10.00", "10.00", "10.00"]
    assert row(text, "TPOT") == ["TPOT", "ms", "2", "10.00", "10.00", "10.00", "10.00"]
    assert row(text, "E2E") == ["E2E", "ms", "2", "120.0", "120.0", "169.0", "170.0"]


def test_throughput_tokens_and_errors() -> None:
    text = render(run_summary(client()))
    assert "requests/s" in text and " 1.00 " in text  # 2 succeeded over 2 s
    assert "output tokens/s" in text and "3.00" in text
    assert "6 (counted from the server's usage in 2 requests)" in text
    assert "80 (the server's usage in 2 requests)" in text
    assert "2 requests set max_tokens: 2 got exactly that many, 0 fewer, 0 more" in text
    assert row(text, "http_status") == ["http_status", "1"]
    assert row(text, "HTTP 503") == ["HTTP 503", "1"]


def test_slo_verdicts_with_attainment() -> None:
    text = render(run_summary(client()))
    assert "SLO  FAIL  ttft:p99<=100ms  p99 = 149.0 ms, attainment 50.00% of 2 samples" in text
    assert "SLO  PASS  itl:p99<=100ms  p99 = 10.00 ms, attainment 100.00% of 4 samples" in text


def test_an_slo_without_samples_says_so() -> None:
    s = summarize([rec(0, [50])], slos=(Slo("tpot", 99, 0.1),))
    assert "SLO  n/a   tpot:p99<=100ms  no samples" in render(s)


def test_client_bound_banner_names_the_reasons() -> None:
    s = run_summary(client(loop_lag_ns=[50_000] * 90 + [4 * MS] * 10, unsent=7))
    text = render(s)
    assert "CLIENT-BOUND" in text
    # No record carried an error bound: the verdict says it judged by proxies.
    assert "client-bound by proxies (2 requests carried no error bound)" in text
    assert "event-loop lag p99 is 4.00 ms, above the 1.00 ms limit" in text
    assert "7 scheduled requests were never sent" in text


def test_a_client_that_kept_up_has_no_banner() -> None:
    text = render(run_summary(client()))
    assert "CLIENT-BOUND" not in text
    assert "client kept up" in text
    assert "20% of one core" in text


def test_unknown_validity_is_stated() -> None:
    text = render(run_summary(None))
    assert "validity: unknown" in text
    assert "CLIENT-BOUND" not in text


def test_cells_are_red_over_the_threshold_and_green_under_it() -> None:
    text = render(run_summary(client()), force_terminal=True, color_system="standard")
    red, green = "\x1b[31m", "\x1b[32m"
    ttft_line = next(x for x in text.splitlines() if "TTFT " in x and "sched." not in x)
    assert re.search(re.escape(red) + r"\s*149\.0\b", ttft_line)  # p99 over 100 ms
    assert re.search(re.escape(green) + r"\s*100\.0\b", ttft_line)  # p50 exactly at 100 ms
    itl_line = next(x for x in text.splitlines() if "ITL " in x)
    assert re.search(re.escape(green) + r"\s*10\.00", itl_line)
    assert red not in itl_line
    # E2E has no SLO and no default target: no colour either way.
    e2e_line = next(x for x in text.splitlines() if "E2E " in x and "sched." not in x)
    assert red not in e2e_line and green not in e2e_line


def test_a_row_that_reaches_a_second_reads_in_seconds() -> None:
    # TTFT 0.9 s and 1.5 s: the whole row in seconds, millisecond resolution kept; ITL (10 ms)
    # stays in ms.
    records = [rec(0, [900, 910]), rec(1, [1_500, 1_510])]
    text = render(summarize(records, window=(0, 2_000 * MS), percentiles=(50,)))
    assert row(text, "TTFT") == ["TTFT", "s", "2", "1.200", "1.200", "1.500"]
    assert row(text, "ITL") == ["ITL", "ms", "2", "10.00", "10.00", "10.00"]


def test_where_token_counts_came_from_is_said_in_words() -> None:
    records = [
        rec(0, [50, 60], usage_completion_tokens=3),  # usage, and it disagrees with 2 events
        rec(1, [50, 60], ev_n=(2, 2)),  # the events' own counts
        rec(2, [50, 60]),  # nothing: one token per event
    ]
    text = render(summarize(records, window=(0, 2_000 * MS)))
    assert (
        "9 (counted from the server's usage in 1 request; the tokens each event reported in "
        "1 request; one token per event in 1 request)" in " ".join(text.split())
    )
    assert "the server's usage vs one token per event: 1 request" in " ".join(text.split())
    for field in ("N_out", "ev_n", "usage_vs", "events 1"):
        assert field not in text


def test_a_narrow_console_gets_a_second_table_not_cut_cells() -> None:
    records = [rec(i, [1_234 + i, 1_244 + i, 1_254 + i]) for i in range(20)]
    s = summarize(records, window=(0, 2_000 * MS), percentiles=(50, 90, 95, 99, 99.9))
    for width in (40, 60, 80, 100):
        text = render(s, width=width)
        assert "…" not in text
        assert max(len(line.rstrip()) for line in text.splitlines()) <= width
        for header in ("mean", "p50", "p90", "p95", "p99", "p99.9", "max"):
            assert f" {header} " in text + " ", (width, header)
        # Each table repeats the metric and its unit, so every row reads on its own.
        ttft = [x.split()[:2] for x in text.splitlines() if re.match(r" TTFT +s ", x)]
        assert len(ttft) >= (2 if width < 80 else 1), text
