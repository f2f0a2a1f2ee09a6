"""The HTML reports of a run, a sweep and a comparison: which sections each page shows, in what
order. The page shell is `page.py`, the sections `sections.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from latbench.render import charts
from latbench.render.energy import energy_html
from latbench.render.page import Page, esc, table
from latbench.render.readback import Run, Sweep
from latbench.render.sections import (
    capacity_html,
    cdf_grid,
    compare_table,
    errors_html,
    latency_table,
    oversaturation_html,
    reconciliation_html,
    slo_badges,
    spans_html,
    spec_html,
    stairs_html,
    steps_table,
    throughput_table,
    turns_html,
    validity_html,
)
from latbench.render.text import SPREAD_LEGEND, bound_p99
from latbench.shared.units import ms_short
from latbench.spec.ramp import SHAPED_MODES
from latbench.spec.ramp import describe as describe_shape

if TYPE_CHECKING:
    from latbench.render import Comparison


def run_report(run: Run) -> str:
    page = Page(f"latbench report: run {run.run_id}")
    env, load = run.environment, run.spec.load
    what = (
        f"{env.get('target', '?')} · model {env.get('model', '?')} · api {run.spec.target.api} · "
        + (
            f"{load.mode} {load.rate:g} req/s"
            if load.open_loop and load.rate
            else describe_shape(load)
            if load.mode in SHAPED_MODES
            else f"{load.concurrency} users (closed loop)"
        )
    )
    page.add(f'<p class="meta">{esc(what)}</p>' + slo_badges(run.summary))
    page.add(oversaturation_html(run.summary))
    page.section("summary", "Summary")
    page.add(latency_table(run) + throughput_table(run.summary))
    if run.summary.stairs:
        page.section("stairs", "Stairs")
        page.add(stairs_html(run.summary))
    if run.summary.sessions is not None:
        page.section("turns", "TTFT by turn")
        page.add(turns_html(run.summary))
    page.section("cdf", "Latency distributions (CDF)")
    page.add(cdf_grid(page, [(run.run_id, run)]))
    page.section("time", "Over the run's time")
    page.add(page.chart(charts.over_time_figure(run), "over-time"))
    if run.energy is not None:  # GPU samples were taken (docs/gpu.md)
        page.section("energy", "GPU and energy")
        page.add(energy_html(page, run, run.energy))
    page.section("errors", "Errors")
    page.add(errors_html(page, [(run.run_id, run)]))
    if run.spans is not None:
        page.section("spans", "Client vs server, per request")
        page.add(spans_html(page, run.spans))
    if run.reconciliation is not None:
        page.section("server", "Client vs server")
        page.add(reconciliation_html(run.reconciliation))
    page.section("validity", "Validity of the measurement")
    page.add(validity_html(run.summary))
    page.section("spec", "Spec and environment")
    page.add(spec_html(run))
    return page.render()


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
    page.add(cdf_grid(page, labelled))
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
                bound_p99(v, "ttft"),
                bound_p99(v, "itl"),
                ms_short(v.loop_lag_p99_s),
                ms_short(v.queue_delay_p99_s),
                "–" if v.client_cpu is None else f"{v.client_cpu:.0%}",
                "; ".join(v.reasons),
            ]
        )
    page.add(
        table(
            [
                "step",
                "verdict",
                "TTFT bound p99 ms",
                "ITL bound p99 ms",
                "loop lag p99 ms",
                "send lag p99 ms",
                "client CPU",
                "why",
            ],
            rows,
        )
    )
    if runs:
        page.section("spec", "Spec and environment (first step)")
        page.add(spec_html(runs[0]))
    return page.render()


def compare_report(cmp: Comparison) -> str:
    runs = cmp.runs
    base_label = cmp.labels[0]
    spread = any(len(s.runs) > 1 for s in cmp.sides)
    page = Page(f"latbench comparison: {' vs '.join(cmp.labels)}")
    page.add(
        f'<p class="meta">baseline A = {esc(base_label)}; each other side is B. '
        f"{esc(cmp.method)} Changes within ±{cmp.margin:.0%} are 'same'.</p>"
    )
    for label, run in runs:
        page.add(f"<div><b>{esc(label)}</b> {slo_badges(run.summary)}</div>")
    for label, rows in zip(cmp.labels[1:], cmp.results, strict=True):
        counts = {v: sum(r.verdict == v for r in rows) for v in ("worse", "better", "same")}
        page.section(f"cmp-{esc(label)}", f"{label} vs {base_label}")
        page.add(
            f"<p><span class=worse>{counts['worse']} worse</span>, "
            f"<span class=better>{counts['better']} better</span>, {counts['same']} same</p>"
        )
        page.add(page.chart(charts.change_figure(rows, label), f"change-{label}"))
        page.add(compare_table(rows, spread))
    if spread:
        page.add(f'<p class="meta">{esc(SPREAD_LEGEND)}</p>')
    page.section("cdf", "Latency distributions side by side (CDF)")
    page.add(cdf_grid(page, runs))
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
