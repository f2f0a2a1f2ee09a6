"""The report's charts, as Plotly figures built from records.

Plotly (plotly.py, MIT, maintained by Plotly with frequent releases) was chosen because its
figures are interactive in a plain HTML file with no server: hovering reads the exact latency at
any percentile, zooming opens the tail, clicking a legend entry hides a run. Its JavaScript is
inlined once per report, so the file opens with no network (docs/sweeps.md, "Reports"). Figures
are built here as data; `html.py` places them on the page.

Curves are drawn from exact percentiles of the raw samples at a fixed grid (dense in the tail),
never from a histogram, so a CDF's p99 is the summary's p99.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from latbench.render.readback import Run, Sweep
from latbench.spec.slo import DEFAULT_SLOS
from latbench.summary.compare import Row
from latbench.summary.samples import NS_PER_S, Samples, last_instant
from latbench.summary.spans import SpanJoin
from latbench.sweep import format_value

TEMPLATE = "plotly_white"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
OUTCOME_STYLE = {
    "pass": ("#2ca02c", "circle"),
    "fail": ("#d62728", "x"),
    "client-bound": ("#ff7f0e", "diamond"),
}
LABELS = {
    "ttft": "TTFT",
    "ttfo": "TTFO (time to first output)",
    "itl": "ITL",
    "itl_per_token": "ITL per token",
    "tpot": "TPOT",
    "e2e": "E2E",
    "queue_delay": "queue delay",
    "ttft_from_schedule": "TTFT from schedule",
    "e2e_from_schedule": "E2E from schedule",
}
DEFAULT_TARGET_S = DEFAULT_SLOS[0].threshold_s
# A log axis's padding each side and its shortest span, as factors (see `log_axis`).
PAD = 1.15
MIN_SPAN = 3.0
# Percentiles at which a CDF is drawn: every 0.5 up to 90, then ever finer into the tail.
CDF_GRID = np.unique(
    np.concatenate(
        [
            np.linspace(0, 90, 181),
            np.linspace(90, 99, 91),
            np.linspace(99, 99.9, 46),
            np.linspace(99.9, 100, 11),
        ]
    )
)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01, "font": {"size": 15}},
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 45},
        legend={"orientation": "h", "y": -0.2},
        hovermode="closest",
    )
    return fig


def threshold_for(run: Run, metric: str) -> float:
    """The tightest SLO on `metric`, else the 100 ms target."""
    named = [s.threshold_s for s in run.spec.slos if s.metric == metric]
    return min(named) if named else DEFAULT_TARGET_S


def log_axis(lo_ms: float, hi_ms: float) -> dict[str, Any]:
    """A log axis in ms over [lo_ms, hi_ms]: padded, and its ticks labelled in full ms.

    Plotly labels the ticks between powers of ten on a log axis with their first digit only
    (20, 30, 40 ms read "2, 3, 4"), so the ticks are ours: 1-2-5 steps, or every digit when the
    range is too short for four of those, each labelled with its value ("20", "1,000", "0.5").
    The range is padded by 15 % each side so a curve's ends do not lie on the frame, and opened
    to at least a factor of 3 around its centre, so a distribution concentrated at one value
    (TPOT of a simulator at exactly 10 ms) draws as a vertical line inside the plot, not on its
    left edge, where it was invisible."""
    lo, hi = max(lo_ms, 1e-6), max(hi_ms, lo_ms, 1e-6)
    lo, hi = lo / PAD, hi * PAD
    if hi / lo < MIN_SPAN:
        centre = math.sqrt(lo * hi)
        lo, hi = centre / math.sqrt(MIN_SPAN), centre * math.sqrt(MIN_SPAN)
    ticks: list[tuple[float, str]] = []
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [
            (m * 10.0**k, f"{m * 10.0**k:,.{max(0, -k)}f}")
            for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo <= m * 10.0**k <= hi
        ]
        if len(ticks) >= 4:
            break
    return {
        "type": "log",
        "range": [math.log10(lo), math.log10(hi)],
        "tickvals": [v for v, _ in ticks],
        "ticktext": [t for _, t in ticks],
    }


def cdf_figure(runs: Sequence[tuple[str, Run]], metric: str) -> go.Figure:
    fig = go.Figure()
    threshold = min(threshold_for(run, metric) for _, run in runs)
    lo_ms = hi_ms = threshold * 1e3
    for i, (label, run) in enumerate(runs):
        values = run.samples.metric(metric).values
        if values.size == 0:
            continue
        ms = np.percentile(values, CDF_GRID) * 1e3
        # A log axis cannot show 0 (an ITL between two events of one read), so the axis starts
        # at the smallest positive value, as Plotly's would.
        positive = ms[ms > 0]
        if positive.size:
            lo_ms, hi_ms = min(lo_ms, float(positive[0])), max(hi_ms, float(ms[-1]))
        attained = float(np.count_nonzero(values <= threshold) / values.size)
        fig.add_trace(
            go.Scatter(
                x=ms,
                y=CDF_GRID,
                mode="lines",
                name=f"{label} ({attained:.1%} ≤ {threshold * 1e3:g} ms)",
                line={"color": COLORS[i % len(COLORS)], "width": 2},
                hovertemplate="p%{y:.2f}: %{x:.2f} ms<extra>" + label + "</extra>",
            )
        )
    fig.add_trace(_ref_line([threshold * 1e3] * 2, [0, 100], f"target {threshold * 1e3:g} ms"))
    fig.update_xaxes(title="ms", **log_axis(lo_ms, hi_ms))
    fig.update_yaxes(title="percentile", range=[0, 100.5])
    if not fig.data:
        fig.add_annotation(
            text="no samples", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
    return _layout(fig, f"{LABELS[metric]}: CDF", 340)


def _ref_line(
    x: Sequence[float], y: Sequence[float], name: str, color: str = "#444", dash: str = "dash"
) -> go.Scatter:
    """A reference line as a trace: shapes take log10 coordinates on log axes, traces do not."""
    return go.Scatter(
        x=list(x),
        y=list(y),
        mode="lines",
        name=name,
        line={"color": color, "dash": dash, "width": 1.5},
        hoverinfo="name",
    )


def _bucket_width(span_s: float) -> float:
    """A round bucket width giving about 60 buckets, at least 0.1 s."""
    raw = max(span_s / 60, 0.1)
    exp = 10 ** math.floor(math.log10(raw))
    return next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)


def _per_bucket(t: np.ndarray, v: np.ndarray, edges: np.ndarray, pct: float) -> list[float | None]:
    idx = np.searchsorted(edges, t, side="right") - 1
    out: list[float | None] = []
    for b in range(len(edges) - 1):
        sel = v[idx == b]
        out.append(float(np.percentile(sel, pct)) * 1e3 if sel.size else None)
    return out


def over_time_figure(run: Run) -> go.Figure:
    """Latency and throughput over the run's time, warm-up and cool-down shaded."""
    recs = run.file.records
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(
            "latency per interval (ms)",
            "output tokens/s",
            "requests/s (completed, failed)",
        ),
    )
    if not recs:
        return _layout(fig, "over the run's time: no requests", 560)
    t0 = min(r.t_intended for r in recs)
    end = max(last_instant(r) for r in recs)
    span = max((end - t0) / NS_PER_S, 1e-3)
    width = _bucket_width(span)
    edges = np.arange(0, span + width, width)
    mid = (edges[:-1] + width / 2).tolist()
    ok = [r for r in recs if r.error is None and r.ev_t]

    def rel(ns: np.ndarray) -> np.ndarray:
        return (ns - t0) / NS_PER_S

    samples = Samples.build(ok)
    sent = rel(np.array([r.t_sent for r in ok], dtype=np.int64))
    ttft = samples.per_request["ttft"]
    gap_t, gaps = rel(samples.gap_t()), samples.gaps["itl"]
    series = [
        ("TTFT p50", sent, ttft, 50, COLORS[0], "solid"),
        ("TTFT p99", sent, ttft, 99, COLORS[0], "dot"),
        ("ITL p50", gap_t, gaps, 50, COLORS[1], "solid"),
        ("ITL p99", gap_t, gaps, 99, COLORS[1], "dot"),
    ]
    for name, t, v, pct, color, dash in series:
        fig.add_trace(
            go.Scatter(
                x=mid,
                y=_per_bucket(t, v, edges, pct),
                name=name,
                mode="lines+markers",
                marker={"size": 4},
                line={"color": color, "dash": dash},
                connectgaps=False,
            ),
            row=1,
            col=1,
        )
    fig.add_hline(y=DEFAULT_TARGET_S * 1e3, line={"color": "#444", "dash": "dash"}, row=1, col=1)
    # Tokens at the instant their event arrived; an event counts its reported tokens, else one.
    tok, _ = np.histogram(rel(samples.event_t), bins=edges, weights=samples.event_tokens())
    fig.add_trace(
        go.Bar(x=mid, y=tok / width, name="output tokens/s", marker_color=COLORS[2]),
        row=2,
        col=1,
    )
    done = rel(np.array([last_instant(r) for r in recs if r.error is None], dtype=np.int64))
    bad = rel(np.array([last_instant(r) for r in recs if r.error is not None], dtype=np.int64))
    fig.add_trace(
        go.Bar(
            x=mid,
            y=np.histogram(done, bins=edges)[0] / width,
            name="completed/s",
            marker_color=COLORS[0],
        ),
        row=3,
        col=1,
    )
    if bad.size:
        fig.add_trace(
            go.Bar(
                x=mid,
                y=np.histogram(bad, bins=edges)[0] / width,
                name="failed/s",
                marker_color=COLORS[1],
            ),
            row=3,
            col=1,
        )
    fig.update_layout(barmode="stack", bargap=0.05)
    footer = run.file.footer
    if footer is not None:
        ws, we = (footer.window_start - t0) / NS_PER_S, (footer.window_end - t0) / NS_PER_S
        for x0, x1, text in ((0.0, ws, "warm-up"), (we, span, "cool-down / drain")):
            if x1 - x0 > width / 4:
                fig.add_vrect(
                    x0=x0,
                    x1=x1,
                    fillcolor="#999",
                    opacity=0.15,
                    line_width=0,
                    annotation_text=text,
                    annotation_position="top left",
                )
    fig.update_xaxes(title="seconds since the first intended send", row=3, col=1)
    return _layout(fig, f"over the run's time ({width:g} s intervals)", 620)


