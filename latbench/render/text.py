"""Markdown (for PRs and tickets) and CSV (for spreadsheets) forms of runs, sweeps and
comparisons. Same figures as the HTML report, from the same recomputed summaries."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from latbench.render.charts import LABELS
from latbench.render.readback import Run, Sweep
from latbench.render.reconciliation import summary_line
from latbench.render.spans import HEADERS as SPAN_HEADERS
from latbench.render.spans import table_rows as spans_table_rows
from latbench.render.spans import text_lines as spans_text_lines
from latbench.render.spans import title as spans_title
from latbench.shared.units import ms, ms_interval, ms_short, num
from latbench.spec.slo import METRICS
from latbench.summary.compare import Row
from latbench.summary.energy import Energy
from latbench.summary.samples import NS_PER_S
from latbench.summary.spans import SpanJoin
from latbench.summary.summary import Summary, pct_key
from latbench.summary.validity import Validity, ms_bound
from latbench.sweep import Step

if TYPE_CHECKING:
    from latbench.render import Comparison

MD_METRICS: tuple[str, ...] = ("ttft", "ttfo", "itl", "tpot", "e2e", "queue_delay")
# A sweep's steps table, here and in the HTML report (which adds "why").
STEP_COLUMNS: tuple[str, ...] = (
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
)


def _rate(x: float | None) -> str:
    return num(x, ".2f")  # no thousands separators in Markdown: figures are pasted on


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(headers))) + "|"
    return "\n".join([line(headers), align, *(line(r) for r in rows)])


def _verdict_line(s: Summary) -> str:
    parts = []
    for r in s.slos:
        word = "n/a" if r.passed is None else ("PASS" if r.passed else "**FAIL**")
        parts.append(f"{r.slo} {word} ({ms(r.value_s)} ms)")
    valid = (
        "validity unknown"
        if not s.validity.known
        else ("**CLIENT-BOUND**" if s.client_bound else s.validity.verdict_line())
    )
    return "; ".join([*parts, valid])


def _latency_md(s: Summary) -> str:
    headers = ["metric (ms)", "n", "mean", *map(pct_key, s.percentiles), "max"]
    rows = []
    for m in MD_METRICS:
        st = s.latency[m]
        rows.append(
            [
                LABELS[m],
                f"{st.count}",
                ms(st.mean),
                *(ms(st.p(p)) for p in s.percentiles),
                ms(st.max),
            ]
        )
    return md_table(headers, rows)


def run_markdown(run: Run) -> str:
    s = run.summary
    r = s.rates
    env = run.environment
    lines = [
        f"### latbench run `{run.run_id}`",
        "",
        f"{env.get('target', '?')} · model `{env.get('model', '?')}` · "
        f"{s.requests.measured} measured ({failed_words(s)}) over "
        f"{num(s.window.duration_s if s.window else None, '.1f')} s",
        "",
        _verdict_line(s),
        "",
        *_oversaturation_md(s),
        _latency_md(s),
        *_stairs_md(s),
        *_turns_md(s),
        "",
        f"Throughput: {_rate(r.requests_per_s)} req/s, {num(r.output_tokens_per_s, '.1f')} output "
        f"tok/s; goodput {_rate(r.goodput_per_s)} req/s "
        f"({num(r.goodput_fraction, '.1%')} of measured met every SLO).",
    ]
    if run.energy is not None:
        lines += ["", _energy_md(run.energy)]
    if s.images is not None:
        lines += ["", f"Images: {s.images.describe()}."]
    if (tools := tool_calls_line(s)) is not None:
        lines += ["", f"Tool calls: {tools}."]
    if s.requests.errors_by_kind:
        errs = ", ".join(f"{k} {v}" for k, v in s.requests.errors_by_kind.items())
        lines += ["", f"Errors: {errs}."]
    lines += ["", _bound_md(s.validity), *_agents_md(s.validity)]
    if run.spans is not None:
        lines += ["", *_spans_md(run.spans)]
    if run.reconciliation is not None and (line := summary_line(run.reconciliation)) is not None:
        lines += ["", line]
    if s.client_bound:
        lines += ["", "**Client-bound:** " + " ".join(s.validity.reasons)]
    return "\n".join(lines) + "\n"


def _bound_md(v: Validity) -> str:
    """The error bound and the send lag that explains it, in one sentence."""
    lag = f"send lag (queue delay) p99 {ms(v.queue_delay_p99_s, unit=True)}"
    if not v.bound_known:
        missing = "" if v.bounds is None else f" ({_without(v)})"
        return f"Error bound: unknown{missing}; {lag}."
    assert v.bounds is not None
    b = v.bounds
    return (
        f"Error bound (p50 / p99): TTFT {ms_bound(b.ttft, 'p50')} / {ms_bound(b.ttft)}, "
        f"ITL {ms_bound(b.itl, 'p50')} / {ms_bound(b.itl)}; {lag}."
    )


def _without(v: Validity) -> str:
    """Why the bound is unknown, short: requests without one, or no first token to bound."""
    assert v.bounds is not None
    n = v.bounds.missing
    return f"{n:,} requests without one" if n else "no first token to bound"


def validity_rows(v: Validity) -> list[list[str]]:
    """The validity table (figure, value, limit), for the terminal and the HTML report: the error
    bounds judge; send lag judges in open loop and explains a TTFT bound in closed loop; loop lag
    and CPU judge only as proxies, without a bound."""
    lim = v.limits
    rows: list[list[str]] = []
    if v.bound_known:
        assert v.bounds is not None
        for name, b, tol in (
            ("TTFT error bound", v.bounds.ttft, lim.ttft_tolerance_s),
            ("ITL error bound", v.bounds.itl, lim.itl_tolerance_s),
        ):
            rows.append(
                [
                    name,
                    f"p50 {ms_bound(b, 'p50')}, p99 {ms_bound(b)}",
                    f"p99 ≤ {ms(tol, unit=True)}",
                ]
            )
    else:
        missing = "–" if v.bounds is None else _without(v)
        rows.append(["error bound", f"unknown: {missing}", "judged by proxies"])
    closed = "diagnostic"  # closed loop: a late send is the concurrency limit at work
    proxy = "proxy" if v.proxy else "diagnostic"
    unsent = "–" if v.unsent is None else f"{v.unsent:,}"
    cpu = "–" if v.client_cpu is None else f"{v.client_cpu:.0%} of one core"
    rows += [
        [
            "send lag (queue delay)",
            _spread(v.queue_delay_p50_s, v.queue_delay_p99_s, v.queue_delay_max_s),
            f"p99 ≤ {ms(lim.queue_delay_p99_s, unit=True)}" if v.open_loop else closed,
        ],
        [
            "event-loop lag",
            _spread(v.loop_lag_p50_s, v.loop_lag_p99_s, v.loop_lag_max_s),
            f"p99 ≤ {ms(lim.loop_lag_p99_s, unit=True)} ({proxy})" if v.proxy else proxy,
        ],
        ["client CPU", cpu, f"≤ {lim.client_cpu:.0%} ({proxy})" if v.proxy else proxy],
        ["unsent requests", unsent, "0" if v.open_loop else closed],
    ]
    return rows


# The per-agent validity table (a run on agents), here and in the terminal and HTML reports:
# error bounds and lags at p99, in ms.
AGENT_HEADERS: tuple[str, ...] = (
    "agent",
    "host",
    "location",
    "measured",
    "TTFT bound",
    "ITL bound",
    "send lag",
    "loop lag",
    "CPU",
    "clock ±",
    "verdict",
)


def agent_rows(v: Validity) -> list[list[str]]:
    """Each agent judged on its own records (`summary.validity.judge_agents`), a row each: its
    error bounds, send and loop lag, busiest worker's CPU, clock bound, and its verdict with
    what else went wrong (lost mid-run, a flagged clock). None for a local run: no rows."""
    rows = []
    for av in v.agents:
        a, own = av.agent, av.validity
        if not own.known:
            verdict = "unknown"
        else:
            verdict = "client-bound" if own.client_bound else "ok"
            if own.proxy:
                verdict += " (proxies)"
        if a.lost is not None:
            verdict += ", lost mid-run"
        if a.flagged:
            verdict += ", clock flagged"
        cpu = "–" if own.client_cpu is None else f"{own.client_cpu:.0%}"
        clock = "–" if a.uncertainty_ns is None else ms(a.uncertainty_ns / NS_PER_S)
        rows.append(
            [
                str(a.index),
                a.host or "–",
                a.location or "–",
                f"{av.measured:,}",
                bound_p99(own, "ttft"),
                bound_p99(own, "itl"),
                ms(own.queue_delay_p99_s),
                ms(own.loop_lag_p99_s),
                cpu,
                clock,
                verdict,
            ]
        )
    return rows


def _agents_md(v: Validity) -> list[str]:
    """The per-agent table (ms) and the notes (flagged clocks, load not offered), for Markdown."""
    out: list[str] = []
    if v.agents:
        out += ["", "Per agent (ms; error bounds and lags at p99), each on its own records:", ""]
        out.append(md_table(AGENT_HEADERS, agent_rows(v)))
    out += ["", *(f"- {note}" for note in v.notes)] if v.notes else []
    return out


def _spread(p50: float | None, p99: float | None, top: float | None) -> str:
    return f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(top, unit=True)}"


def bound_p99(v: Validity, metric: str) -> str:
    """A metric's ("ttft", "itl") p99 error bound in ms, the dash when unknown: a table cell."""
    b = None if v.bounds is None or not v.bounds.known else getattr(v.bounds, metric).p99
    return ms(None if b is None else b.bound_ns / NS_PER_S)


