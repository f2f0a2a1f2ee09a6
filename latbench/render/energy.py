"""The report's GPU and energy section: J per output token and per request, each device's
figures, and its power and utilisation over the run's time (docs/gpu.md).

Built from the records file's GPU samples (`RecordsFile.gpu`) and the energy recomputed from them
(`render.readback.Run.energy`), so a report says what `latbench summary` says. Kept apart from
`charts` and `sections`, which draw the latency side.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from latbench.render.charts import COLORS, TEMPLATE
from latbench.render.page import Page, esc, table
from latbench.render.readback import Run
from latbench.render.text import energy_rows
from latbench.summary.energy import Energy
from latbench.summary.samples import NS_PER_S


def energy_figure(run: Run) -> go.Figure:
    """Each device's power (W) and utilisation (%) against the run's time, the measurement
    window shaded."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=("power (W)", "utilisation (%)"),
    )
    recs, gpu = run.file.records, run.file.gpu
    t0 = min((r.t_intended for r in recs), default=min(s.t_ns for s in gpu))
    devices = sorted({(s.source, s.gpu) for s in gpu})
    for i, (source, name) in enumerate(devices):
        mine = [s for s in gpu if (s.source, s.gpu) == (source, name)]
        x = [(s.t_ns - t0) / NS_PER_S for s in mine]
        label = f"{source} {name or 'host'}"
        color = COLORS[i % len(COLORS)]
        for row, values in (
            (1, [s.power_w for s in mine]),
            (2, [None if s.utilization is None else 100 * s.utilization for s in mine]),
        ):
            if any(v is not None for v in values):
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=values,
                        name=label,
                        legendgroup=label,
                        showlegend=row == 1,
                        mode="lines+markers",
                        line={"color": color},
                        marker={"size": 4},
                    ),
                    row=row,
                    col=1,
                )
    if run.summary.window is not None:
        w = run.summary.window
        fig.add_vrect(
            x0=(w.start_ns - t0) / NS_PER_S,
            x1=(w.end_ns - t0) / NS_PER_S,
            fillcolor="#2ca02c",
            opacity=0.06,
            line_width=0,
        )
    fig.update_xaxes(title_text="s since the run's start", row=2, col=1)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": "GPU power and utilisation (the window shaded)", "x": 0.01},
        height=460,
        margin={"l": 60, "r": 20, "t": 50, "b": 45},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def energy_html(page: Page, run: Run, energy: Energy) -> str:
    """The headline figures, a row per device, the notes and the chart."""
    head = table(["figure", "value"], energy_rows(energy))
    rows = [
        [
            f"{d.source} {d.gpu or 'host'}",
            "–"
            if d.energy_j is None
            else f"{d.energy_j:,.1f}" + ("" if d.error_j is None else f" ± {d.error_j:,.0f}"),
            "–" if d.mean_power_w is None else f"{d.mean_power_w:,.1f}",
            "–" if d.mean_utilization is None else f"{d.mean_utilization:.0%}",
            "–" if d.max_memory_used_bytes is None else f"{d.max_memory_used_bytes / 2**30:,.2f}",
            d.method or "–",
            str(d.samples),
        ]
        for d in energy.devices
    ]
    devices = table(
        ["device", "energy (J)", "mean power (W)", "mean util.", "max memory (GiB)", "how",
         "samples in window"],
        rows,
    )  # fmt: skip
    notes = "".join(f'<p class="meta">{esc(n)}</p>' for n in energy.notes)
    return head + devices + notes + page.chart(energy_figure(run), "energy")
