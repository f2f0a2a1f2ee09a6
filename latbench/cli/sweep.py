"""Command line of `latbench sweep`, `latbench report` and `latbench compare` (docs/sweeps.md).

`cli.main` registers these subcommands and dispatches to `main`; exit codes are `cli.main.Exit`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from latbench.shared.errors import SpecError
from latbench.vllm.interop import VLLM_METRICS, parse_percentile_metrics, vllm_result

COMMANDS = ("sweep", "report", "compare")


def parse_fraction(text: str, flag: str) -> float:
    """`5%` or `0.05` -> 0.05. A bare number of 1 or more is refused: 5 could mean either."""
    t = text.strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        v = -1.0
    if not 0 <= v < 1 or (not t.endswith("%") and v >= 1):
        raise SpecError(f"{flag} {text!r}: write a percentage like 5% (or a fraction like 0.05)")
    return v


def add_commands(sub: Any) -> None:
    from latbench.cli.main import _add_run_arguments

    sw = sub.add_parser(
        "sweep",
        help="one workload over several loads; --find-max finds the SLO capacity",
        description="Run the same workload at several concurrencies or request rates (each "
        "step with its own warm-up), or search for the highest load that meets every SLO. "
        "Writes sweep.json and, by default, report.html/.md/.csv in the sweep's directory.",
    )
    _add_run_arguments(sw)
    # The swept flags take a list here; every other run flag keeps its meaning.
    for action in sw._actions:
        if action.dest == "concurrency":
            action.type = str
            action.metavar = "LIST"
            action.help = "concurrencies to step through: 1,2,4,8 or 1:64:x2 or 4:32:4"
        elif action.dest == "rate":
            action.type = str
            action.metavar = "LIST"
            action.help = "request rates to step through: 2,4,8 or 5:40:5 or 1:64:x2"
    g = sw.add_argument_group("sweep (docs/sweeps.md)")
    how = g.add_mutually_exclusive_group()
    how.add_argument(
        "--auto",
        action="store_true",
        help="a synchronous baseline, a saturating step (--max-concurrency users, default 64), "
        "then --steps rates between",
    )
    how.add_argument(
        "--find-max",
        nargs="?",
        const="rate",
        choices=["rate", "concurrency"],
        help="search for the highest rate (or concurrency) at which every SLO holds",
    )
    g.add_argument("--steps", type=int, default=5, help="--auto: rates between (default 5)")
    g.add_argument(
        "--start",
        type=float,
        help="--find-max: first value (default: rate of a one-user baseline step, or 1 user)",
    )
    g.add_argument("--max", type=float, dest="limit", help="--find-max: never go above this")
    g.add_argument(
        "--resolution", default="5%", help="--find-max: stop when the bracket is this narrow"
    )
    g.add_argument(
        "--max-steps",
        type=int,
        default=12,
        help="--find-max: try at most this many loads (a failure's second try is extra)",
    )
    g.add_argument(
        "--max-error-rate",
        default="1%",
        help="a step with more failed requests than this fails (default 1%%)",
    )
    g.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write report.html, .md and .csv in the sweep's directory (default: on)",
    )

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
    _add_output_arguments(rep)
    rep.add_argument(
        "--vllm-json",
        type=Path,
        metavar="PATH",
        help="also write vllm bench serve's results JSON (a list, one per step, for a sweep)",
    )
    rep.add_argument("--percentile-metrics", metavar="M,M,..", help="for --vllm-json")
    rep.add_argument("--metric-percentiles", metavar="P,P,..", help="for --vllm-json")

    cmp = sub.add_parser(
        "compare",
        help="per-metric differences with bootstrap intervals and a better/worse/same verdict",
        description="Compare runs B, C, ... against baseline A. Exit status 5 when "
        "--fail-on-regression is given and a metric got worse by more than it.",
    )
    cmp.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="A (the baseline), B, ...: run directories, results.json or records.jsonl",
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
    _add_output_arguments(cmp, default_all=False)


def _add_output_arguments(p: argparse.ArgumentParser, default_all: bool = True) -> None:
    when = " (default: all three beside the results)" if default_all else ""
    p.add_argument("--html", type=Path, metavar="PATH", help="write the HTML report here" + when)
    p.add_argument("--md", type=Path, metavar="PATH", help="write Markdown here")
    p.add_argument("--csv", type=Path, metavar="PATH", help="write CSV here")


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    if ns.command == "sweep":
        return cmd_sweep(ns, console, err)
    if ns.command == "report":
        return cmd_report(ns, console, err)
    return cmd_compare(ns, console, err)


# --------------------------------------------------------------------------------------------
# sweep


def _plan(ns: argparse.Namespace) -> Any:
    from latbench.sweep.sweep import (
        DEFAULT_SATURATION,
        AutoPlan,
        FindMaxPlan,
        ListPlan,
        parse_values,
    )

    if ns.auto or ns.find_max:
        if ns.concurrency is not None or ns.rate is not None:
            raise SpecError(
                "--auto and --find-max choose the loads: leave out --concurrency/--rate"
            )
        if ns.auto:
            if ns.steps < 1:
                raise SpecError(f"--steps {ns.steps}: give 1 or more")
            return AutoPlan(ns.steps, ns.max_concurrency or DEFAULT_SATURATION)
        for flag, v in (("--start", ns.start), ("--max", ns.limit)):
            if v is not None and not v > 0:
                raise SpecError(f"{flag} {v:g}: give a value above 0")
        if ns.max_steps < 1:
            raise SpecError(f"--max-steps {ns.max_steps}: give 1 or more")
        return FindMaxPlan(
            ns.find_max,
            ns.start,
            ns.limit,
            parse_fraction(ns.resolution, "--resolution"),
            ns.max_steps,
        )
    if (ns.concurrency is None) == (ns.rate is None):
        raise SpecError(
            "sweep needs what to vary: --concurrency LIST or --rate LIST, or --auto, or "
            "--find-max [rate|concurrency]"
        )
    if ns.concurrency is not None:
        return ListPlan("concurrency", tuple(parse_values(ns.concurrency, "concurrency")))
    return ListPlan("rate", tuple(parse_values(ns.rate, "rate")))


def cmd_sweep(ns: argparse.Namespace, console: Console, err: Console) -> int:
    from latbench.cli.main import Exit, _new_loop, spec_from_args
    from latbench.load.runner import Runner
    from latbench.run.benchmark import run_benchmark, target_url
    from latbench.spec.spec import RunSpec, load_spec
    from latbench.sweep.sweep import AutoPlan, FindMaxPlan, run_sweep, step_data

    plan = _plan(ns)
    if ns.metrics_port is not None or ns.pushgateway is not None:
        raise SpecError(
            "sweep does not export Prometheus metrics; run the steps with latbench run "
            "--metrics-port/--pushgateway"
        )
    max_error_rate = parse_fraction(ns.max_error_rate, "--max-error-rate")
    flags = copy.copy(ns)
    flags.concurrency = None
    flags.rate = None
    base = spec_from_args(flags)
    base.setdefault("load", {}).pop("concurrency", None)
    cap = None if isinstance(plan, AutoPlan) else ns.max_concurrency
    first = (
        ("concurrency", 1.0)
        if isinstance(plan, AutoPlan) or (isinstance(plan, FindMaxPlan) and ns.start is None)
        else (plan.variable, plan.start if isinstance(plan, FindMaxPlan) else plan.values[0])
    )
    spec0 = load_spec(step_data(base, first[0], first[1], cap), source="sweep")
    runners: list[Runner] = []
    interrupts = 0

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            err.print("[yellow]stopping the sweep: the current step drains and is kept[/]")
        if runners:
            (runners[-1].stop if interrupts == 1 else runners[-1].abort)()

    async def step(spec: RunSpec, run_id: str) -> Any:
        return await run_benchmark(spec, base_url, err, on_runner=runners.append, run_id=run_id)

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        return await run_sweep(
            plan,
            base,
            step,
            err,
            cap=cap,
            max_error_rate=max_error_rate,
            should_stop=lambda: interrupts > 0,
        )

    cleaning = False

    def interrupt(signum: int, frame: object) -> None:
        # Before the loop (the embedded simulator's start) SIGTERM means what Ctrl-C does: end
        # now (130). Once the loop has closed (the sweep ended, or failed), the simulator's stop
        # is cleanup: a signal raised inside it would skip its SIGKILL fallback, and after a
        # finished sweep (sweep.json written) it would lose the report and the verdict, as a
        # signal after `latbench run` wrote its results keeps them. So it is ignored there.
        nonlocal interrupts
        if cleaning:
            return
        interrupts += 1
        if interrupts == 1:
            raise KeyboardInterrupt

    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, interrupt) for sig in sigs}
    try:
        with target_url(spec0) as base_url:
            try:
                with asyncio.Runner(loop_factory=_new_loop) as r:
                    result = r.run(go())
            finally:
                cleaning = True
                # Closing the loop put SIGTERM back to its default (die at once), and the
                # simulator's stop is still to come.
                for sig in sigs:
                    signal.signal(sig, interrupt)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if ns.json:  # stdout carries sweep.json; the human lines go to stderr
        sys.stdout.write(result.path.read_text())
        console = err
    cap_found = result.capacity
    if cap_found is not None:
        style = "green" if cap_found.value is not None else "red"
        console.print(f"[bold {style}]{cap_found.headline()}[/]", highlight=False)
        for note in cap_found.notes:
            console.print(f"  note: {note}", highlight=False)
    console.print(f"sweep: {result.path}", highlight=False)
    if (ns.save_result or ns.result_dir or ns.result_filename) and result.steps:
        # vLLM's format holds one run: a list of them, one per step, in the sweep's directory
        # (or where --result-dir/--result-filename say).
        from latbench.records.record import read_records
        from latbench.vllm.interop import DEFAULT_RESULT_FILENAME, write_vllm_result

        metrics = parse_percentile_metrics(ns.percentile_metrics)
        docs = [
            vllm_result(read_records(st.records_path), percentile_metrics=metrics)
            for st in result.steps
        ]
        target = (ns.result_dir or result.directory) / (
            ns.result_filename or DEFAULT_RESULT_FILENAME
        )
        write_vllm_result(target, docs)
        console.print(f"vllm-format results: {target}", highlight=False)
    if ns.report and result.steps:
        from latbench.render import Outputs, load_results, write_report

        out = Outputs.choose(result.directory, None, None, None)
        write_report(load_results(result.path), out)
        console.print("report: " + ", ".join(str(p) for p in out.written()), highlight=False)
    if interrupts:
        return int(Exit.INTERRUPTED)
    lost = [st for st in result.steps if st.ended == "incomplete"]
    if lost:  # a worker died: the sweep stopped at that step, as `latbench run` exits 1
        err.print(
            f"[red]error:[/] step {lost[0].index} is incomplete (a worker process died; its "
            "in-flight requests are recorded as lost); the sweep stopped there",
            highlight=False,
        )
        return int(Exit.ERROR)
    if result.any_client_bound:
        return int(Exit.CLIENT_BOUND)
    if isinstance(plan, FindMaxPlan) and (cap_found is None or cap_found.value is None):
        return int(Exit.SLO_MISSED)
    return int(Exit.OK)


# --------------------------------------------------------------------------------------------
# report


def _percentiles(text: str | None, default: list[float] | None) -> list[float] | None:
    if text is None:
        return default
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or not all(0 < p < 100 for p in out):
        raise SpecError(f"--metric-percentiles {text!r}: give numbers in (0, 100), e.g. 50,99")
    return out


def cmd_report(ns: argparse.Namespace, console: Console, err: Console) -> int:
    from latbench.cli.main import Exit
    from latbench.render import Outputs, Sweep, load_results, results_dir, write_report
    from latbench.vllm.interop import write_vllm_result

    results = load_results(ns.results)
    for note in results.notes if isinstance(results, Sweep) else []:
        err.print(f"[yellow]warning:[/] {note}", highlight=False)
    out = Outputs.choose(results_dir(results), ns.html, ns.md, ns.csv)
    write_report(results, out)
    for p in out.written():
        console.print(f"wrote {p}", highlight=False)
    if ns.vllm_json is not None:
        metrics = parse_percentile_metrics(ns.percentile_metrics)
        pcts = _percentiles(ns.metric_percentiles, None)
        runs = results.runs if isinstance(results, Sweep) else [results]
        docs = [vllm_result(r.file, percentile_metrics=metrics, percentiles=pcts) for r in runs]
        write_vllm_result(ns.vllm_json, docs if isinstance(results, Sweep) else docs[0])  # type: ignore[arg-type]
        console.print(f"wrote {ns.vllm_json}", highlight=False)
    return int(Exit.OK)


# --------------------------------------------------------------------------------------------
# compare


def _compare_metrics(text: str | None) -> list[str]:
    from latbench.spec.slo import METRICS
    from latbench.summary.compare import DEFAULT_COMPARE_METRICS

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


def cmd_compare(ns: argparse.Namespace, console: Console, err: Console) -> int:
    from latbench.cli.main import Exit
    from latbench.render import Outputs, compare_paths, write_comparison
    from latbench.summary.compare import DEFAULT_MARGIN

    if len(ns.runs) < 2:
        raise SpecError("compare needs at least two runs: the baseline A, then B (and more)")
    if ns.resamples < 100:
        raise SpecError(f"--resamples {ns.resamples}: give 100 or more for a 95 % interval")
    gate = ns.fail_on_regression is not None
    margin = (
        parse_fraction(ns.fail_on_regression, "--fail-on-regression") if gate else (DEFAULT_MARGIN)
    )
    pcts = _percentiles(ns.metric_percentiles, [50.0, 90.0, 99.0])
    cmp = compare_paths(
        ns.runs,
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
            "margin": margin,
            "comparisons": [
                {"run": label, "rows": [r.to_dict() for r in rows]}
                for label, rows in zip(cmp.labels[1:], cmp.results, strict=True)
            ],
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_comparison(cmp, console)
    for p in out.written():
        (err if ns.json else console).print(f"wrote {p}", highlight=False)  # stdout: the JSON
    bound = [label for label, run in cmp.runs if run.summary.client_bound]
    if bound:
        err.print(
            f"[red]client-bound:[/] {', '.join(bound)}: its latencies are the client's, so the "
            "comparison cannot be trusted",
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


def _print_comparison(cmp: Any, console: Console) -> None:
    style = {"worse": "bold red", "better": "bold green", "same": ""}
    for label, rows in zip(cmp.labels[1:], cmp.results, strict=True):
        t = Table(title=f"{label} vs {cmp.labels[0]} (A)", title_justify="left")
        for h in ("metric", "A", "B", "change", "95% interval", "verdict"):
            t.add_column(h, justify="left" if h in ("metric", "verdict") else "right")
        for r in rows:
            is_rate = not r.stat

            def f(x: float | None, is_rate: bool = is_rate) -> str:
                if x is None:
                    return "–"
                return f"{x:,.2f}" if is_rate else f"{x * 1e3:,.2f} ms"

            ci = "–" if r.ci is None else f"[{r.ci[0]:+.1%}, {r.ci[1]:+.1%}]"
            change = "–" if r.change is None else f"{r.change:+.1%}"
            cells = (r.label, f(r.a), f(r.b), change, ci)
            # Text, not markup: an interval like "[+1.0%, ...]" would read as a style tag.
            t.add_row(*map(Text, cells), Text(r.verdict, style=style[r.verdict]))
        console.print(t)
