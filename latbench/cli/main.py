"""Command line: `latbench run`, `sim`, `summary`; the service: `serve`, `submit`, `runs`;
`sweep`, `report`, `compare` (latbench/cli/sweep.py).

Exit codes (one table; CI gates on them):
    0   the run completed; few enough requests failed; no SLO given with --slo was missed
    1   error: the benchmark could not run (target unreachable, bad records file, ...), or it
        is incomplete (a worker process died: its in-flight requests are recorded as lost)
    2   usage: invalid flags or spec
    3   an SLO given with --slo was missed
    4   the run is not valid: the client, not the server, set the pace (client-bound)
    5   compare --fail-on-regression: a metric got worse by more than the limit
    6   too many requests failed: over validity.max_failed_fraction of the measured ones
        (default 1%; requests cut at the overtime count, a stop's cancelled ones do not), or
        none succeeded; with or without --slo
    130 interrupted (Ctrl-C, SIGTERM), in any phase before the results are written; a signal
        after them (the metrics linger) ends the linger and the verdict's code stands
Priority: 130, then 1, then 4 > 6 > 3. A client-bound run exits 4 even when requests failed or
an SLO was missed: its latencies cannot be trusted; a run with too many failures exits 6 before
its SLOs are looked at, since they were measured on the requests that got through.
`sweep` exits 1 when a step is incomplete, 4 when a step was client-bound, and `sweep --find-max`
3 when no step met the SLOs; a step's failures are judged by --max-error-rate (a step past
saturation may fail requests by design), never exit 6.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from latbench import __version__
from latbench.exporter.metrics import DEFAULT_LINGER_S, MetricsExport, parse_listen
from latbench.records.record import read_records
from latbench.render.reconciliation import render_reconciliation
from latbench.render.terminal import render_summary
from latbench.shared.errors import ErrorKind, LatbenchError, SpecError
from latbench.spec.spec import load_spec, load_yaml, read_spec_file
from latbench.summary.server import ServerMetricsError, read_server_metrics, reconcile
from latbench.summary.summary import ClientStats, Summary, summarize
from latbench.vllm.interop import add_vllm_arguments, apply_vllm_flags, save_vllm_result
from latbench.vllm.launch import VllmServer, free_port, parse_launch_args


class Exit(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    SLO_MISSED = 3
    CLIENT_BOUND = 4
    REGRESSION = 5
    FAILED = 6
    INTERRUPTED = 130


def verdict_exit(summary: Summary, gate_slos: bool) -> Exit:
    if summary.client_bound:
        return Exit.CLIENT_BOUND
    if not summary.failures.passed:
        return Exit.FAILED
    if gate_slos and not summary.slo_passed:
        return Exit.SLO_MISSED
    return Exit.OK


# flag dest -> (spec path, converter). One place maps flags onto the spec schema, so the file and
# the flags cannot drift apart.
_FLAG_PATHS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "target": ("target", "base_url"),
    "api": ("target", "api"),
    "model": ("target", "model"),
    "api_key_env": ("target", "api_key_env"),
    "api_key_file": ("target", "api_key_file"),
    "vllm_extensions": ("target", "vllm_extensions"),
    "server_metrics": ("target", "server_metrics"),
    "connect_timeout": ("target", "timeouts", "connect"),
    "first_token_timeout": ("target", "timeouts", "first_token"),
    "idle_timeout": ("target", "timeouts", "idle"),
    "total_timeout": ("target", "timeouts", "total"),
    "retries": ("target", "retry", "max_retries"),
    "retry_max_wait": ("target", "retry", "max_wait"),
    "mode": ("load", "mode"),
    "concurrency": ("load", "concurrency"),
    "rate": ("load", "rate"),
    "burstiness": ("load", "burstiness"),
    "duration": ("load", "duration"),
    "requests": ("load", "requests"),
    "warmup": ("load", "warmup"),
    "cooldown": ("load", "cooldown"),
    "warmup_requests": ("load", "warmup_requests"),
    "cooldown_requests": ("load", "cooldown_requests"),
    "workers": ("load", "workers"),
    "input_tokens": ("workload", "input_tokens"),
    "output_tokens": ("workload", "output_tokens"),
    "ignore_eos": ("workload", "ignore_eos"),
    "seed": ("workload", "seed"),
    "out": ("output_dir",),
}


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=Path, help="run spec file (YAML or JSON); flags override it")
    p.add_argument("--name", help="scenario name (a label in results and metrics)")
    g = p.add_argument_group("target (omit --target to benchmark the built-in simulator)")
    g.add_argument(
        "--target", "--base-url", metavar="URL", help="server root, e.g. http://127.0.0.1:8000"
    )
    g.add_argument(
        "--api",
        choices=["chat", "completions", "anthropic", "responses"],
        help="chat and completions: OpenAI-compatible; anthropic: Messages API; responses: "
        "OpenAI Responses API (docs/hosted-apis.md)",
    )
    g.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    g.add_argument("--api-key-env", metavar="VAR", help="env var holding the API key")
    g.add_argument("--api-key-file", metavar="PATH", help="file holding the API key")
    g.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    g.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    g.add_argument(
        "--vllm-extensions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send ignore_eos/min_tokens/continuous_usage_stats "
        "(default: on, off for OpenAI and Anthropic)",
    )
    g.add_argument(
        "--launch-vllm",
        metavar="'VLLM ARGS'",
        help='start vLLM with these arguments (e.g. "--model M --max-model-len 4096"), '
        "benchmark it, stop it; its log is kept as vllm.log next to the records "
        "(docs/vllm.md). Needs vLLM installed: pip install 'latbench[vllm]'",
    )
    g.add_argument(
        "--vllm-python",
        metavar="PATH",
        help="with --launch-vllm: the Python that has vLLM installed (default: this one)",
    )
    g.add_argument(
        "--server-metrics",
        metavar="URL|auto|off",
        help="the server's Prometheus page to reconcile client and server latency with "
        "(default auto: the target's /metrics when it holds vLLM's metrics)",
    )
    for phase in ("connect", "first-token", "idle", "total"):
        g.add_argument(f"--{phase}-timeout", metavar="SECONDS")
    g.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="retry a request refused for load (429, 529, 503 with Retry-After) up to N times; "
        "its latencies still count from the first send (default 0)",
    )
    g.add_argument(
        "--retry-max-wait",
        metavar="SECONDS",
        help="give up rather than wait longer than this for a retry (default 60)",
    )
    g.add_argument(
        "--sim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="built-in simulator setting, e.g. --sim ttft=0.05 --sim itl=normal:0.01,0.002",
    )
    g = p.add_argument_group("load")
    g.add_argument(
        "--mode",
        choices=["closed", "constant", "poisson"],
        help="default: closed, or poisson when --rate is given",
    )
    g.add_argument("--concurrency", type=int, help="closed loop: users; open loop: a cap")
    g.add_argument("--rate", "--request-rate", type=float, help="open loop: requests per second")
    g.add_argument("--burstiness", type=float, help="poisson: gamma shape (1 = Poisson)")
    g.add_argument("--duration", metavar="DURATION", help="e.g. 30s, 2m")
    g.add_argument("--requests", "--num-prompts", type=int, help="stop after this many requests")
    g.add_argument("--warmup", metavar="DURATION")
    g.add_argument("--cooldown", metavar="DURATION")
    g.add_argument("--warmup-requests", type=int)
    g.add_argument("--cooldown-requests", type=int)
    g.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="sending processes, one event loop each (default: one per 64 streams, at most "
        "one fewer than the cores; docs/performance.md)",
    )
    g = p.add_argument_group("workload")
    g.add_argument("--input-tokens", "--input-len", metavar="DIST", help="e.g. 128, normal:512,64")
    g.add_argument(
        "--output-tokens", "--output-len", metavar="DIST", help="e.g. 128, uniform:64,256"
    )
    src = g.add_mutually_exclusive_group()
    src.add_argument("--prompts", type=Path, metavar="FILE.jsonl", help="prompts, one per line")
    src.add_argument("--sharegpt", type=Path, metavar="FILE.json", help="ShareGPT conversations")
    g.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("verdict and output")
    g.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="SLO",
        help="e.g. ttft:p99<=100ms; makes the exit status 3 when missed. "
        "'default' = p99 TTFT, ITL, TPOT <= 100 ms",
    )
    g.add_argument(
        "--percentiles", "--metric-percentiles", metavar="P,P,..", help="default 50,90,95,99,99.9"
    )
    g.add_argument("--out", type=Path, metavar="DIR", help="results directory")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g = p.add_argument_group("Prometheus (docs/prometheus.md)")
    g.add_argument(
        "--metrics-port",
        metavar="[HOST:]PORT",
        help="serve /metrics during the run (HOST default 127.0.0.1; 0.0.0.0 for all interfaces)",
    )
    g.add_argument(
        "--metrics-linger",
        type=float,
        default=DEFAULT_LINGER_S,
        metavar="SECONDS",
        help="after the run, serve until a scrape has read the final values, at most this long "
        f"(default {DEFAULT_LINGER_S:g})",
    )
    g.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push to this Pushgateway at the start, every few seconds and at the end "
        "(group: job=latbench, target, model, api, scenario)",
    )
    add_vllm_arguments(p)


def _metrics_export(ns: argparse.Namespace) -> MetricsExport | None:
    if ns.metrics_port is None and ns.pushgateway is None:
        return None
    if not ns.metrics_linger >= 0:
        raise SpecError(f"--metrics-linger {ns.metrics_linger:g}: give 0 or more seconds")
    try:
        listen = None if ns.metrics_port is None else parse_listen(ns.metrics_port)
    except ValueError as e:
        raise SpecError(f"--metrics-port {e}") from None
    return MetricsExport(listen, ns.pushgateway, ns.metrics_linger)


def _set(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d.setdefault(key, {})
    d[path[-1]] = value


def spec_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = read_spec_file(ns.spec) if ns.spec else {}
    for dest, path in _FLAG_PATHS.items():
        value = getattr(ns, dest)
        if value is not None:
            _set(data, path, value)
    if ns.rate is not None and ns.mode is None and "mode" not in data.get("load", {}):
        _set(data, ("load", "mode"), "poisson")
    if ns.insecure:
        _set(data, ("target", "verify_tls"), False)
    for h in ns.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise SpecError(f"--header {h!r}: write it as 'Name: value'")
        data.setdefault("target", {}).setdefault("headers", {})[name.strip()] = value.strip()
    if ns.prompts:
        _set(data, ("workload", "source"), "jsonl")
        _set(data, ("workload", "path"), str(ns.prompts))
    if ns.sharegpt:
        _set(data, ("workload", "source"), "sharegpt")
        _set(data, ("workload", "path"), str(ns.sharegpt))
    for kv in ns.sim:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SpecError(f"--sim {kv!r}: write it as KEY=VALUE, e.g. ttft=0.05")
        # YAML scalars: numbers stay numbers, `[...]`/`{...}` give lists and mappings (faults);
        # under the spec's limits (no aliases, bounded size and depth), as a spec file is.
        _set(data, ("sim", key.strip()), load_yaml(value, f"--sim {kv!r:.80}"))
    if ns.slo:
        slos = [s for s in ns.slo if s != "default"]
        if "default" in ns.slo:
            slos = ["ttft:p99<=100ms", "itl:p99<=100ms", "tpot:p99<=100ms", *slos]
        data["slos"] = slos
    if ns.percentiles:
        try:
            data["percentiles"] = [float(x) for x in ns.percentiles.split(",") if x.strip()]
        except ValueError:
            raise SpecError(
                f"--percentiles {ns.percentiles!r}: give numbers, e.g. 50,90,99"
            ) from None
    apply_vllm_flags(ns, data)
    # Durations given as flags stay strings; the spec parses units ("30s", "2m").
    return data


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_run(ns: argparse.Namespace, console: Console, err: Console) -> Exit:
    from latbench.load.runner import Runner
    from latbench.run.benchmark import new_run_id, run_benchmark, target_url
    from latbench.sinks.prometheus import PrometheusSink

    data = spec_from_args(ns)
    launch: VllmServer | None = None
    if ns.launch_vllm is not None:
        if data.get("target", {}).get("base_url") is not None:
            raise SpecError("--launch-vllm starts the server it benchmarks; drop --target")
        port = free_port()
        _set(data, ("target", "base_url"), f"http://127.0.0.1:{port}")
    elif ns.vllm_python is not None:
        raise SpecError("--vllm-python goes with --launch-vllm")
    spec = load_spec(data, source=str(ns.spec) if ns.spec else "flags")
    run_id = new_run_id()
    if ns.launch_vllm is not None:
        launch = VllmServer(
            parse_launch_args(ns.launch_vllm),
            port,
            spec.output_dir / run_id / "vllm.log",
            python=ns.vllm_python,
        )
    export = _metrics_export(ns)
    holder: list[Runner] = []

    def on_runner(runner: Runner) -> None:
        holder.append(runner)
        for sink in runner.sinks:
            if export is not None and isinstance(sink, PrometheusSink):
                export.run_started(sink.labels)  # the Pushgateway group is the run's labels

    if export is not None and export.server is not None:
        err.print(f"metrics: {export.server.url}", highlight=False)
    interrupts = 0  # signals that came before the results were written: the run exits 130
    main_task: asyncio.Task[Any] | None = None
    # Where the command is, for a signal outside the event loop: the run's results written (a
    # signal after them skips the linger and keeps the verdict), the ExitStack unwinding (a
    # signal waits until it is done: raised inside VllmServer.__exit__, it would leave vLLM
    # running), the metrics linger (a signal ends it, as the prompt says).
    results_written = cleaning = lingering = skip_linger = False

    def interrupt(signum: int, frame: object) -> None:
        # Outside the event loop (simulator start, vLLM's launch wait, the metrics linger)
        # SIGTERM means what Ctrl-C does: end now, through the same cleanup.
        nonlocal interrupts, skip_linger, lingering
        if results_written:
            skip_linger = True
            if lingering:
                lingering = False  # one raise: a second would land in the handler of the first
                raise KeyboardInterrupt  # MetricsExport.linger ends its wait on it
            return
        interrupts += 1
        # Only the first raises: a later one would land in the cleanup that the first set off
        # (SimProcess's or VllmServer's stop after a failed start, the ExitStack unwinding).
        if interrupts == 1 and not cleaning:
            raise KeyboardInterrupt

    def start_cleanup() -> None:
        nonlocal cleaning
        cleaning = True

    def on_signal() -> None:
        nonlocal interrupts, skip_linger
        if results_written:  # the loop's last turns: the run is over and its results saved
            skip_linger = True
            return
        interrupts += 1
        if not holder:
            # Preflight (model lookup, a slow /v1/models): nothing is measured yet, so there is
            # nothing to drain; end it now rather than wait out its timeouts.
            if main_task is not None:
                main_task.cancel()
            return
        if interrupts == 1:
            err.print(
                "[yellow]stopping: no new requests; in-flight ones finish "
                "(interrupt again to cancel them)[/]"
            )
            holder[0].stop()
        else:
            holder[0].abort()

    async def main(base_url: str) -> Any:
        nonlocal main_task, results_written
        main_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        result = await run_benchmark(
            spec,
            base_url,
            err,
            on_runner=on_runner,
            metrics=None if export is None else export.metrics,
            run_id=run_id,
        )
        # run_benchmark's last act is writing results.json: a signal from now on keeps the
        # verdict (the loop still turns while it closes, and hears signals).
        results_written = True
        return result

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            if launch is not None:
                err.print(f"starting vLLM (log: {launch.log_path})", highlight=False)
                stack.enter_context(launch)
                err.print(f"vLLM ready at {launch.url}", highlight=False)
            base_url = stack.enter_context(target_url(spec))
            # Closing the loop puts the signals back to their defaults (SIGTERM: die at once);
            # registered before it, this runs after it closes, so the cleanup that follows and
            # the metrics linger still end through `interrupt`.
            stack.callback(lambda: [signal.signal(sig, interrupt) for sig in previous])
            r = stack.enter_context(asyncio.Runner(loop_factory=_new_loop))
            # Entered last, so it runs first when the stack unwinds, whatever ends the block.
            stack.callback(start_cleanup)
            try:
                result = r.run(main(base_url))
            except asyncio.CancelledError:
                if not interrupts:
                    raise
                raise KeyboardInterrupt from None  # a signal during preflight: exit 130
        cleaning = False
        if launch is not None:
            err.print(f"vLLM stopped; its log: {launch.log_path}", highlight=False)
        push_failed = None if export is None else export.run_ended()
        vllm_path = save_vllm_result(ns, result.records_path)
        if vllm_path is not None:
            err.print(f"vllm-format results: {vllm_path}", highlight=False)
        recon = result.reconciliation
        if ns.json:
            doc = result.summary.to_dict()
            if recon is not None:
                doc["reconciliation"] = recon.to_dict()
            sys.stdout.write(
                orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
                + "\n"
            )
        else:
            render_summary(result.summary, console)
            if recon is not None:
                render_reconciliation(recon, console)
            console.print(f"records: {result.records_path}\nresults: {result.results_path}")
        for warning in [] if export is None else export.warnings:
            err.print(f"[yellow]metrics:[/] {warning}", highlight=False)
        if push_failed:
            err.print(f"[red]metrics:[/] {push_failed}", highlight=False)
        if export is not None and export.server is not None and export.linger_s > 0:
            # From here a signal raises (caught below), so one that lands anywhere between this
            # line and the wait still ends the linger; one before it was noted in skip_linger.
            lingering = True
            try:
                if not skip_linger:
                    err.print(
                        f"metrics: serving {export.server.url} until a scrape reads the final "
                        f"values (at most {export.linger_s:g} s; Ctrl-C skips)",
                        highlight=False,
                    )
                    export.linger()
            except KeyboardInterrupt:
                pass
            finally:
                lingering = False
    finally:
        if export is not None:
            export.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if interrupts:
        return Exit.INTERRUPTED
    if result.incomplete is not None:
        err.print(
            f"[red]error:[/] the run is incomplete: {result.incomplete}; the records received "
            f"are kept (results.json says ended: incomplete): {result.results_path}",
            highlight=False,
        )
        return Exit.ERROR
    code = verdict_exit(result.summary, gate_slos=bool(ns.slo))
    # A requested push that failed is an error, unless the verdict already says something worse.
    return Exit.ERROR if push_failed and code == Exit.OK else code


def cmd_summary(ns: argparse.Namespace, console: Console, err: Console) -> Exit:
    f = read_records(ns.records)
    spec = load_spec(f.header.spec if f.header else {}, source=str(ns.records))
    slos = spec.slos
    if ns.slo:
        data = spec_from_args(argparse.Namespace(**{**_blank_run_ns(), "slo": ns.slo}))
        slos = load_spec({"slos": data["slos"]}).slos
    window = (f.footer.window_start, f.footer.window_end) if f.footer else None
    client = ClientStats.from_dict(f.footer.validity) if f.footer and f.footer.validity else None
    if f.footer is None:
        err.print(
            "[yellow]no footer: the run did not end cleanly; the window is derived from "
            "the records[/]"
        )
    summary = summarize(
        f.records,
        window=window,
        slos=slos,
        percentiles=spec.percentiles,
        client=client,
        limits=spec.validity.limits(),
    )
    recon = None
    try:
        server = read_server_metrics(ns.records)
        recon = None if server is None else reconcile(f.records, server)
    except ServerMetricsError as e:
        err.print(f"[yellow]server metrics:[/] {e}; no reconciliation", highlight=False)
    if ns.json:
        doc = summary.to_dict()
        if recon is not None:
            doc["reconciliation"] = recon.to_dict()
        sys.stdout.write(
            orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
            + "\n"
        )
    else:
        render_summary(summary, console)
        if recon is not None:
            render_reconciliation(recon, console)
    if f.footer is not None and f.footer.ended == "incomplete":
        # As the live run said: a worker died, so the run is not whole whatever the figures say.
        lost = [r for r in f.records if r.error == ErrorKind.LOST]
        why = lost[0].error_detail if lost else "a worker process died"
        err.print(
            f"[red]error:[/] the run is incomplete ({len(lost)} requests lost): {why}",
            highlight=False,
        )
        return Exit.ERROR
    return verdict_exit(summary, gate_slos=bool(ns.slo))


def _blank_run_ns() -> dict[str, Any]:
    p = argparse.ArgumentParser()
    _add_run_arguments(p)
    return vars(p.parse_args([]))


def build_parser() -> argparse.ArgumentParser:
    from latbench.sim.__main__ import add_sim_arguments

    p = argparse.ArgumentParser(prog="latbench", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"latbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run a benchmark (no --target: against the built-in simulator)"
    )
    _add_run_arguments(run)
    sim = sub.add_parser(
        "sim", help="serve the built-in simulator (OpenAI, Anthropic or Responses API)"
    )
    add_sim_arguments(sim)
    summ = sub.add_parser("summary", help="summarize a records file (replay)")
    summ.add_argument("records", type=Path)
    summ.add_argument("--slo", action="append", default=[], metavar="SLO")
    summ.add_argument("--json", action="store_true")
    from latbench.cli.remote import add_remote_arguments
    from latbench.service import add_serve_arguments

    serve = sub.add_parser("serve", help="run as a service: HTTP API, schedules (docs/service.md)")
    add_serve_arguments(serve)
    add_remote_arguments(sub)  # submit, runs
    from latbench.cli.sweep import add_commands as add_sweep_commands

    add_sweep_commands(sub)  # sweep, report, compare
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        if ns.command == "run":
            return int(cmd_run(ns, console, err))
        if ns.command == "summary":
            return int(cmd_summary(ns, console, err))
        if ns.command in ("sweep", "report", "compare"):
            from latbench.cli.sweep import main as sweep_main

            return sweep_main(ns, console, err)
        if ns.command in ("serve", "submit", "runs"):
            from latbench.cli.remote import cmd_runs, cmd_submit
            from latbench.service import cmd_serve

            if ns.command == "serve":
                return cmd_serve(ns, err, _new_loop)
            cmd = cmd_submit if ns.command == "submit" else cmd_runs
            return cmd(ns, console, err, _new_loop)
        from latbench.sim.__main__ import config_from_args
        from latbench.sim.__main__ import run as serve_sim

        serve_sim(config_from_args(ns))
        return int(Exit.OK)
    except SpecError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        return int(Exit.USAGE)
    except LatbenchError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        return int(Exit.ERROR)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
