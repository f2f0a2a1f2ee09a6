"""`latbench report`: the HTML (self-contained), Markdown and CSV report of a run or a sweep, and
vLLM's results JSON, all recomputed from the records (docs/sweeps.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from latbench.cli.common import Exit, add_output_arguments, parse_percentiles
from latbench.render import Outputs, Sweep, load_results, results_dir, write_report
from latbench.vllm.interop import parse_percentile_metrics, vllm_result, write_vllm_result


def add_arguments(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="HTML (self-contained), Markdown and CSV report of a run or a sweep",
        description="Recompute everything from the records and write report.html, report.md "
        "and report.csv beside the results (or only the files named).",
    )
    rep.add_argument(
        "results",
        type=Path,
        help="a run or sweep directory, results.json, records.jsonl or sweep.json",
    )
    add_output_arguments(rep)
    rep.add_argument(
        "--vllm-json",
        type=Path,
        metavar="PATH",
        help="also write vllm bench serve's results JSON (a list, one per step, for a sweep)",
    )
    rep.add_argument("--percentile-metrics", metavar="M,M,..", help="for --vllm-json")
    rep.add_argument("--metric-percentiles", metavar="P,P,..", help="for --vllm-json")


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    results = load_results(ns.results)
    for note in results.notes if isinstance(results, Sweep) else []:
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    out = Outputs.choose(results_dir(results), ns.html, ns.md, ns.csv)
    write_report(results, out)
    for p in out.written():
        console.print(f"wrote {p}", highlight=False, soft_wrap=True)
    if ns.vllm_json is not None:
        metrics = parse_percentile_metrics(ns.percentile_metrics)
        pcts = parse_percentiles(ns.metric_percentiles, None)
        runs = results.runs if isinstance(results, Sweep) else [results]
        docs = [vllm_result(r.file, percentile_metrics=metrics, percentiles=pcts) for r in runs]
        write_vllm_result(ns.vllm_json, docs if isinstance(results, Sweep) else docs[0])  # type: ignore[arg-type]
        console.print(f"wrote {ns.vllm_json}", highlight=False, soft_wrap=True)
    return int(Exit.OK)
