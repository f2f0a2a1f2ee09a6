"""`latbench sweep`: one workload over several loads, or the search for the highest load that
meets every SLO (docs/sweeps.md). It takes every `run` flag; --concurrency and --rate take a list.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import signal
import sys
from typing import Any

from rich.console import Console

from latbench.cli.common import (
    SIGNALS,
    Exit,
    add_run_arguments,
    new_loop,
    on_loop_signals,
    parse_fraction,
    print_error,
    repeated,
    signals_handled_by,
    spec_from_args,
)
from latbench.load.runner import Runner
from latbench.records.record import read_records
from latbench.render import Outputs, load_results, write_report
from latbench.run.benchmark import run_benchmark, target_url
from latbench.shared.errors import SpecError
from latbench.spec import RunSpec, load_spec
from latbench.sweep import (
    DEFAULT_SATURATION,
    AutoPlan,
    FindMaxPlan,
    ListPlan,
    parse_values,
    run_sweep,
    step_data,
)
from latbench.vllm.interop import (
    DEFAULT_RESULT_FILENAME,
    parse_percentile_metrics,
    vllm_result,
    write_vllm_result,
)

# Loads that set their own rate over time: a ramp, a staircase, a trace's instants.
UNSWEPT_MODES = ("ramp", "steps", "trace")


def add_arguments(sub: Any) -> None:
    sw = sub.add_parser(
        "sweep",
        help="one workload over several loads; --find-max finds the SLO capacity",
        description="Run the same workload at several concurrencies or request rates (each "
        "step with its own warm-up), or search for the highest load that meets every SLO. "
        "Writes sweep.json and, by default, report.html/.md/.csv in the sweep's directory.",
    )
    add_run_arguments(sw)
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


def _plan(ns: argparse.Namespace) -> AutoPlan | FindMaxPlan | ListPlan:
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


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    # The whole sweep N times, not each step N times in a row: a drift of the server over the
    # sweep then spreads over every step alike instead of landing on the later steps.
    return repeated(ns, sweep_once, console, err, "sweep")


def sweep_once(ns: argparse.Namespace, console: Console, err: Console) -> int:
    plan = _plan(ns)
    if ns.metrics_port is not None or ns.pushgateway is not None:
        raise SpecError(
            "sweep does not export Prometheus metrics; run the steps with latbench run "
            "--metrics-port/--pushgateway"
        )
    if ns.otlp_metrics is not None:
        raise SpecError(
            "sweep does not export OTLP metrics; run the steps with latbench run --otlp-metrics"
        )
    max_error_rate = parse_fraction(ns.max_error_rate, "--max-error-rate")
    flags = copy.copy(ns)
    flags.concurrency = None
    flags.rate = None
    base = spec_from_args(flags)
    mode = base.setdefault("load", {}).get("mode")
    if mode in UNSWEPT_MODES:
        # Each step would replace the shape by a rate or a concurrency (or fail on its fields).
        raise SpecError(
            f"a sweep varies the rate or the concurrency; load.mode {mode} cannot be swept "
            "(run it with latbench run)"
        )
    base["load"].pop("concurrency", None)
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
        on_loop_signals(on_signal)
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

    with signals_handled_by(interrupt), target_url(spec0) as base_url:
        try:
            with asyncio.Runner(loop_factory=new_loop) as r:
                result = r.run(go())
        finally:
            cleaning = True
            # Closing the loop put SIGTERM back to its default (die at once), and the
            # simulator's stop is still to come.
            for sig in SIGNALS:
                signal.signal(sig, interrupt)
    if ns.json:  # stdout carries sweep.json; the human lines go to stderr
        sys.stdout.write(result.path.read_text())
        console = err
    cap_found = result.capacity
    if cap_found is not None:
        style = "green" if cap_found.value is not None else "red"
        console.print(f"[bold {style}]{cap_found.headline()}[/]", highlight=False)
        for note in cap_found.notes:
            console.print(f"  note: {note}", highlight=False)
    console.print(f"sweep: {result.path}", highlight=False, soft_wrap=True)
    if (ns.save_result or ns.result_dir or ns.result_filename) and result.steps:
        # vLLM's format holds one run: a list of them, one per step, in the sweep's directory
        # (or where --result-dir/--result-filename say).
        metrics = parse_percentile_metrics(ns.percentile_metrics)
        docs = [
            vllm_result(
                read_records(st.records_path), percentile_metrics=metrics, detailed=ns.save_detailed
            )
            for st in result.steps
        ]
        target = (ns.result_dir or result.directory) / (
            ns.result_filename or DEFAULT_RESULT_FILENAME
        )
        write_vllm_result(target, docs)
        console.print(f"vllm-format results: {target}", highlight=False, soft_wrap=True)
    if ns.report and result.steps:
        out = Outputs.choose(result.directory, None, None, None)
        write_report(load_results(result.path), out)
        console.print(
            "report: " + ", ".join(str(p) for p in out.written()), highlight=False, soft_wrap=True
        )
    if interrupts:
        return int(Exit.INTERRUPTED)
    lost = [st for st in result.steps if st.ended == "incomplete"]
    if lost:  # a worker died: the sweep stopped at that step, as `latbench run` exits 1
        print_error(
            err,
            f"step {lost[0].index} is incomplete (a worker process died; its in-flight "
            "requests are recorded as lost); the sweep stopped there",
        )
        return int(Exit.ERROR)
    if result.any_client_bound:
        return int(Exit.CLIENT_BOUND)
    if isinstance(plan, FindMaxPlan) and (cap_found is None or cap_found.value is None):
        return int(Exit.SLO_MISSED)
    return int(Exit.OK)
