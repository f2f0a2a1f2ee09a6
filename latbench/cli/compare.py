"""`latbench compare`: runs B, C, ... against baseline A, metric by metric, with bootstrap
intervals and a better/worse/same verdict; exit 5 on a regression when asked (docs/sweeps.md).

A side is one run or several runs of one configuration: `compare A B` where each is a run or a
directory of runs (`run --repeat N` writes one), or `compare --a A1 A2 --b B1 B2 [--b C1 ..]`.
The table fits 80 columns: the unit goes in the metric's name and not in every cell, rates get
short names, and the table has no vertical rules; at 80 columns the old layout (89 wide) wrapped
each interval over two lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from latbench.cli.common import Exit, add_output_arguments, parse_fraction, parse_percentiles
from latbench.render import Comparison, Outputs, compare_paths, write_comparison
from latbench.render.text import SPREAD_LEGEND, spread_text
from latbench.shared.errors import SpecError
from latbench.shared.units import ms_short, num
from latbench.spec.slo import METRICS
from latbench.summary.compare import DEFAULT_COMPARE_METRICS, DEFAULT_MARGIN
from latbench.vllm.interop import VLLM_METRICS


def add_arguments(sub: Any) -> None:
    cmp = sub.add_parser(
        "compare",
        help="per-metric differences with bootstrap intervals and a better/worse/same verdict",
        description="Compare B, C, ... against baseline A. A side is one run or several runs "
        "of one configuration (a directory of runs, or --a/--b), bootstrapped over runs and then "
        "requests, so that run-to-run variation counts. Exit status 5 when --fail-on-regression "
        "is given and a metric got worse by more than it (docs/sweeps.md).",
    )
    cmp.add_argument(
        "runs",
        nargs="*",
        type=Path,
        help="A (the baseline), B, ...: each a run (its directory, results.json or "
        "records.jsonl) or a directory of runs of one configuration (run --repeat N)",
    )
    cmp.add_argument(
        "--a",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="the baseline's runs (instead of A): several runs of one configuration",
    )
    cmp.add_argument(
        "--b",
        nargs="+",
        type=Path,
        action="append",
        metavar="RUN",
        help="a side compared with --a, as several runs; give --b again for C, ...",
    )
    cmp.add_argument(
        "--fail-on-regression",
        metavar="PCT",
        help="exit 5 when a metric is worse by more than PCT (e.g. 5%%) with 95 %% confidence; "
        "also where 'same' ends (default 5%%)",
    )
    cmp.add_argument(
        "--percentile-metrics",
        metavar="M,M,..",
        help="metrics to compare (default ttft,ttfo,itl,tpot,e2e; vLLM names accepted)",
    )
    cmp.add_argument(
        "--metric-percentiles", metavar="P,P,..", help="percentiles to compare (default 50,90,99)"
    )
    cmp.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    cmp.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (0)")
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    add_output_arguments(cmp, default_all=False)


def _compare_metrics(text: str | None) -> list[str]:
    if text is None:
        return list(DEFAULT_COMPARE_METRICS)
    out = []
    for name in (m.strip() for m in text.split(",") if m.strip()):
        metric = VLLM_METRICS.get(name, name)
        if metric not in METRICS:
            raise SpecError(
                f"--percentile-metrics {text!r}: unknown metric {name!r}; allowed: "
                f"{', '.join(METRICS)} (or vLLM's {', '.join(VLLM_METRICS)})"
            )
        out.append(metric)
    return out


def _sides(ns: argparse.Namespace) -> list[list[Path]]:
    if ns.a is not None or ns.b is not None:
        if ns.runs:
            raise SpecError("give the sides as arguments (A B ..) or as --a/--b, not both")
        if ns.a is None or ns.b is None:
            raise SpecError("--a and --b go together: the baseline's runs, then the other's")
        return [ns.a, *ns.b]
    if len(ns.runs) < 2:
        raise SpecError("compare needs at least two runs: the baseline A, then B (and more)")
    return [[p] for p in ns.runs]


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    sides = _sides(ns)
    if ns.resamples < 100:
        raise SpecError(f"--resamples {ns.resamples}: give 100 or more for a 95 % interval")
    gate = ns.fail_on_regression is not None
    margin = (
        parse_fraction(ns.fail_on_regression, "--fail-on-regression") if gate else (DEFAULT_MARGIN)
    )
    pcts = parse_percentiles(ns.metric_percentiles, [50.0, 90.0, 99.0])
    cmp = compare_paths(
        sides,
        metrics=_compare_metrics(ns.percentile_metrics),
        stats=[f"p{p:g}" for p in pcts or []],
        margin=margin,
        resamples=ns.resamples,
        seed=ns.seed,
    )
    out = Outputs(ns.html, ns.md, ns.csv)
    write_comparison(cmp, out)
    if ns.json:
        doc = {
            "baseline": cmp.labels[0],
            "baseline_runs": [run.run_id for run in cmp.sides[0].runs],
            "margin": margin,
            "method": cmp.method,
            "run_to_run_accounted": cmp.run_to_run,
            "comparisons": [
                {
                    "run": side.label,
                    "runs": [run.run_id for run in side.runs],
                    "rows": [r.to_dict() for r in rows],
                }
                for side, rows in zip(cmp.sides[1:], cmp.results, strict=True)
            ],
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_comparison(cmp, console)
    for p in out.written():
        (err if ns.json else console).print(f"wrote {p}", highlight=False)  # stdout: the JSON
    bound = [(label, run) for label, run in cmp.runs if run.summary.client_bound]
    if bound:
        # Each run's own headline: the checks that fired there, not one stock sentence.
        for label, run in bound:
            err.print(f"[red]{label}:[/] {run.summary.validity.verdict_line()}", highlight=False)
        err.print(
            f"[red]client-bound:[/] {', '.join(label for label, _ in bound)}: "
            "the comparison cannot be trusted (see each run's validity reasons)",
            highlight=False,
        )
        return int(Exit.CLIENT_BOUND)
    worse = cmp.regressions()
    if gate and worse:
        err.print(
            f"[red]regression:[/] {len(worse)} metric(s) worse by more than {margin:.0%}: "
            + ", ".join(f"{label}: {r.label} {r.change:+.1%}" for label, r in worse),
            highlight=False,
        )
        return int(Exit.REGRESSION)
    return int(Exit.OK)


# Rates by short names: the metric column is the table's widest.
RATE_NAMES = {
    "output_tokens_per_s": "tokens/s",
    "requests_per_s": "requests/s",
    "goodput_per_s": "goodput/s",
}


def pct(x: float) -> str:
    """A relative change: one decimal up to ±100 %, none beyond (the width stays 7)."""
    return f"{x:+.1%}" if abs(x) < 1 else f"{x:+,.0%}"


def _print_comparison(cmp: Comparison, console: Console) -> None:
    style = {"worse": "bold red", "better": "bold green", "same": ""}
    spread = any(len(s.runs) > 1 for s in cmp.sides)
    console.print(cmp.method, highlight=False)
    for label, rows in zip(cmp.labels[1:], cmp.results, strict=True):
        t = Table(
            title=f"B: {label}\nA: {cmp.labels[0]}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
        )
        headers = ["metric", "A", "B", "change", "95% interval", "verdict"]
        for h in [*headers, *(["spread"] if spread else [])]:
            t.add_column(h, justify="left" if h in ("metric", "verdict") else "right")
        for r in rows:
            is_rate = not r.stat
            name = RATE_NAMES.get(r.metric, r.metric) if is_rate else f"{r.label} ms"

            def f(x: float | None, is_rate: bool = is_rate) -> str:
                return num(x) if is_rate else ms_short(x)

            ci = "–" if r.ci is None else f"[{pct(r.ci[0])}, {pct(r.ci[1])}]"
            change = "–" if r.change is None else pct(r.change)
            cells = [name, f(r.a), f(r.b), change, ci]
            # Text, not markup: an interval like "[+1.0%, ...]" would read as a style tag.
            row = [*map(Text, cells), Text(r.verdict, style=style[r.verdict])]
            if spread:
                row.append(Text(spread_text(r), style="yellow" if r.spread_dominates else ""))
            t.add_row(*row)
        console.print(t)
    if spread:
        console.print(SPREAD_LEGEND, highlight=False)