def errors_figure(runs: Sequence[tuple[str, Run]]) -> go.Figure:
    fig = go.Figure()
    for i, (label, run) in enumerate(runs):
        kinds = run.summary.requests.errors_by_kind
        fig.add_trace(
            go.Bar(
                x=list(kinds.keys()),
                y=list(kinds.values()),
                name=label,
                marker_color=COLORS[i % len(COLORS)],
            )
        )
    fig.update_yaxes(title="requests")
    return _layout(fig, "errors by kind (measured requests)", 320)


def sweep_curve_figure(sweep: Sweep) -> go.Figure:
    """p-SLO latency of each step against the throughput it achieved, the SLO lines, and the
    capacity found."""
    fig = go.Figure()
    steps = sorted(
        (s for s in sweep.steps if s.summary.rates.requests_per_s is not None),
        key=lambda s: s.summary.rates.requests_per_s or 0.0,
    )
    slos = sweep.runs[0].spec.slos if sweep.runs else list(DEFAULT_SLOS)
    for i, slo in enumerate(slos):
        color = COLORS[i % len(COLORS)]
        xs, ys, text, symbols, marker_colors = [], [], [], [], []
        for s in steps:
            v = next((r.value_s for r in s.summary.slos if r.slo == slo), None)
            if v is None:
                continue
            xs.append(s.summary.rates.requests_per_s)
            ys.append(v * 1e3)
            mc, sym = OUTCOME_STYLE[s.verdict.outcome]
            symbols.append(sym)
            marker_colors.append(mc)
            tok = s.summary.rates.output_tokens_per_s or 0.0
            text.append(
                f"step {s.index + 1} ({s.role}): {s.label()}<br>{tok:,.0f} output tok/s"
                f"<br>{s.verdict.outcome}"
            )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"{LABELS[slo.metric]} p{slo.percentile:g}",
                line={"color": color},
                marker={
                    "symbol": symbols,
                    "size": 11,
                    "color": marker_colors,
                    "line": {"color": color, "width": 2},
                },
                text=text,
                hovertemplate="%{text}<br>%{x:.3g} req/s: %{y:.1f} ms<extra></extra>",
            )
        )
    xs_all = [s.summary.rates.requests_per_s or 0.0 for s in steps]
    x_span = [min(xs_all, default=0.0), max(xs_all, default=1.0)]
    for threshold in sorted({slo.threshold_s for slo in slos}):
        fig.add_trace(_ref_line(x_span, [threshold * 1e3] * 2, f"SLO {threshold * 1e3:g} ms"))
    cap = sweep.capacity
    if cap is not None and cap.requests_per_s is not None:
        ys = [r.value_s * 1e3 for s in steps for r in s.summary.slos if r.value_s is not None] or [
            1.0
        ]
        fig.add_trace(
            _ref_line(
                [cap.requests_per_s] * 2,
                [min(ys), max(ys)],
                f"capacity {format_value(cap.variable, cap.value or 0)}",
                color="#2ca02c",
                dash="solid",
            )
        )
    fig.update_xaxes(title="achieved requests/s")
    shown = [y for trace in fig.data for y in (trace.y or ()) if y]
    fig.update_yaxes(title="ms", **log_axis(min(shown, default=1.0), max(shown, default=1.0)))
    return _layout(fig, "latency vs throughput (marker: ● pass, ✕ fail, ◆ client-bound)", 460)


