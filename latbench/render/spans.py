"""Rendering the per-request join with the server's spans (latbench/summary/spans.py): the
terminal table after a run and in `latbench summary`, and the rows and lines the Markdown and
HTML reports reuse, so every place a user looks says the same thing in the same words."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from latbench.render.fit import Column, print_fitted
from latbench.shared.units import row_unit, short
from latbench.summary.spans import SpanJoin

LABELS: dict[str, str] = {
    "client_ttft": "TTFT, client",
    "server_ttft": "TTFT, server",
    "outside_ttft": "outside the server",
    "front_end": "front end (server)",
    "queue": "queue",
    "prefill": "prefill",
    "decode": "decode",
    "outside_e2e": "E2E outside the server",
}
PART_LABELS: dict[str, str] = {
    "outside_ttft": "outside the server",
    "front_end": "front end",
    "queue": "queue",
    "prefill": "prefill",
}
STATS: tuple[str, ...] = ("mean", "min", "p50", "p90", "p99", "max")
HEADERS: tuple[str, ...] = ("figure", "unit", "n", *STATS)
# Differences of two clocks' readings can be negative: shown with their sign.
SIGNED = frozenset({"outside_ttft", "outside_e2e", "front_end"})
ZERO_S = 5e-6  # under half the last digit shown (0.01 ms)
ZERO_SHARE = 5e-4  # under half the last digit of a share shown (0.1%)


def _share(v: float) -> str:
    # A share that rounds to zero reads as "0.0%", not "-0.0%", as the table's zero does.
    return f"{0.0 if abs(v) < ZERO_SHARE else v:.1%}"


def title(j: SpanJoin) -> str:
    by_id = j.matched_by_request_id
    how = f" ({by_id} by request id)" if by_id else ""
    return (
        f"client vs server, per request: {j.matched} measured requests joined with the "
        f"server's own spans{how}; each side on its own clock"
    )


def table_rows(j: SpanJoin) -> list[list[str]]:
    """One row per figure: its label, unit, n and `STATS`, as strings."""
    rows = []
    for name, d in j.distributions().items():
        # A difference of float seconds that is zero reads as "-0.00": shown as the zero it is.
        values = [None if (v := d[s]) is None else 0.0 if abs(v) < ZERO_S else v for s in STATS]
        unit = row_unit(float(v) for v in values if v is not None)
        sign = name in SIGNED
        rows.append([
            LABELS[name],
            unit,
            f"{d['n']:,}",
            *(short(None if v is None else float(v), unit, sign=sign) for v in values),
        ])  # fmt: skip
    return rows


def split_line(j: SpanJoin) -> str | None:
    """Client TTFT split into its parts, in words; None when no request has every part."""
    split = j.ttft_split()
    if not split["n"] or any(v is None for v in split["of_mean"].values()):
        return None
    mean = j.distributions()["client_ttft"]["mean"]
    unit = row_unit([None if mean is None else float(mean)])
    mean_txt = short(None if mean is None else float(mean), unit)
    of_mean = " + ".join(f"{PART_LABELS[k]} {_share(v)}" for k, v in split["of_mean"].items())
    medians = ", ".join(
        f"{PART_LABELS[k]} {_share(v)}" for k, v in split["median_share"].items() if v is not None
    )
    return (
        f"TTFT split: mean {mean_txt} {unit} = {of_mean} (of the mean; median share per request: "
        f"{medians})"
    )


def bound_line(j: SpanJoin) -> str | None:
    """How far the client's own stamping may have moved the outside part (and client TTFT), in
    words: the error bound of its percentiles (summary/spans.py); None without requests."""
    d = j.distributions()["outside_ttft"]
    if not d["n"]:
        return None
    bound = d["error_bound"]
    if not bound["known"]:
        return (
            "outside the server: no error bound for the client's stamps (a request lacks one), "
            "so how much of it is the client's own lateness is not known"
        )
    stats = ("p50", "p90", "p99")
    over = [float(bound[s]["over_s"]) for s in stats]
    under = [float(bound[s]["under_s"]) for s in stats]
    unit = row_unit([*over, *under])
    text = ", ".join(f"{s} {short(v, unit)}" for s, v in zip(stats, over, strict=True))
    line = (
        f"outside the server holds the client's own stamping error: it may be overstated by up to "
        f"{text} {unit}"
    )
    if any(v > 0 for v in under):
        under_text = ", ".join(f"{s} {short(v, unit)}" for s, v in zip(stats, under, strict=True))
        line += f" and understated by up to {under_text} {unit}"
    return line + " (the error bound; validity judges the run by it)"


def skew_line(j: SpanJoin) -> str | None:
    """The clock-skew estimate in words; None without one."""
    k = j.skew()
    if not k["n"] or k["median"] is None:
        return None
    vals = [float(v) if (v := k[s]) is not None else None for s in ("median", "p10", "p90")]
    unit = row_unit(vals)
    med, p10, p90 = (short(v, unit, sign=True) for v in vals)
    return (
        f"span start minus send, on the server's and the client's wall clocks: median {med} "
        f"{unit} (p10 {p10}, p90 {p90}); clock skew plus one-way delay, used in no figure"
    )


def count_notes(j: SpanJoin) -> list[tuple[str, str]]:
    """(severity, text) for everything that did not join cleanly: "warn" or "error"."""
    out: list[tuple[str, str]] = []
    if j.requests_without_span:
        out.append(("warn", f"{j.requests_without_span:,} measured requests had no span"))
    if j.spans_without_request:
        out.append(("warn", f"{j.spans_without_request:,} spans matched no request"))
    if j.duplicate_spans:
        out.append(("warn", f"{j.duplicate_spans:,} spans repeated a trace already received"))
    if j.spans_of_unmeasured:
        out.append(("info", f"{j.spans_of_unmeasured:,} spans of warm-up or cool-down requests"))
    if j.spans_of_failed:
        out.append(("info", f"{j.spans_of_failed:,} spans of requests that failed at the client"))
    if j.token_mismatches:
        out.append(
            ("warn", f"{j.token_mismatches:,} requests whose output tokens differ between sides")
        )
    if j.server_ttft_above_client:
        out.append(
            (
                "error",
                f"{j.server_ttft_above_client:,} requests with a server TTFT above the client's: "
                "a wrong join, or a clock or record is wrong",
            )
        )
    return out


def text_lines(j: SpanJoin) -> list[str]:
    """The lines beside the table, plain (Markdown, HTML)."""
    lines = [x for x in (split_line(j), bound_line(j), skew_line(j)) if x is not None]
    return lines + [text for _, text in count_notes(j)]


_STYLE = {"info": "", "warn": "yellow", "error": "red"}


def render_spans(j: SpanJoin, console: Console) -> None:
    console.print(Text(title(j)))
    print_fitted(
        console,
        None,
        [Column(HEADERS[0], "left"), Column(HEADERS[1], "left")],
        [Column(h) for h in HEADERS[2:]],
        table_rows(j),
    )
    for line in (split_line(j), bound_line(j), skew_line(j)):
        if line is not None:
            console.print(Text(line))
    for severity, text in count_notes(j):
        console.print(Text(text, style=_STYLE[severity]))