def _step_row(s: Step) -> list[str]:
    sm = s.summary
    lat = sm.latency
    return [
        str(s.index + 1),
        s.role,
        s.label(),
        s.verdict.outcome,
        _rate(sm.rates.requests_per_s),
        num(sm.rates.output_tokens_per_s, ".0f"),
        ms(lat["ttft"].p(99.0)),
        ms(lat["itl"].p(99.0)),
        ms(lat["tpot"].p(99.0)),
        str(sm.requests.failed),
    ]


def sweep_markdown(sweep: Sweep) -> str:
    lines = [f"### latbench sweep `{sweep.sweep_id}` ({sweep.plan_kind}, {sweep.variable})", ""]
    cap = sweep.capacity
    if cap is not None:
        lines += [f"**{cap.headline()}**", ""]
        for e in cap.evidence:
            passing, failing = ms_interval(e.passing), ms_interval(e.failing)
            lines.append(f"- {e.slo}: passing {passing}, failing {failing}")
        lines += [f"- {n}" for n in cap.notes]
        lines.append("")
    lines.append(md_table(list(STEP_COLUMNS), [_step_row(s) for s in sweep.steps]))
    return "\n".join(lines) + "\n"


def spread_text(r: Row) -> str:
    """A row's run-to-run spread (summary/compare.py), marked when it dominates."""
    if r.spread is None:
        return "–"
    return f"{r.spread:,.1f}" + (" !" if r.spread_dominates else "")