def change_figure(rows: Sequence[Row], label: str) -> go.Figure:
    """Relative change of each metric with its 95 % interval, coloured by verdict."""
    color = {"worse": "#d62728", "better": "#2ca02c", "same": "#7f7f7f"}
    shown = [r for r in rows if r.change is not None and r.ci is not None]
    fig = go.Figure(
        go.Scatter(
            x=[r.change * 100 for r in shown],  # type: ignore[operator]
            y=[r.label for r in shown],
            mode="markers",
            marker={"color": [color[r.verdict] for r in shown], "size": 10},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [(r.ci[1] - r.change) * 100 for r in shown],  # type: ignore[index,operator]
                "arrayminus": [(r.change - r.ci[0]) * 100 for r in shown],  # type: ignore[index,operator]
            },
            text=[r.verdict for r in shown],
            hovertemplate="%{y}: %{x:+.1f} %% (%{text})<extra></extra>",
            showlegend=False,
        )
    )
    fig.add_vline(x=0, line={"color": "#444", "width": 1})
    fig.update_xaxes(title="change vs baseline (%), 95 % interval")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"{label}: change per metric", 120 + 26 * max(len(shown), 1))


def throughput_over_time_figure(runs: Sequence[tuple[str, Run]]) -> go.Figure:
    """Output tokens/s of several runs on one time axis (each from its own first send)."""
    fig = go.Figure()
    for i, (label, run) in enumerate(runs):
        ok = [r for r in run.file.records if r.error is None and r.ev_t]
        if not ok:
            continue
        t0 = min(r.t_intended for r in run.file.records)
        t = np.concatenate([np.asarray(r.ev_t, dtype=np.int64) for r in ok])
        rel = (t - t0) / NS_PER_S
        span = float(rel.max()) if rel.size else 1.0
        width = _bucket_width(span)
        edges = np.arange(0, span + width, width)
        counts, _ = np.histogram(rel, bins=edges)
        fig.add_trace(
            go.Scatter(
                x=(edges[:-1] + width / 2).tolist(),
                y=(counts / width).tolist(),
                mode="lines",
                name=label,
                line={"color": COLORS[i % len(COLORS)]},
            )
        )
    fig.update_xaxes(title="seconds since the run's first intended send")
    fig.update_yaxes(title="token events/s")
    return _layout(fig, "token events per second over time", 340)


