"""The self-contained HTML report: one file, Plotly's JavaScript inlined once, no network needed
to open it. Tables are written here from summaries; charts come from `charts.py`."""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import orjson
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from latbench import __version__
from latbench.render import charts
from latbench.render.load import Run, Sweep
from latbench.spec.slo import METRICS
from latbench.summary.compare import Row
from latbench.summary.server import Reconciliation
from latbench.summary.summary import Summary, pct_key
from latbench.sweep.sweep import Capacity

CDF_METRICS: tuple[str, ...] = ("ttft", "ttfo", "itl", "tpot", "e2e")
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
.meta{color:#555}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));
gap:12px}
.chart{background:#fff;border:1px solid #e3e3e3;border-radius:6px;min-height:300px}
table{border-collapse:collapse;background:#fff;margin:6px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e3e3e3;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.pass,.same{color:#1a7f37}.fail,.worse{color:#c62828;font-weight:600}.better{color:#1a7f37;
font-weight:600}.warn{color:#b26a00;font-weight:600}
.badge{display:inline-block;border-radius:4px;padding:2px 8px;margin:2px 6px 2px 0;color:#fff;
font-weight:600}.b-pass{background:#2e7d32}.b-fail{background:#c62828}.b-warn{background:#ef6c00}
.b-info{background:#546e7a}
.banner{background:#c62828;color:#fff;padding:8px 12px;border-radius:6px;margin:8px 0}
pre{background:#fff;border:1px solid #e3e3e3;padding:8px;overflow:auto;max-height:420px}
nav a{margin-right:12px}
"""


class Page:
    """Accumulates sections and charts; `render()` gives the HTML text."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.charts: list[tuple[str, dict[str, Any]]] = []
        self.nav: list[tuple[str, str]] = []

    def section(self, anchor: str, title: str) -> None:
        self.nav.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{esc(title)}</h2>')

    def add(self, raw_html: str) -> None:
        self.parts.append(raw_html)

    def chart(self, fig: go.Figure, name: str) -> str:
        """A chart's placeholder div; the figure is drawn by the script at the end of the page."""
        cid = f"chart-{len(self.charts) + 1}"
        self.charts.append((cid, fig.to_plotly_json()))
        height = fig.layout.height or 360
        return (
            f'<div class="chart" id="{cid}" data-chart="{esc(name)}" '
            f'style="height:{int(height)}px"></div>'
        )

    def render(self) -> str:
        figures = {cid: {"data": fig["data"], "layout": fig["layout"]} for cid, fig in self.charts}
        # `</` never appears inside the script's JSON, so a label cannot end the script early.
        payload = orjson.dumps(figures, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        payload = payload.replace("</", "<\\/")
        nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in self.nav)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><main>"
            f"<h1>{esc(self.title)}</h1>"
            f'<p class="meta">latbench {__version__}, report written '
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p><nav>{nav}</nav>"
            + "\n".join(self.parts)
            + "</main><script>\n"
            f"const FIGURES = {payload};\n"
            f"const CONFIG = {json.dumps(PLOT_CONFIG)};\n"
            "for (const [id, fig] of Object.entries(FIGURES)) {\n"
            "  Plotly.newPlot(id, fig.data, fig.layout, CONFIG);\n"
            "}\n</script></body></html>\n"
        )


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def ms(x: float | None) -> str:
    if x is None:
        return "–"
    v = x * 1e3
    return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.1f}" if abs(v) < 10_000 else f"{v:,.0f}"


def num(x: float | None, fmt: str = ",.2f") -> str:
    return "–" if x is None else format(x, fmt)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """`raw`: cells are already HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else esc(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cls(value: float | None, threshold: float | None) -> str:
    if value is None or threshold is None:
        return esc(ms(value))
    c = "pass" if value <= threshold else "fail"
    return f'<span class="{c}">{esc(ms(value))}</span>'


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
        ["measured requests", f"{req.measured:,} ({req.succeeded:,} ok, {req.failed:,} failed)"],
        ["left out", f"{req.warmup:,} warm-up, {req.cooldown:,} cool-down"],
        ["window", "–" if s.window is None else f"{s.window.duration_s:,.3f} s"],
        ["output tokens", f"{s.tokens.output_total:,}"],
    ]
    return table(["figure", "value"], rows)


def slo_badges(s: Summary) -> str:
    out = []
    for r in s.slos:
        if r.passed is None:
            out.append(f'<span class="badge b-info">{esc(r.slo)}: no samples</span>')
        else:
            cls = "b-pass" if r.passed else "b-fail"
            word = "PASS" if r.passed else "FAIL"
            out.append(f'<span class="badge {cls}">{esc(r.slo)} {word} ({ms(r.value_s)} ms)</span>')
    if s.validity.known:
        if s.client_bound:
            out.append('<span class="badge b-fail">CLIENT-BOUND</span>')
        else:
            out.append('<span class="badge b-pass">client kept up</span>')
    else:
        out.append('<span class="badge b-warn">validity unknown</span>')
    return "<div>" + "".join(out) + "</div>"


def validity_html(s: Summary) -> str:
    v = s.validity
    if not v.known:
        return "<p class=warn>No client statistics were recorded: validity is unknown.</p>"
    loop = "open loop" if v.open_loop else "closed loop, not judged"
    rows = [
        [
            "queue delay",
            f"p50 {ms(v.queue_delay_p50_s)}, p99 {ms(v.queue_delay_p99_s)}, "
            f"max {ms(v.queue_delay_max_s)} ms",
            f"p99 ≤ {ms(v.limits.queue_delay_p99_s)} ms ({loop})",
        ],
        [
            "event-loop lag",
            f"p50 {ms(v.loop_lag_p50_s)}, p99 {ms(v.loop_lag_p99_s)}, "
            f"max {ms(v.loop_lag_max_s)} ms",
            f"p99 ≤ {ms(v.limits.loop_lag_p99_s)} ms",
        ],
        [
            "client CPU",
            "–" if v.client_cpu is None else f"{v.client_cpu:.0%} of one core",
            f"≤ {v.limits.client_cpu:.0%}",
        ],
        ["unsent requests", "–" if v.unsent is None else f"{v.unsent:,}", f"0 ({loop})"],
    ]
    out = table(["figure", "value", "limit"], rows)
    if v.client_bound:
        reasons = "".join(f"<li>{esc(x)}</li>" for x in v.reasons)
        out += (
            '<div class="banner"><b>CLIENT-BOUND</b>: the client, not the server, set the pace; '
            f"these latencies are not the server's.<ul>{reasons}</ul></div>"
        )
    else:
        out += '<p class="pass">The client kept up: no validity limit was exceeded.</p>'
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


def _cdf_grid(page: Page, runs: Sequence[tuple[str, Run]]) -> str:
    return (
        '<div class="grid">'
        + "".join(page.chart(charts.cdf_figure(runs, m), f"cdf-{m}") for m in CDF_METRICS)
        + "</div>"
    )


# --------------------------------------------------------------------------------------------


def run_report(run: Run) -> str:
    page = Page(f"latbench report: run {run.run_id}")
    env, load = run.environment, run.spec.load
    what = (
        f"{env.get('target', '?')} · model {env.get('model', '?')} · api {run.spec.target.api} · "
        + (
            f"{load.mode} {load.rate:g} req/s"
            if load.open_loop and load.rate
            else f"{load.concurrency} users (closed loop)"
        )
    )
    page.add(f'<p class="meta">{esc(what)}</p>' + slo_badges(run.summary))
    page.section("summary", "Summary")
    page.add(latency_table(run) + throughput_table(run.summary))
    page.section("cdf", "Latency distributions (CDF)")
    page.add(_cdf_grid(page, [(run.run_id, run)]))
    page.section("time", "Over the run's time")
    page.add(page.chart(charts.over_time_figure(run), "over-time"))
    page.section("errors", "Errors")
    page.add(errors_html(page, [(run.run_id, run)]))
    if run.reconciliation is not None:
        page.section("server", "Client vs server")
        page.add(reconciliation_html(run.reconciliation))
    page.section("validity", "Validity of the measurement")
    page.add(validity_html(run.summary))
    page.section("spec", "Spec and environment")
    page.add(spec_html(run))
    return page.render()


def _bucket(b: tuple[float, float] | None) -> str:
    return "–" if b is None else f"({ms(b[0])}, {'∞' if math.isinf(b[1]) else ms(b[1])}]"


def reconciliation_html(r: Reconciliation) -> str:
    """The server's own metrics beside the client's (docs/vllm.md says how to read them)."""
    head = (
        f"<p>The server's own metrics ({esc(r.url)}): the client completed "
        f"{r.client_requests} requests, the server counted {r.server_requests:g}. Means are "
        "exact (both sides keep sums); the server knows a percentile only as the bucket that "
        "holds it.</p>"
    )
    rows = []
    for metric, p in r.pairs.items():
        rows.append([
            metric.upper(),
            ms(p.client.mean_s),
            ms(p.server.mean_s),
            ms(p.mean_overhead_s),
            ms(p.client.quantiles_s.get("p50")),
            _bucket(p.server.buckets_s.get("p50")),
            ms(p.client.quantiles_s.get("p99")),
            _bucket(p.server.buckets_s.get("p99")),
        ])  # fmt: skip
    headers = ["metric (ms)", "client mean", "server mean", "outside server (mean)",
               "client p50", "server p50 in", "client p99", "server p99 in"]  # fmt: skip
    parts = [head, table(headers, rows)]
    if (s := r.ttft_split_s) is not None:
        parts.append(
            f"<p>TTFT, mean {ms(s['client_ttft'])} ms = server {ms(s['server_ttft'])} (queue "
            f"{ms(s['queue'])} + prefill {ms(s['prefill'])} + front end and output "
            f"{ms(s['server_other'])}) + outside the server {ms(s['outside_server'])}.</p>"
        )
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

            def tri(t: tuple[float, float, float] | None) -> str:
                return "–" if t is None else f"{ms(t[0])} ms [{ms(t[1])}, {ms(t[2])}]"

            rows.append([e.slo, tri(e.passing), tri(e.failing)])
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
                ms(lat["ttft"].p(99.0)) if 99.0 in sm.percentiles else "–",
                ms(lat["itl"].p(99.0)) if 99.0 in sm.percentiles else "–",
                ms(lat["tpot"].p(99.0)) if 99.0 in sm.percentiles else "–",
                f"{sm.requests.failed:,}",
                esc("; ".join(s.verdict.reasons)),
            ]
        )
    return table(
        [
            "step",
            "role",
            "load",
            "outcome",
            "req/s",
            "output tok/s",
            "p99 TTFT ms",
            "p99 ITL ms",
            "p99 TPOT ms",
            "failed",
            "why",
        ],
        rows,
        raw=True,
    )


def sweep_report(sweep: Sweep) -> str:
    page = Page(f"latbench report: sweep {sweep.sweep_id}")
    runs = sweep.runs
    if runs:
        env = runs[0].environment
        page.add(
            f'<p class="meta">{esc(env.get("target", "?"))} · model {esc(env.get("model", "?"))}'
            f" · {esc(sweep.plan_kind)} sweep over {esc(sweep.variable)} · "
            f"{len(sweep.steps)} steps · ended {esc(sweep.doc.get('ended', '?'))}</p>"
        )
    for note in sweep.notes:
        page.add(f'<p class="warn">{esc(note)}</p>')
    page.section("capacity", "Capacity under the SLOs")
    page.add(capacity_html(sweep.capacity))
    page.section("curve", "Latency vs throughput")
    page.add(page.chart(charts.sweep_curve_figure(sweep), "sweep-curve"))
    page.section("steps", "Steps")
    page.add(steps_table(sweep))
    labelled = [(f"{s.index + 1}: {s.label()}", r) for s, r in zip(sweep.steps, runs, strict=True)]
    page.section("cdf", "Latency distributions per step (CDF)")
    page.add(_cdf_grid(page, labelled))
    cap = sweep.capacity
    focus = (
        [i for i in (cap.passing_index, cap.failing_index) if cap is not None and i is not None]
        if cap is not None
        else []
    )
    if not focus and runs:
        focus = [sweep.steps[-1].index]
    by_index = {s.index: (s, r) for s, r in zip(sweep.steps, runs, strict=True)}
    page.section("time", "Over time: the steps around the capacity")
    for i in focus:
        if i in by_index:
            s, r = by_index[i]
            page.add(f"<h3>step {s.index + 1}: {esc(s.label())} ({esc(s.verdict.outcome)})</h3>")
            page.add(page.chart(charts.over_time_figure(r), f"over-time-{s.index + 1}"))
    page.section("errors", "Errors")
    page.add(errors_html(page, labelled))
    page.section("validity", "Validity of each step")
    rows = []
    for s in sweep.steps:
        v = s.summary.validity
        rows.append(
            [
                f"{s.index + 1}: {s.label()}",
                "unknown" if not v.known else ("CLIENT-BOUND" if v.client_bound else "kept up"),
                ms(v.loop_lag_p99_s),
                ms(v.queue_delay_p99_s),
                "–" if v.client_cpu is None else f"{v.client_cpu:.0%}",
                "; ".join(v.reasons),
            ]
        )
    page.add(
        table(
            ["step", "verdict", "loop lag p99 ms", "queue delay p99 ms", "client CPU", "why"], rows
        )
    )
    if runs:
        page.section("spec", "Spec and environment (first step)")
        page.add(spec_html(runs[0]))
    return page.render()


def compare_table(rows: Sequence[Row]) -> str:
    out = []
    for r in rows:
        is_rate = not r.stat

        def val(x: float | None, is_rate: bool = is_rate) -> str:
            return num(x) if is_rate else ms(x)

        ci = "–" if r.ci is None else f"[{r.ci[0]:+.1%}, {r.ci[1]:+.1%}]"
        out.append(
            [
                esc(r.label + ("" if is_rate else " (ms)")),
                val(r.a),
                val(r.b),
                "–" if r.change is None else f"{r.change:+.1%}",
                ci,
                f'<span class="{r.verdict}">{r.verdict}</span>',
                esc(r.note),
            ]
        )
    return table(["metric", "A", "B", "change", "95 % interval", "verdict", "note"], out, raw=True)


def compare_report(
    runs: Sequence[tuple[str, Run]], results: Sequence[Sequence[Row]], margin: float
) -> str:
    base_label = runs[0][0]
    page = Page(f"latbench comparison: {' vs '.join(label for label, _ in runs)}")
    page.add(
        f'<p class="meta">baseline A = {esc(base_label)}; each other run is B. Bootstrap over '
        f"requests, 95 % intervals; changes within ±{margin:.0%} are 'same'.</p>"
    )
    for label, run in runs:
        page.add(f"<div><b>{esc(label)}</b> {slo_badges(run.summary)}</div>")
    for (label, _), rows in zip(runs[1:], results, strict=True):
        counts = {v: sum(r.verdict == v for r in rows) for v in ("worse", "better", "same")}
        page.section(f"cmp-{esc(label)}", f"{label} vs {base_label}")
        page.add(
            f"<p><span class=worse>{counts['worse']} worse</span>, "
            f"<span class=better>{counts['better']} better</span>, {counts['same']} same</p>"
        )
        page.add(page.chart(charts.change_figure(rows, label), f"change-{label}"))
        page.add(compare_table(rows))
    page.section("cdf", "Latency distributions side by side (CDF)")
    page.add(_cdf_grid(page, runs))
    page.section("time", "Throughput over time")
    page.add(page.chart(charts.throughput_over_time_figure(runs), "throughput-over-time"))
    page.section("errors", "Errors")
    page.add(errors_html(page, runs))
    page.section("validity", "Validity of each run")
    for label, run in runs:
        page.add(f"<h3>{esc(label)}</h3>" + validity_html(run.summary))
    page.section("spec", "Specs")
    for _, run in runs:
        page.add(f"<details><summary>{esc(run.run_id)}</summary>{spec_html(run)}</details>")
    return page.render()
