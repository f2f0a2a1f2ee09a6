"""The sections of the HTML reports, each a function from summaries to an HTML fragment: a
run's latency and throughput tables, SLO badges, validity, errors, spec, the client-vs-server
reconciliation, a sweep's capacity and steps, a comparison's table. Figures are computed upstream
(`latbench.summary`, `latbench.sweep`); charts come from `charts.py`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import orjson

from latbench.render import charts
from latbench.render.page import Page, esc, table
from latbench.render.readback import Run, Sweep
from latbench.render.reconciliation import prefix_cache_line, ttft_split_line
from latbench.render.spans import HEADERS as SPAN_HEADERS
from latbench.render.spans import (
    bound_line,
    count_notes,
    skew_line,
    split_line,
    table_rows,
    title,
)
from latbench.render.text import (
    AGENT_HEADERS,
    STEP_COLUMNS,
    TURN_HEADERS,
    agent_rows,
    failed_words,
    spread_text,
    stair_headers,
    stairs_rows,
    tool_calls_line,
    turns_rows,
    validity_rows,
)
from latbench.shared.units import ms_interval, ms_short, num
from latbench.spec.slo import METRICS
from latbench.summary.compare import Row
from latbench.summary.server_metrics import Reconciliation
from latbench.summary.spans import SpanJoin
from latbench.summary.summary import Summary, pct_key
from latbench.sweep import Capacity

CDF_METRICS: tuple[str, ...] = ("ttft", "ttfo", "itl", "tpot", "e2e")


def _cls(value: float | None, threshold: float | None) -> str:
    if value is None or threshold is None:
        return esc(ms_short(value))
    c = "pass" if value <= threshold else "fail"
    return f'<span class="{c}">{esc(ms_short(value))}</span>'


def latency_table(run: Run) -> str:
    s = run.summary
    headers = ["metric (ms)", "n", "mean", *map(pct_key, s.percentiles), "max"]
    rows = []
    for metric in METRICS:
        st = s.latency[metric]
        thr = (
            charts.threshold_for(run, metric)
            if metric in ("ttft", "ttfo", "itl", "itl_per_token", "tpot", "ttft_from_schedule")
            else None
        )
        rows.append(
            [
                esc(charts.LABELS[metric]),
                f"{st.count:,}",
                _cls(st.mean, thr),
                *(_cls(st.p(p), thr) for p in s.percentiles),
                _cls(st.max, thr),
            ]
        )
    return table(headers, rows, raw=True)


def throughput_table(s: Summary) -> str:
    r, req = s.rates, s.requests
    rows = [
        ["requests/s", num(r.requests_per_s)],
        ["output tokens/s", num(r.output_tokens_per_s)],
        [
            "goodput (met every SLO)",
            f"{num(r.goodput_per_s)} req/s ({num(r.goodput_fraction, '.1%')} of measured)",
        ],
        ["measured requests", f"{req.measured:,} ({req.succeeded:,} ok, {failed_words(s)})"],
        ["left out", f"{req.warmup:,} warm-up, {req.cooldown:,} cool-down"],
        ["window", "–" if s.window is None else f"{s.window.duration_s:,.3f} s"],
        ["output tokens", f"{s.tokens.output_total:,}"],
        ["prompt tokens asked vs got", s.tokens.prompt.describe()],
    ]
    if s.images is not None:
        rows.append(["images", s.images.describe()])
    if (tools := tool_calls_line(s)) is not None:
        rows.append(["tool calls", tools])
    return table(["figure", "value"], rows)


def slo_badges(s: Summary) -> str:
    out = []
    for r in s.slos:
        if r.passed is None:
            out.append(f'<span class="badge b-info">{esc(r.slo)}: no samples</span>')
        else:
            cls = "b-pass" if r.passed else "b-fail"
            word = "PASS" if r.passed else "FAIL"
            out.append(
                f'<span class="badge {cls}">{esc(r.slo)} {word} ({ms_short(r.value_s)} ms)</span>'
            )
    if s.validity.known:
        if s.client_bound:
            out.append('<span class="badge b-fail">CLIENT-BOUND</span>')
        else:
            word = "client kept up" if s.validity.proxy else "within tolerance"
            out.append(f'<span class="badge b-pass">{word}</span>')
    else:
        out.append('<span class="badge b-warn">validity unknown</span>')
    return "<div>" + "".join(out) + "</div>"


def validity_html(s: Summary) -> str:
    v = s.validity
    if not v.known:
        return f"<p class=warn>{esc(v.verdict_line())}.</p>"
    out = table(["figure", "value", "limit"], validity_rows(v))
    if v.client_bound:
        reasons = "".join(f"<li>{esc(x)}</li>" for x in v.reasons)
        out += f'<div class="banner"><b>{esc(v.verdict_line())}</b>.<ul>{reasons}</ul></div>'
    else:
        out += f'<p class="pass">{esc(v.verdict_line())}.</p>'
    if v.agents:
        out += "<p>Per agent (ms; error bounds and lags at p99), each on its own records:</p>"
        out += table(list(AGENT_HEADERS), agent_rows(v))
    if v.notes:
        out += '<ul class="warn">' + "".join(f"<li>{esc(n)}</li>" for n in v.notes) + "</ul>"
    return out


def errors_html(page: Page, runs: Sequence[tuple[str, Run]]) -> str:
    failed = [(label, run) for label, run in runs if run.summary.requests.failed]
    if not failed:
        return "<p class=pass>No measured request failed.</p>"
    rows = []
    for label, run in failed:
        req = run.summary.requests
        for kind, count in req.errors_by_kind.items():
            rows.append([label, kind, f"{count:,}", f"{count / max(req.measured, 1):.2%}"])
        for status, count in req.errors_by_status.items():
            rows.append([label, f"  HTTP {status}", f"{count:,}", ""])
    return table(["run", "kind", "count", "of measured"], rows) + page.chart(
        charts.errors_figure(failed), "errors"
    )


def spec_html(run: Run) -> str:
    spec = orjson.dumps(run.public_spec, option=orjson.OPT_INDENT_2).decode()
    env = orjson.dumps(run.environment, option=orjson.OPT_INDENT_2).decode()
    return (
        f"<h3>spec ({esc(run.run_id)})</h3><pre>{esc(spec)}</pre>"
        f"<h3>environment</h3><pre>{esc(env)}</pre>"
    )


def cdf_grid(page: Page, runs: Sequence[tuple[str, Run]]) -> str:
    return (
        '<div class="grid">'
        + "".join(page.chart(charts.cdf_figure(runs, m), f"cdf-{m}") for m in CDF_METRICS)
        + "</div>"
    )


def _bucket(b: tuple[float, float] | None) -> str:
    return (
        "–" if b is None else f"({ms_short(b[0])}, {'∞' if math.isinf(b[1]) else ms_short(b[1])}]"
    )


def spans_html(page: Page, j: SpanJoin) -> str:
    """Each request beside the server's own span of it (summary/spans.py; docs/metrics.md,
    "Per-request split (server spans)"): the figures, the split, the counts, and two charts."""
    parts = [f"<p>{esc(title(j))}.</p>", table(list(SPAN_HEADERS), table_rows(j))]
    lines = (split_line(j), bound_line(j), skew_line(j))
    parts += [f"<p>{esc(line)}.</p>" for line in lines if line]
    for severity, text in count_notes(j):
        cls = "note" if severity == "info" else "warn"
        parts.append(f'<p class="{cls}">{esc(text)}.</p>')
    parts.append(page.chart(charts.span_scatter_figure(j), "span-scatter"))
    parts.append(page.chart(charts.span_parts_figure(j), "span-parts"))
    return "".join(parts)


def reconciliation_html(r: Reconciliation) -> str:
    """The server's own metrics beside the client's (docs/vllm.md says how to read them)."""
    head = (
        f"<p>{esc(r.server)}'s own metrics ({esc(r.url)}): the client completed "
        f"{r.client_requests} requests, the server counted {r.server_requests:g}. Means are "
        "exact (both sides keep sums); the server knows a percentile only as the bucket that "
        "holds it.</p>"
    )
    rows = []
    for metric, p in r.pairs.items():
        rows.append([
            metric.upper(),
            ms_short(p.client.mean_s),
            ms_short(p.server.mean_s),
            ms_short(p.mean_overhead_s),
            ms_short(p.client.quantiles_s.get("p50")),
            _bucket(p.server.buckets_s.get("p50")),
            ms_short(p.client.quantiles_s.get("p99")),
            _bucket(p.server.buckets_s.get("p99")),
        ])  # fmt: skip
    headers = ["metric (ms)", "client mean", "server mean", "outside server (mean)",
               "client p50", "server p50 in", "client p99", "server p99 in"]  # fmt: skip
    parts = [head, table(headers, rows)]
    if (line := ttft_split_line(r)) is not None:
        parts.append(f"<p>{esc(line)}.</p>")
    if (line := prefix_cache_line(r)) is not None:
        parts.append(f"<p>{esc(line)}.</p>")
    tokens = [
        [name, num(t["client"], ",.0f"), num(t["server"], ",.0f")] for name, t in r.tokens.items()
    ]
    parts.append(table(["tokens", "client (usage)", "server"], tokens))
    parts.extend(f'<p class="note">{esc(n)}</p>' for n in r.notes)
    return "".join(parts)


def capacity_html(cap: Capacity | None) -> str:
    if cap is None:
        return "<p>This sweep did not search for a capacity (a list or automatic sweep).</p>"
    cls = "pass" if cap.value is not None and cap.confidence == "high" else "warn"
    out = f'<p class="{cls}" style="font-size:16px">{esc(cap.headline())}</p>'
    if cap.evidence:
        rows = []
        for e in cap.evidence:
            rows.append([e.slo, ms_interval(e.passing, ms_short), ms_interval(e.failing, ms_short)])
        passing = (
            "passing step"
            if cap.passing_index is None
            else (f"passing step {cap.passing_index + 1}")
        )
        failing = (
            "failing step"
            if cap.failing_index is None
            else (f"failing step {cap.failing_index + 1}")
        )
        out += "<h3>evidence: each SLO's percentile with its 95 % interval</h3>" + table(
            ["SLO", passing, failing], rows
        )
    if cap.notes:
        out += "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in cap.notes) + "</ul>"
    return out


def steps_table(sweep: Sweep) -> str:
    rows = []
    for s in sweep.steps:
        sm = s.summary
        lat = sm.latency
        rows.append(
            [
                f"{s.index + 1}",
                esc(s.role),
                esc(s.label()),
                f'<span class="{s.verdict.outcome.replace("-bound", "")}">'
                f"{esc(s.verdict.outcome)}</span>",
                num(sm.rates.requests_per_s),
                num(sm.rates.output_tokens_per_s, ",.0f"),
                ms_short(lat["ttft"].p(99.0)) if 99.0 in sm.percentiles else "–",
                ms_short(lat["itl"].p(99.0)) if 99.0 in sm.percentiles else "–",
                ms_short(lat["tpot"].p(99.0)) if 99.0 in sm.percentiles else "–",
                f"{sm.requests.failed:,}",
                esc("; ".join(s.verdict.reasons)),
            ]
        )
    return table(
        [*STEP_COLUMNS, "why"],
        rows,
        raw=True,
    )


def compare_table(rows: Sequence[Row], spread: bool = False) -> str:
    """`spread`: a column for the run-to-run spread (several runs on a side)."""
    out = []
    for r in rows:
        is_rate = not r.stat

        def val(x: float | None, is_rate: bool = is_rate) -> str:
            return num(x) if is_rate else ms_short(x)

        ci = "–" if r.ci is None else f"[{r.ci[0]:+.1%}, {r.ci[1]:+.1%}]"
        cells = [
            esc(r.label + ("" if is_rate else " (ms)")),
            val(r.a),
            val(r.b),
            "–" if r.change is None else f"{r.change:+.1%}",
            ci,
            f'<span class="{r.verdict}">{r.verdict}</span>',
        ]
        out.append([*cells, *([esc(spread_text(r))] if spread else []), esc(r.note)])
    headers = ["metric", "A", "B", "change", "95 % interval", "verdict"]
    return table([*headers, *(["spread"] if spread else []), "note"], out, raw=True)


def oversaturation_html(s: Summary) -> str:
    """The verdict that stopped an over-saturated run, with its evidence; empty when none did."""
    v = s.oversaturation
    if v is None:
        return ""
    head = f"<b>{esc(v.HEADLINE)}</b>: {esc(v.MEANING)}"
    return f'<div class="banner">{head}{table(["evidence", "value"], v.evidence())}</div>'


def turns_html(s: Summary) -> str:
    """A multi-turn run's sessions and TTFT by turn index, or nothing for any other run."""
    rows = turns_rows(s)
    if rows is None or s.sessions is None:
        return ""
    return f"<p>{esc(s.sessions.describe())}</p>" + table(list(TURN_HEADERS), rows)


def stairs_html(s: Summary) -> str:
    """A `steps` run's stairs (summary.stairs), or nothing for any other run."""
    rows = stairs_rows(s)
    return "" if rows is None else table(list(stair_headers(s)), rows)