# Parts of a request's TTFT as the strip chart shows them, left to right in the order a request
# meets them (summary/spans.TTFT_PARTS), with their colours.
SPAN_PARTS: tuple[tuple[str, str, str], ...] = (
    ("outside_ttft", "outside the server", COLORS[1]),
    ("front_end", "front end (server)", COLORS[4]),
    ("queue", "queue", COLORS[3]),
    ("prefill", "prefill", COLORS[2]),
)


def span_scatter_figure(join: SpanJoin) -> go.Figure:
    """Each request's client TTFT against its server's, the line y = x, and the colour of each
    point the time outside the server: the distance below the line, exactly."""
    fig = go.Figure()
    rows = [
        (r.seq, r.client_ttft, r.server_ttft, r.outside_ttft)
        for r in join.requests
        if r.client_ttft is not None and r.server_ttft is not None
    ]
    if not rows:
        return _layout(fig, "client vs server TTFT per request: no request has both", 460)
    cols = np.asarray(rows, dtype=np.float64)
    seq, client_ms, server_ms, outside_ms = (
        cols[:, 0],
        cols[:, 1] * 1e3,
        cols[:, 2] * 1e3,
        cols[:, 3] * 1e3,
    )
    top = float(max(client_ms.max(), server_ms.max())) * 1.05 or 1.0
    fig.add_trace(
        go.Scatter(
            x=[0, top],
            y=[0, top],
            mode="lines",
            name="y = x (nothing outside the server)",
            line={"color": "#444", "dash": "dash", "width": 1},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=client_ms,
            y=server_ms,
            mode="markers",
            name="requests",
            customdata=np.stack([seq, outside_ms], axis=1),
            hovertemplate="request %{customdata[0]:.0f}<br>client %{x:.2f} ms<br>"
            "server %{y:.2f} ms<br>outside %{customdata[1]:.2f} ms<extra></extra>",
            marker={
                "size": 7,
                "color": outside_ms,
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": "outside (ms)"}, "thickness": 14},
                "line": {"width": 0},
            },
        )
    )
    fig.update_xaxes(title="client TTFT (ms)", range=[0, top])
    fig.update_yaxes(title="server TTFT (ms, its own span)", range=[0, top])
    return _layout(fig, f"client vs server TTFT, {len(rows):,} requests", 460)