SPREAD_LEGEND = (
    "spread: variance of the runs' own estimates over the within-run bootstrap variance "
    "(about 1 without run-to-run variation); '!': run-to-run spread dominates, so more runs, "
    "not longer ones, would narrow the interval."
)


def compare_markdown(cmp: Comparison) -> str:
    out = [cmp.method, ""]
    spread = any(len(s.runs) > 1 for s in cmp.sides)
    base = cmp.labels[0]
    for label, rows in zip(cmp.labels[1:], cmp.results, strict=True):
        worse = sum(r.verdict == "worse" for r in rows)
        better = sum(r.verdict == "better" for r in rows)
        out += [f"### `{label}` vs `{base}`: {worse} worse, {better} better", ""]
        body = []
        for r in rows:
            is_rate = not r.stat
            fmt = _rate if is_rate else ms
            ci = "–" if r.ci is None else f"[{r.ci[0]:+.1%}, {r.ci[1]:+.1%}]"
            verdict = f"**{r.verdict}**" if r.verdict != "same" else r.verdict
            cells = [
                r.label + ("" if is_rate else " (ms)"),
                fmt(r.a),
                fmt(r.b),
                "–" if r.change is None else f"{r.change:+.1%}",
                ci,
                verdict,
            ]
            body.append([*cells, spread_text(r)] if spread else cells)
        headers = ["metric", "A", "B", "change", "95 % CI", "verdict"]
        out += [md_table([*headers, "spread"] if spread else headers, body), ""]
    if spread:
        out += [SPREAD_LEGEND, ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# CSV


def _summary_columns(s: Summary) -> dict[str, Any]:
    d: dict[str, Any] = {
        "measured": s.requests.measured,
        "succeeded": s.requests.succeeded,
        "failed": s.requests.failed,
        "window_s": None if s.window is None else round(s.window.duration_s, 6),
        "requests_per_s": s.rates.requests_per_s,
        "output_tokens_per_s": s.rates.output_tokens_per_s,
        "goodput_per_s": s.rates.goodput_per_s,
        "slo_passed": s.slo_passed,
        "client_bound": s.client_bound,
        "oversaturated_after_s": None if s.oversaturation is None else s.oversaturation.after_s,
    }
    for m in METRICS:
        st = s.latency[m]
        d[f"{m}_mean_ms"] = None if st.mean is None else st.mean * 1e3
        for p in s.percentiles:
            v = st.p(p)
            d[f"{m}_{pct_key(p)}_ms"] = None if v is None else v * 1e3
        d[f"{m}_max_ms"] = None if st.max is None else st.max * 1e3
    return d


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def _spans_md(j: SpanJoin) -> list[str]:
    """The per-request join as Markdown: its title, the figures' table, the split and counts."""
    return [
        f"{spans_title(j)}.",
        "",
        md_table(SPAN_HEADERS, spans_table_rows(j)),
        *(f"\n{line}." for line in spans_text_lines(j)),
    ]


def _span_columns(j: SpanJoin | None) -> dict[str, Any]:
    """The join's counts and each figure's mean, p50, p99 (ms) as CSV columns; none without
    spans."""
    if j is None:
        return {}
    d: dict[str, Any] = {f"spans_{k}": v for k, v in j.counts().items()}
    for name, dist in j.distributions().items():
        for stat in ("mean", "p50", "p99"):
            v = dist[stat]
            d[f"span_{name}_{stat}_ms"] = None if v is None else float(v) * 1e3
    return d


# How the energy was had, as `Energy.method` names it.
ENERGY_HOW = {
    "counter": "counter",
    "power_integral": "power_integral: no energy counter",
    "mixed": "mixed: counters on some devices, power integrated on the others",
}


def energy_rows(e: Energy | None) -> list[tuple[str, str]]:
    """The energy figures next to throughput (docs/gpu.md): energy per output token and per
    request, and where the energy came from; none without GPU samples. A counter the source
    refreshes seldom gives its figures with the error it can have (`Energy.error_j`)."""
    if e is None:
        return []
    total = e.energy_j
    if total is None:
        return [("energy", "no energy: " + ("; ".join(e.notes) or "too few GPU samples"))]
    err = e.error_j
    per = []
    for value, unit, count in (
        (e.j_per_output_token, "output token", e.output_tokens),
        (e.j_per_request, "request", e.requests),
    ):
        if value is not None:
            pm = "" if err is None else f" ± {err / count:.2g}"
            per.append(f"{value:.3g} J/{unit}{pm}")
    devices = len(e.devices)
    sources = ", ".join(sorted({d.source for d in e.devices}))
    if sources == "node":
        what = f"host (RAPL, {devices} package{'s' if devices != 1 else ''})"
    else:
        what = f"{devices} GPU{'s' if devices != 1 else ''}"
    how = ENERGY_HOW.get(e.method or "", e.method or "")
    pm = "" if err is None else f" ± {err:,.0f}"
    rows = [
        ("energy per output token", ", ".join(per) or "no tokens delivered in the window"),
        (
            "energy",
            f"{total:,.0f}{pm} J over {e.window_s:.3g} s, mean {e.mean_power_w or 0:,.0f} W "
            f"({what}, {sources}, {how}; idle power included)",
        ),
    ]
    utils = [d.mean_utilization for d in e.devices if d.mean_utilization is not None]
    if utils:
        rows.append(("GPU utilisation, mean", ", ".join(f"{u:.0%}" for u in utils)))
    return rows


def _energy_md(e: Energy) -> str:
    """The energy figures the terminal shows next to throughput, as one Markdown line."""
    rows = energy_rows(e)
    return "Energy (docs/gpu.md): " + "; ".join(f"{k} {v}" for k, v in rows) + "."


def _energy_columns(e: Energy | None) -> dict[str, Any]:
    """The run's energy as CSV columns (results.json's "energy" figures); none without GPU
    samples."""
    if e is None:
        return {}
    return {
        "energy_j": e.energy_j,
        "energy_error_j": e.error_j,
        "energy_method": e.method,
        "mean_power_w": e.mean_power_w,
        "j_per_output_token": e.j_per_output_token,
        "j_per_request": e.j_per_request,
    }


def run_csv(run: Run) -> str:
    row = {
        "run_id": run.run_id,
        **_summary_columns(run.summary),
        **_span_columns(run.spans),
        **_energy_columns(run.energy),
    }
    return _csv([row])


def sweep_csv(sweep: Sweep) -> str:
    rows = []
    for s in sweep.steps:
        rows.append(
            {
                "step": s.index + 1,
                "role": s.role,
                "variable": s.variable,
                "value": s.value,
                "outcome": s.verdict.outcome,
                "run_id": s.run_id,
                **_summary_columns(s.summary),
            }
        )
    return _csv(rows)


def compare_csv(cmp: Comparison) -> str:
    rows = []
    base = cmp.sides[0]
    for side, rs in zip(cmp.sides[1:], cmp.results, strict=True):
        for r in rs:
            unit = 1.0 if not r.stat else 1e3  # latencies in ms, rates as they are
            rows.append(
                {
                    "a": base.label,
                    "b": side.label,
                    "a_runs": len(base.runs),
                    "b_runs": len(side.runs),
                    "metric": r.metric,
                    "stat": r.stat,
                    "unit": "per_s" if not r.stat else "ms",
                    "a_value": None if r.a is None else r.a * unit,
                    "b_value": None if r.b is None else r.b * unit,
                    "change": r.change,
                    "ci_low": None if r.ci is None else r.ci[0],
                    "ci_high": None if r.ci is None else r.ci[1],
                    "verdict": r.verdict,
                    "run_spread": r.spread,
                    "run_spread_dominates": r.spread_dominates,
                }
            )
    return _csv(rows)


def tool_calls_line(s: Summary) -> str | None:
    """The tool calls the replies made (METRICS.md: their argument tokens are generated but are
    not the answer, so they are counted apart), or None when no reply called a tool."""
    tok = s.tokens
    if not tok.tool_call_requests:
        return None
    t = tok.ttft_tool_call
    return (
        f"{tok.tool_call_requests:,} of {s.requests.succeeded:,} replies called a tool: "
        f"{tok.by_kind['tool_call']:,} tool-call tokens, apart from {tok.by_kind['content']:,} "
        f"answer tokens; time to first tool-call token p50 {ms_short(t.p(50))} ms, "
        f"p99 {ms_short(t.p(99))} ms"
    )


def _oversaturation_md(s: Summary) -> list[str]:
    v = s.oversaturation
    if v is None:
        return []
    return [
        f"**{v.HEADLINE}**: {v.MEANING}",
        "",
        md_table(["evidence", "value"], v.evidence()),
        "",
    ]


TURN_HEADERS: tuple[str, ...] = (
    "turn", "n (fail)", "prompt tok", "TTFT p50", "TTFT p99", "TTFT mean",
)  # fmt: skip


def turns_rows(s: Summary) -> list[list[str]] | None:
    """A multi-turn run's TTFT by turn index (summary.sessions), one row a turn, for every
    report; None for a run without sessions."""
    if s.sessions is None:
        return None
    return [
        [
            t.label,
            f"{t.requests:,} ({t.requests - t.succeeded:,})",
            num(t.prompt_tokens_mean, ",.0f"),
            ms_short(t.ttft_p50),
            ms_short(t.ttft_p99),
            ms_short(t.ttft_mean),
        ]
        for t in s.sessions.by_turn
    ]


def _turns_md(s: Summary) -> list[str]:
    rows = turns_rows(s)
    if rows is None or s.sessions is None:
        return []
    return [
        "",
        f"Sessions: {s.sessions.describe()}. TTFT by turn (ms):",
        "",
        md_table(TURN_HEADERS, rows),
    ]


def failed_words(s: Summary) -> str:
    """`3 failed`, with the requests a stop cancelled apart: they did not fail, the run ended."""
    f = s.failures
    return f"{f.failed} failed" + (f", {f.cancelled} cut by the stop" if f.cancelled else "")


def stair_headers(s: Summary) -> tuple[str, ...]:
    """Latencies in ms; the offered rate is the schedule's, in sessions/s when it paced sessions
    (then "sent" still counts requests), "sent/s" the rate the client sent at."""
    sessions = any(st.rate_unit == "sessions" for st in s.stairs or ())
    offered, sent = ("sessions/s", "sent req/s") if sessions else ("req/s", "sent/s")
    return (
        "stair", "from s", offered, sent, "n (fail)", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99",
    )  # fmt: skip


def stairs_rows(s: Summary) -> list[list[str]] | None:
    """A `steps` or `ramp` run's stairs, one row each (summary.stairs), for every report; None
    otherwise. A stair a stop cut short says so, and one after the stop says it did not run."""
    if not s.stairs:
        return None
    rows = []
    for st in s.stairs:
        label = f"{st.index + 1}" + (" cut" if st.cut else "" if st.ran else " not run")
        n = f"{st.requests:,} ({st.failed:,}"
        n += f", {st.cancelled:,} cut)" if st.cancelled else ")"
        rows.append(
            [
                label,
                f"{st.start_s:.2f}",
                num(st.rate),
                num(st.sent_per_s) if st.ran else "-",
                n if st.ran or st.requests else "-",
                ms_short(st.ttft.p(50)),
                ms_short(st.ttft.p(99)),
                ms_short(st.itl.p(50)),
                ms_short(st.itl.p(99)),
            ]
        )
    return rows


def _stairs_md(s: Summary) -> list[str]:
    rows = stairs_rows(s)
    return [] if rows is None else ["", "Stairs (ms):", "", md_table(stair_headers(s), rows)]
