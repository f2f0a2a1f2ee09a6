"""Terminal rendering of a `Summary`. Nothing here computes a figure; `summary.summary` does."""

from __future__ import annotations

from collections.abc import Mapping

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from latbench.render.fit import Column, fitted
from latbench.render.text import (
    AGENT_HEADERS,
    TURN_HEADERS,
    agent_rows,
    energy_rows,
    stair_headers,
    stairs_rows,
    tool_calls_line,
    turns_rows,
    validity_rows,
)
from latbench.shared.units import Unit, ms_short, num, row_unit, short
from latbench.spec.slo import DEFAULT_SLOS, METRICS
from latbench.summary.energy import Energy
from latbench.summary.summary import Stats, Summary, pct_key

LABELS = {
    "ttft": "TTFT",
    "ttfo": "TTFO",
    "itl": "ITL",
    "itl_per_token": "ITL/token",
    "tpot": "TPOT",
    "e2e": "E2E",
    "queue_delay": "send lag",  # t_sent - t_intended: the queue delay (METRICS.md)
    "ttft_from_schedule": "TTFT sched.",
    "e2e_from_schedule": "E2E sched.",
}
# Where a request's output token count came from (summary.Tokens.sources), and which two of
# those sources disagreed (Tokens.disagreements), in words: the keys are record fields.
SOURCES = {
    "usage": "the server's usage",
    "ev_n": "the tokens each event reported",
    "events": "one token per event",
}
DISAGREEMENTS = {
    "usage_vs_ev_n": "the server's usage vs the tokens each event reported",
    "usage_vs_events": "the server's usage vs one token per event",
    "ev_n_vs_events": "the tokens each event reported vs one token per event",
}
# Rows that are judged against the 100 ms target even without an SLO naming them: the
# token-latency family. E2E and queue delay have no natural default and stay uncoloured.
_DEFAULT_TARGET_S = DEFAULT_SLOS[0].threshold_s
_DEFAULT_COLOURED = frozenset(
    {"ttft", "ttfo", "itl", "itl_per_token", "tpot", "ttft_from_schedule"}
)


def render_summary(summary: Summary, console: Console, energy: Energy | None = None) -> None:
    """The summary's tables; `energy` (the GPU samples' figures) adds rows to throughput."""
    console.print(_headline(summary))
    if (over := _oversaturation(summary)) is not None:
        console.print(over)
    for table in _latency_tables(summary, console):
        console.print(table)
    console.print(_throughput_table(summary, energy))
    for table in _stairs_tables(summary, console):
        console.print(table)
    if (turns := _turns_table(summary)) is not None:
        console.print(turns)
    if (prompt_warning := summary.tokens.prompt.warning) is not None:
        console.print(Text(f"warning: {prompt_warning}", style="yellow"))
    if summary.requests.failed:
        console.print(_errors_table(summary))
        console.print(_failures_line(summary))
    for line in _slo_lines(summary):
        console.print(line)
    console.print(_validity(summary))
    for table in _agents_tables(summary, console):
        console.print(table)
    for note in summary.validity.notes:
        console.print(Text(f"note: {note}", style="yellow"))


def _headline(s: Summary) -> Text:
    req, f = s.requests, s.failures
    if s.window is None:
        span = "no measurement window"
    else:
        how = "derived" if s.window.derived else "as run"
        span = f"window {s.window.duration_s:,.3f} s ({how})"
    text = Text.assemble(
        ("latbench", "bold"),
        f"  {span} · {req.measured:,} measured: ",
        (f"{req.succeeded:,} ok", "green"),
        ", ",
        (f"{f.failed:,} failed", "red" if f.failed else ""),
    )
    if f.cancelled:  # a stop's cancels did not fail: the run ended under them
        text.append(f", {f.cancelled:,} cut by the stop", "yellow")
    if req.warmup or req.cooldown:
        text.append(f" · left out: {req.warmup:,} warm-up, {req.cooldown:,} cool-down", "dim")
    return text


def _threshold(s: Summary, metric: str) -> float | None:
    # The tightest SLO on the metric sets the colour; the 100 ms target applies otherwise.
    named = [r.slo.threshold_s for r in s.slos if r.slo.metric == metric]
    if named:
        return min(named)
    return _DEFAULT_TARGET_S if metric in _DEFAULT_COLOURED else None


def _cell(value: float | None, threshold: float | None, unit: Unit) -> Text:
    text = short(value, unit)
    if value is None or threshold is None:
        return Text(text)
    return Text(text, style="green" if value <= threshold else "red")


def _latency_tables(s: Summary, console: Console) -> list[Table]:
    """One row per metric, each in its own unit (ms, or s from 1,000 ms: shared/units.py);
    split into two tables when the console is too narrow for every percentile (render/fit.py)."""
    keys = [Column("metric", "left"), Column("unit", "left")]
    values = [Column(name) for name in ("n", "mean", *map(pct_key, s.percentiles), "max")]
    rows = []
    for metric in METRICS:
        st: Stats = s.latency[metric]
        thr = _threshold(s, metric)
        figures = [st.mean, *(st.p(p) for p in s.percentiles), st.max]
        unit = row_unit(figures)
        rows.append(
            [LABELS[metric], unit, f"{st.count:,}", *(_cell(v, thr, unit) for v in figures)]
        )
    return fitted(console, "latency; sched. = from the intended send time", keys, values, rows)