def span_parts_figure(join: SpanJoin) -> go.Figure:
    """A strip of each part of TTFT per request (outside, front end, queue, prefill), with its
    median marked: where each request's time went. Jitter is seeded, so a report redraws the
    same."""
    fig = go.Figure()
    rng = np.random.default_rng(0)
    drawn = 0
    for i, (name, label, color) in enumerate(SPAN_PARTS):
        values = join.values(name) * 1e3
        if values.size == 0:
            continue
        drawn += 1
        fig.add_trace(
            go.Scatter(
                x=i + rng.uniform(-0.3, 0.3, values.size),
                y=values,
                mode="markers",
                name=label,
                marker={"size": 5, "color": color, "opacity": 0.6},
                hovertemplate=f"{label}: %{{y:.2f}} ms<extra></extra>",
            )
        )
        med = float(np.median(values))
        fig.add_trace(
            go.Scatter(
                x=[i - 0.38, i + 0.38],
                y=[med, med],
                mode="lines",
                line={"color": "#222", "width": 2},
                name=f"{label} median",
                showlegend=False,
                hovertemplate=f"{label} median: {med:.2f} ms<extra></extra>",
            )
        )
    fig.update_xaxes(
        tickvals=list(range(len(SPAN_PARTS))),
        ticktext=[label for _, label, _ in SPAN_PARTS],
        range=[-0.6, len(SPAN_PARTS) - 0.4],
    )
    fig.update_yaxes(title="ms", rangemode="tozero")
    title = "TTFT per request, part by part (bar: median)" if drawn else "no parts to show"
    return _layout(fig, title, 420)
