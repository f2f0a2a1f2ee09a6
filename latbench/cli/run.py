"""`latbench run`: one benchmark, its tables, its verdict as the exit status.

Most of this module is about signals: a run can be interrupted in the simulator's start, vLLM's
launch, preflight, the measurement, the cleanup and the metrics linger, and each needs its own
answer (a stop that drains, an exit 130, or a verdict that stands).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from rich.console import Console

from latbench.agents.pool import AgentPool
from latbench.cli.common import (
    SIGNALS,
    AgentFlags,
    Exit,
    add_agent_arguments,
    add_run_arguments,
    agent_flags,
    new_loop,
    on_loop_signals,
    print_error,
    repeated,
    set_path,
    show_summary,
    signals_handled_by,
    spec_from_args,
    verdict_exit,
)
from latbench.exporter import MetricsExport, OtlpConfig, OtlpError, otlp_config, parse_listen
from latbench.load.runner import Runner
from latbench.otlp.receiver import traces_url
from latbench.records.rundir import RunDir
from latbench.run.benchmark import Agents, new_run_id, run_benchmark, target_url
from latbench.shared.errors import SpecError
from latbench.spec import RunSpec, load_spec
from latbench.vllm.interop import save_vllm_result
from latbench.vllm.launch import VllmServer, free_port, parse_launch_args, tracing_unavailable


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("run", help="run a benchmark (no --target: against the built-in simulator)")
    add_run_arguments(p)
    add_agent_arguments(p)


def metrics_export(ns: argparse.Namespace) -> MetricsExport | None:
    otlp = otlp_settings(ns)
    if ns.metrics_port is None and ns.pushgateway is None and otlp is None:
        return None
    if not ns.metrics_linger >= 0:
        raise SpecError(f"--metrics-linger {ns.metrics_linger:g}: give 0 or more seconds")
    try:
        listen = None if ns.metrics_port is None else parse_listen(ns.metrics_port)
    except ValueError as e:
        raise SpecError(f"--metrics-port {e}") from None
    return MetricsExport(listen, ns.pushgateway, ns.metrics_linger, otlp)


def otlp_settings(ns: argparse.Namespace) -> OtlpConfig | None:
    """`--otlp-metrics` and its flags, checked (docs/otel.md); None without it."""
    if ns.otlp_metrics is None:
        if ns.otlp_header or ns.otlp_temporality is not None:
            raise SpecError("--otlp-header and --otlp-temporality go with --otlp-metrics URL")
        return None
    try:
        return otlp_config(
            ns.otlp_metrics,
            ns.otlp_header,
            interval_s=ns.otlp_interval,
            temporality=ns.otlp_temporality,
        )
    except OtlpError as e:
        raise SpecError(f"--otlp-metrics: {e}") from None


def agent_pool(flags: AgentFlags) -> AgentPool:
    return AgentPool(
        flags.token, flags.host, flags.port, max_uncertainty_ns=flags.max_uncertainty_ns
    )


def pool_agents(pool: AgentPool, flags: AgentFlags) -> Agents:
    """The run's agents: the deadline counts from the pool's start, before preflight."""
    return Agents(pool, flags.count, pool.started + flags.wait_s, on_loss=flags.on_loss)


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    return repeated(ns, run_once, console, err, "run")


def _with_receiver_port(spec: RunSpec, host: str, port: int) -> RunSpec:
    """`spec` with its span receiver on `host:port`, written as the spec's validator writes it."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = spec.target.model_copy(update={"otlp_receiver": address})
    return spec.model_copy(update={"target": target})