def _throughput_table(s: Summary, energy: Energy | None = None) -> Table:
    r, tok = s.rates, s.tokens
    table = Table(title="throughput and tokens", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("figure")
    table.add_column("value")
    table.add_row("requests/s", num(r.requests_per_s))
    table.add_row("output tokens/s", num(r.output_tokens_per_s))
    for figure, value in energy_rows(energy):
        table.add_row(figure, value)
    fraction = "–" if r.goodput_fraction is None else f"{r.goodput_fraction:.1%}"
    table.add_row(
        "goodput (met every SLO)",
        f"{num(r.goodput_per_s)} req/s, {r.good:,} requests = {fraction} of measured",
    )
    dr = s.decode_rate
    table.add_row(
        "decode rate per user (1/TPOT)",
        f"mean {num(dr.mean)} tok/s, p50 {num(dr.p(50))}, min {num(dr.min)}",
    )
    table.add_row("output tokens", f"{tok.output_total:,} ({_counted_from(tok.sources)})")
    table.add_row(
        "prompt tokens",
        "not in the server's usage"
        if tok.prompt_total is None
        else f"{tok.prompt_total:,} (the server's usage in {_requests(tok.prompt_reported)})",
    )
    if tok.requested:
        table.add_row(
            "output tokens asked vs got",
            f"{_requests(tok.requested)} set max_tokens: {tok.received_exact:,} got exactly "
            f"that many, {tok.received_fewer:,} fewer, {tok.received_more:,} more",
        )
    table.add_row("prompt tokens asked vs got", tok.prompt.describe())
    if s.images is not None:
        table.add_row("images", s.images.describe())
    if (tools := tool_calls_line(s)) is not None:
        table.add_row("tool calls", tools)
    if any(tok.disagreements.values()):
        table.add_row(
            "token counts differ",
            "; ".join(
                f"{DISAGREEMENTS.get(k, k)}: {_requests(v)}"
                for k, v in tok.disagreements.items()
                if v
            ),
        )
    return table


def _requests(n: int) -> str:
    return f"{n:,} request" + ("" if n == 1 else "s")


def _counted_from(sources: Mapping[str, int]) -> str:
    used = [f"{SOURCES.get(k, k)} in {_requests(v)}" for k, v in sources.items() if v]
    return "counted from " + ("; ".join(used) if used else "no request")


def _errors_table(s: Summary) -> Table:
    table = Table(title="errors", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    for kind, count in s.requests.errors_by_kind.items():
        table.add_row(Text(kind, style="red"), f"{count:,}")
    for status, count in s.requests.errors_by_status.items():
        table.add_row(f"  HTTP {status}", f"{count:,}")
    return table


def _failures_line(s: Summary) -> Text:
    f = s.failures
    if f.passed:
        return Text(f"failed requests: {f.describe()}", style="yellow" if f.failed else "")
    return Text.assemble(("FAILED  ", "bold red"), (f.describe(), "red"))


def _slo_lines(s: Summary) -> list[Text]:
    lines = []
    for r in s.slos:
        head = f"{pct_key(r.slo.percentile)} = {ms_short(r.value_s)} ms"
        if r.passed is None:
            lines.append(Text(f"SLO  n/a   {r.slo}  no samples", style="yellow"))
            continue
        attained = "–" if r.attainment is None else f"{r.attainment:.2%}"
        verdict, style = ("PASS", "green") if r.passed else ("FAIL", "bold red")
        lines.append(
            Text.assemble(
                ("SLO  ", ""),
                (f"{verdict:<5}", style),
                f" {r.slo}  {head}, attainment {attained} of {r.count:,} samples",
            )
        )
    return lines


def _validity(s: Summary) -> Group | Text:
    v = s.validity
    if not v.known:
        return Text(v.verdict_line(), style="yellow")
    table = Table(title="validity of the measurement", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("figure", "value", "limit"):
        table.add_column(name)
    for cells in validity_rows(v):
        table.add_row(*cells)
    if not v.client_bound:
        return Group(table, Text(v.verdict_line(), style="green"))
    body = [v.verdict_line()] + [f"• {reason}" for reason in v.reasons]
    banner = Panel(Text("\n".join(body)), title="CLIENT-BOUND", style="bold white on red")
    return Group(table, banner)


def _agents_tables(s: Summary, console: Console) -> list[Table]:
    """A run on agents: each agent judged on its own records (split to fit)."""
    rows = agent_rows(s.validity)
    if not rows:
        return []
    keys = [Column(AGENT_HEADERS[0])]
    values = [Column(h, "left" if h in ("host", "location", "verdict") else "right")
              for h in AGENT_HEADERS[1:]]  # fmt: skip
    title = "validity per agent (ms; error bounds and lags at p99), each on its own records"
    return fitted(console, title, keys, values, rows)


def _oversaturation(s: Summary) -> Panel | None:
    """The verdict that stopped an over-saturated run, with its evidence rows."""
    v = s.oversaturation
    if v is None:
        return None
    body = [v.MEANING] + [f"• {name}: {value}" for name, value in v.evidence()]
    return Panel(Text("\n".join(body)), title=v.HEADLINE, style="bold white on red")


def _turns_table(s: Summary) -> Table | None:
    """A multi-turn run's TTFT by turn index, titled with how its sessions went."""
    rows = turns_rows(s)
    if rows is None or s.sessions is None:
        return None
    title = f"TTFT by turn (ms): {s.sessions.describe()}"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for h in TURN_HEADERS:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def _stairs_tables(s: Summary, console: Console) -> list[Table]:
    """A `steps` or `ramp` run's stairs, each with the rate it offered and what it got (split to
    fit)."""
    rows = stairs_rows(s)
    if rows is None:
        return []
    headers = stair_headers(s)
    keys, values = [Column(headers[0])], [Column(h) for h in headers[1:]]
    return fitted(console, "stairs (ms)", keys, values, rows)
