"""`latbench summary`: a records file summarized again (replay), with the exit status `run` gave.

The figures are recomputed from the records, so a file from an old run, or another machine,
reads the same as the run that wrote it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from latbench.cli.common import (
    Exit,
    add_run_arguments,
    print_error,
    show_summary,
    spec_from_args,
    verdict_exit,
)
from latbench.records.rundir import RunDir
from latbench.shared.errors import ErrorKind
from latbench.spec import load_spec
from latbench.summary.energy import energy_of
from latbench.summary.server_metrics import ServerMetricsError, read_server_metrics, reconcile
from latbench.summary.spans import join_spans
from latbench.summary.summary import summarize_file


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("summary", help="summarize a records file (replay)")
    p.add_argument("records", type=Path)
    p.add_argument("--slo", action="append", default=[], metavar="SLO")
    p.add_argument("--json", action="store_true")


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    run = RunDir.of_records(ns.records)
    f = run.read_records()
    spec = load_spec(f.header.spec if f.header else {}, source=str(ns.records))
    if ns.slo:
        # --slo as `run` reads it ('default' and all), through the same flag-to-spec mapping.
        data = spec_from_args(argparse.Namespace(**{**_blank_run_ns(), "slo": ns.slo}))
        spec = spec.model_copy(update={"slos": load_spec({"slos": data["slos"]}).slos})
    if f.footer is None:
        err.print(
            "[yellow]no footer: the run did not end cleanly; the window is derived from "
            "the records[/]"
        )
    summary = summarize_file(f, spec)
    recon = None
    try:
        server = read_server_metrics(run)
        recon = None if server is None else reconcile(f.records, server)
    except ServerMetricsError as e:
        err.print(f"[yellow]server metrics:[/] {e}; no reconciliation", highlight=False)
    energy = None
    if f.gpu and summary.window is not None:  # the GPU samples the run took (docs/gpu.md)
        energy = energy_of(f.gpu, f.records, (summary.window.start_ns, summary.window.end_ns))
    # The span lines the run received, joined again: the same "server_spans" as results.json.
    receiver = None if f.footer is None else f.footer.span_receiver
    spans = join_spans(f.records, f.spans, f.header, receiver)
    show_summary(summary, recon, console, ns.json, energy, spans)
    if f.footer is not None and f.footer.ended == "incomplete":
        # As the live run said: a worker died, so the run is not whole whatever the figures say.
        lost = [r for r in f.records if r.error == ErrorKind.LOST]
        why = lost[0].error_detail if lost else "a worker process died"
        short = summary.validity.shortfall  # the runner's count, from the footer
        said = "" if short is None else f"; {short.describe()}"
        print_error(err, f"the run is incomplete ({len(lost)} requests lost): {why}{said}")
        return Exit.ERROR
    return verdict_exit(summary, gate_slos=bool(ns.slo))


def _blank_run_ns() -> dict[str, Any]:
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    return vars(p.parse_args([]))