def run_once(ns: argparse.Namespace, console: Console, err: Console) -> int:
    data = spec_from_args(ns)
    agents = agent_flags(ns)
    launch: VllmServer | None = None
    if ns.launch_vllm is not None:
        if data.get("target", {}).get("base_url") is not None:
            raise SpecError("--launch-vllm starts the server it benchmarks; drop --target")
        port = free_port()
        set_path(data, ("target", "base_url"), f"http://127.0.0.1:{port}")
        if data.get("target", {}).get("otlp_receiver") is None:
            # Per-request spans by default (vllm/launch.py), where both sides can do them.
            why = tracing_unavailable()
            if why is None:
                set_path(data, ("target", "otlp_receiver"), f"127.0.0.1:{free_port()}")
            else:
                err.print(f"[yellow]spans:[/] {why}; vLLM runs without tracing", highlight=False)
    elif ns.vllm_python is not None:
        raise SpecError("--vllm-python goes with --launch-vllm")
    spec = load_spec(data, source=str(ns.spec) if ns.spec else "flags")
    run_id = new_run_id()
    if ns.launch_vllm is not None:
        receiver = spec.target.receiver_address()
        if receiver is not None and receiver[1] == 0:
            # vLLM is told the receiver's URL before the receiver listens: a port of its own now.
            spec = _with_receiver_port(spec, receiver[0], free_port(receiver[0]))
            receiver = spec.target.receiver_address()
        launch = VllmServer(
            parse_launch_args(ns.launch_vllm),
            port,
            RunDir(spec.output_dir / run_id).vllm_log,
            python=ns.vllm_python,
            otlp_traces_endpoint=None if receiver is None else traces_url(*receiver),
        )
    export = metrics_export(ns)
    holder: list[Runner] = []

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
        if holder and holder[0].finished:
            # Every request has ended; what is left is the wait for the server's spans, which
            # the run said Ctrl-C skips (the spans still missing are counted, the verdict kept).
            err.print("[yellow]skipping the wait for spans[/]")
            holder[0].stop()
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

    async def measure(base_url: str) -> Any:
        nonlocal main_task, results_written
        main_task = asyncio.current_task()
        on_loop_signals(on_signal)
        async with contextlib.AsyncExitStack() as stack:
            # Listening before preflight, so agents register while the target is checked.
            pool = None if agents is None else await stack.enter_async_context(agent_pool(agents))
            result = await run_benchmark(
                spec,
                base_url,
                err,
                on_runner=holder.append,
                metrics=None if export is None else export.metrics,
                # The Pushgateway group is the run's labels, known once preflight named the model.
                on_labels=None if export is None else export.run_started,
                run_id=run_id,
                agents=None if pool is None or agents is None else pool_agents(pool, agents),
            )
        # run_benchmark's last act is writing results.json: a signal from now on keeps the
        # verdict (the loop still turns while it closes, and hears signals).
        results_written = True
        return result

    # Unwound in reverse: the export closes, then the signals get their handlers back.
    closing_export = contextlib.nullcontext() if export is None else contextlib.closing(export)
    with signals_handled_by(interrupt), closing_export:
        with contextlib.ExitStack() as stack:
            if launch is not None:
                err.print(f"starting vLLM (log: {launch.log_path})", highlight=False)
                stack.enter_context(launch)
                err.print(f"vLLM ready at {launch.url}", highlight=False)
            base_url = stack.enter_context(target_url(spec))
            # Closing the loop puts the signals back to their defaults (SIGTERM: die at once);
            # registered before it, this runs after it closes, so the cleanup that follows and
            # the metrics linger still end through `interrupt`.
            stack.callback(lambda: [signal.signal(sig, interrupt) for sig in SIGNALS])
            r = stack.enter_context(asyncio.Runner(loop_factory=new_loop))
            # Entered last, so it runs first when the stack unwinds, whatever ends the block.
            stack.callback(start_cleanup)
            try:
                result = r.run(measure(base_url))
            except asyncio.CancelledError:
                if not interrupts:
                    raise
                raise KeyboardInterrupt from None  # a signal during preflight: exit 130
        cleaning = False
        if launch is not None:
            err.print(f"vLLM stopped; its log: {launch.log_path}", highlight=False)
        push_failed = None if export is None else export.run_ended()
        # A collector that failed is a warning: the records and results above stand.
        for warning in [] if export is None else export.otlp_warnings:
            err.print(f"[yellow]otlp:[/] {warning}", highlight=False)
        vllm_path = save_vllm_result(ns, result.records_path)
        if vllm_path is not None:
            err.print(f"vllm-format results: {vllm_path}", highlight=False)
        show_summary(
            result.summary, result.reconciliation, console, ns.json, result.energy, result.spans
        )
        if not ns.json:
            console.print(
                f"records: {result.records_path}\nresults: {result.results_path}", soft_wrap=True
            )
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
    if interrupts:
        return Exit.INTERRUPTED
    if result.incomplete is not None:
        print_error(
            err,
            f"the run is incomplete: {result.incomplete}; the records received are kept "
            f"(results.json says ended: incomplete): {result.results_path}",
        )
        return Exit.ERROR
    code = verdict_exit(result.summary, gate_slos=bool(ns.slo))
    # A requested push that failed is an error, unless the verdict already says something worse.
    return Exit.ERROR if push_failed and code == Exit.OK else code
