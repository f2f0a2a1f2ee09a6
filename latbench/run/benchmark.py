"""One benchmark, start to finish: spec in, records file + results file + summary out.

Wires the pipeline: (embedded simulator) -> preflight -> runner -> sinks -> summary. The CLI and,
later, the service call `run_benchmark`; neither the runner nor the summary knows about them.
What it writes goes into the run's directory through `RunDir`, which owns the file names.

The sinks are assembled here, once: every one of them (records file, progress, the Prometheus
series) is made before the runner, handed to it in the order each record reaches them, and
closed here, in one place, whatever ends the run. A run has one progress: the caller's (the
service's, which its clients follow), else the live line on the terminal.

With `target.otlp_receiver`, the server's own span of each request is received during the run
(`run/spans.py`), written among the records and observed by the Prometheus series as it comes;
after the last request the run waits (at most `target.span_wait`, and a Ctrl-C skips it) for the
spans still missing, and results.json's "server_spans" is the join of the two
(`summary/spans.py`). The receiver listens before anything else is done, so a port in use is an
error before a run directory exists.

With `agents` (`latbench run --agents N`, docs/distributed.md), the load is sent by agents on
other machines instead of local worker processes: after preflight the run waits for N of them
at the pool's endpoint (which its caller started first, so agents can register while the
target is checked), hands the runner their worker slots as channels, and at the end tells them
they are done (or, for the service, puts them back in the pool). Everything else is the same
code as a local run over the union of the agents' records, written to this host's records file
as they arrive; results.json's "agents" says who sent what, and with which clock offset.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import platform
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from time import monotonic_ns
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from rich.console import Console

from latbench import __version__
from latbench.agents.pool import AgentConn, AgentPool
from latbench.client.preflight import redact_headers, resolve_endpoint
from latbench.client.stream import Endpoint
from latbench.client.tokenize import calibrate
from latbench.exporter import LatbenchMetrics, RunLabels
from latbench.load.cpus import usable_cpus
from latbench.load.runner import OnLoss, Runner, RunOutcome, make_connector
from latbench.load.worker import raise_fd_limit
from latbench.records.record import GpuSample, Record, RunHeader
from latbench.records.rundir import RunDir
from latbench.run.spans import RunSpans
from latbench.shared import rxstamp
from latbench.shared.dist import Dist
from latbench.shared.errors import ErrorKind, SpecError
from latbench.sim import SimProcess
from latbench.sim.replay import check_replay
from latbench.sinks import Sink
from latbench.sinks.jsonl import JsonlSink
from latbench.sinks.progress import Progress, ProgressSink
from latbench.sinks.prometheus import PrometheusSink, run_labels
from latbench.spec import RunSpec, WorkloadSpec
from latbench.spec.sessions import session_workload
from latbench.summary.energy import Energy, energy_in_window
from latbench.summary.gpu import GpuSampler, start_gpu_sampler
from latbench.summary.samples import Delivered
from latbench.summary.scraper import ServerMetricsScraper, default_metrics_url
from latbench.summary.server_metrics import Reconciliation, ServerMetricsError, reconcile
from latbench.summary.spans import SpanJoin, join_spans
from latbench.summary.summary import Summary, summarize
from latbench.workload import DEFAULT_VOCABULARY, FileWorkload, SyntheticWorkload, Workload
from latbench.workload.images import with_images
from latbench.workload.prefix import SharedPrefixWorkload
from latbench.workload.session import SessionWorkload
from latbench.workload.tokens import TokenScale
from latbench.workload.tools import with_tools
from latbench.workload.trace import NS_PER_S, TraceWorkload, trace_of

DEFAULT_OUTPUT_TOKENS = 128
RESYNC_AFTER_S = 10.0  # an agent's clock measured longer ago than this is measured again


@dataclass(frozen=True)
class Agents:
    """A run on agents: `count` of the `pool`'s (of `location`, if given), waited for until
    `deadline` (a `time.monotonic()` instant); when one is lost mid-run the others go on or
    the run stops (`on_loss`); `finish`: tell them their work is done after the run (a
    one-shot `latbench run`: they exit), else put them back in the pool (the service)."""

    pool: AgentPool
    count: int
    deadline: float
    location: str | None = None
    on_loss: OnLoss = "continue"
    finish: bool = True


@dataclass
class BenchResult:
    run_id: str
    summary: Summary
    records_path: Path
    results_path: Path
    ended: str  # completed | stopped | aborted | incomplete
    reconciliation: Reconciliation | None = None
    incomplete: str | None = None  # why the run is incomplete (a worker died), when it is
    energy: Energy | None = None  # energy per token, when GPU samples were taken (docs/gpu.md)
    spans: SpanJoin | None = None  # the requests joined with the server's spans, when it sent any
    agents: list[dict[str, Any]] | None = None  # results.json's "agents", for a run on agents


def make_workload(w: WorkloadSpec, scale: TokenScale | None = None) -> Workload | SessionWorkload:
    """The spec's workload; synthetic prompts are counted with `scale` (None: a word a token)."""
    # Generated prompts ask for DEFAULT_OUTPUT_TOKENS unless told; files keep their own lengths.
    out = w.output_tokens or Dist(mean=DEFAULT_OUTPUT_TOKENS)
    if w.sessions is not None:
        return session_workload(w, out, scale)
    if w.source == "synthetic":
        return SyntheticWorkload(w.input_tokens, out, seed=w.seed, scale=scale)
    if w.source == "shared_prefix":
        p = w.shared_prefix
        assert p is not None and p.prefix_as is not None  # the spec fills both in
        return SharedPrefixWorkload(
            p.groups,
            p.prefix_tokens,
            p.suffix_tokens,
            out,
            share=p.share,
            weights=p.weights,
            prefix_as=p.prefix_as,
            seed=w.seed,
            preset=p.preset,
            scale=scale,
        )
    if w.source == "trace":
        t = w.trace
        assert w.path is not None and t is not None  # the spec fills trace in
        return TraceWorkload.from_file(
            w.path,
            t.format,
            speed=t.speed,
            start_s=t.start,
            end_s=t.end,
            block_tokens=t.block_tokens,
            seed=w.seed,
            scale=scale,
        )
    assert w.path is not None
    if w.source == "jsonl":
        return FileWorkload.from_jsonl(w.path, w.output_tokens, seed=w.seed)
    return FileWorkload.from_sharegpt(w.path, w.output_tokens, seed=w.seed)


def trace_bounds(spec: RunSpec, workload: object) -> RunSpec:
    """A trace replay ends with its rows: load.requests becomes the rows in its window (or
    fewer, when the spec asks for fewer), so every worker stops at the trace's end. A warm-up
    or cool-down that leaves none of them to measure is refused, as a staircase's is (its
    length is known only once the trace is read)."""
    trace = trace_of(workload)
    if trace is None:
        return spec
    ld = spec.load
    requests = len(trace) if ld.requests is None else min(ld.requests, len(trace))
    if ld.warmup_requests + ld.cooldown_requests >= requests:
        raise SpecError(
            f"load: warmup_requests + cooldown_requests leave none of the trace's {requests} "
            "requests to measure"
        )
    # Measured as load/pacers.phase_of sees them: planned at or after the warm-up's end and,
    # with a duration, before its cool-down's start.
    offsets = trace.offsets_ns[ld.warmup_requests : requests - ld.cooldown_requests]
    first = int(np.searchsorted(offsets, ld.warmup * NS_PER_S, side="left"))
    end_s = None if ld.duration is None else ld.duration - ld.cooldown
    if first == len(offsets) or (end_s is not None and offsets[first] >= end_s * NS_PER_S):
        span_s = int(trace.offsets_ns[requests - 1]) / NS_PER_S
        cool = " leaves" if end_s is None else f" + cooldown ({ld.cooldown:g} s) leave"
        raise SpecError(
            f"load: warmup ({ld.warmup:g} s){cool} none of the trace's {requests} "
            f"requests to measure: the replay sends them over {span_s:.4g} s"
        )
    return spec.model_copy(update={"load": ld.model_copy(update={"requests": requests})})


async def calibrate_prompts(
    session: aiohttp.ClientSession, endpoint: Endpoint, spec: RunSpec
) -> tuple[TokenScale | None, list[str]]:
    """The target's token scale for synthetic prompts, measured once before the run, and what
    the user should be told about it (client/tokenize.py); a prompt file asks for no length.
    The built-in simulator counts a word as a token, so its runs need no request to know it
    (and its faults, dealt to requests in turn, see only the run's)."""
    w = spec.workload
    if w.source not in ("synthetic", "shared_prefix", "trace") or spec.target.base_url is None:
        return None, []
    single = w.model_copy(update={"sessions": None})  # a session's messages are built alike
    return await calibrate(
        session, endpoint, w.tokenizer, DEFAULT_VOCABULARY, lambda s: make_workload(single, s).item
    )


def public_spec(spec: RunSpec) -> dict[str, Any]:
    """The spec as stored in results: secrets never leave the process."""
    d = spec.model_dump(mode="json")
    d["target"]["headers"] = redact_headers(spec.target.headers)
    if spec.sim.api_key is not None:
        d["sim"]["api_key"] = "***"
    return d


def environment(spec: RunSpec, base_url: str, model: str) -> dict[str, Any]:
    return {
        "latbench_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        # What the default worker count was made from: affinity mask and cgroup quota.
        "cpus_usable": usable_cpus(),
        "target": base_url,
        "embedded_simulator": spec.target.base_url is None,
        "api": spec.target.api,
        "model": model,
        # Where event arrivals were stamped: the kernel's receive stamps, or the client's read
        # (not Linux, or LATBENCH_KERNEL_STAMPS=0); docs/performance.md measures the difference.
        "arrival_stamps": "kernel" if rxstamp.AVAILABLE else "read",
    }


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@contextlib.contextmanager
def target_url(spec: RunSpec) -> Iterator[str]:
    """The target's base URL; with no target, a built-in simulator in a child process, so its
    work never shares the client's event loop or core time slice accounting."""
    if spec.target.base_url is not None:
        yield spec.target.base_url
        return
    check_replay(spec.sim.replay, spec.target.api)  # a bad transcript: a spec error, not a crash
    with SimProcess(spec.sim) as sim:
        yield sim.url


async def run_benchmark(
    spec: RunSpec,
    base_url: str,
    console: Console,
    *,
    on_runner: Callable[[Runner], None] | None = None,
    metrics: LatbenchMetrics | None = None,
    on_labels: Callable[[RunLabels], None] | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    target_label: str | None = None,
    scenario_label: str | None = None,
    agents: Agents | None = None,
) -> BenchResult:
    """`run_id` (default: a new one), `progress` and the metric labels' target and scenario
    are for the service (`latbench.service`), which names runs before they start, follows their
    progress, and labels series by catalogue name; without `progress`, the run's progress is a
    live line on `console` (when it is a terminal). With `metrics`, `on_labels` is told the labels
    of the run's series (the model is known only after preflight) before any request is sent;
    `on_runner` is given the runner, to stop or abort it, before it runs (a stop or abort while
    the run waits for the server's spans ends that wait). With `agents`, the load is sent by
    agents of a pool the caller started (`Agents`)."""
    raise_fd_limit()
    if run_id is None:
        run_id = new_run_id()
    run_spans = _run_spans(spec)
    if run_spans is not None:
        # First: a receiver that cannot listen leaves nothing behind, and none of the run's
        # spans can come before it listens.
        await run_spans.start()
    try:
        return await _run(
            spec,
            base_url,
            console,
            run_id,
            run_spans,
            on_runner=on_runner,
            metrics=metrics,
            on_labels=on_labels,
            progress=progress,
            target_label=target_label,
            scenario_label=scenario_label,
            agents=agents,
        )
    finally:
        if run_spans is not None:
            await run_spans.stop()


async def _run(
    spec: RunSpec,
    base_url: str,
    console: Console,
    run_id: str,
    run_spans: RunSpans | None,
    *,
    on_runner: Callable[[Runner], None] | None,
    metrics: LatbenchMetrics | None,
    on_labels: Callable[[RunLabels], None] | None,
    progress: Progress | None,
    target_label: str | None,
    scenario_label: str | None,
    agents: Agents | None,
) -> BenchResult:
    run_dir = RunDir(spec.output_dir / run_id)
    workload = make_workload(spec.workload)
    spec = trace_bounds(spec, workload)
    connector = make_connector(spec.load, spec.target.verify_tls)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=spec.target.timeouts.connect)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, timeout=timeout)
        )
        endpoint = await resolve_endpoint(session, spec.target, base_url, spec.workload)
        scale, calibration = await calibrate_prompts(session, endpoint, spec)
        for note in calibration:
            console.print(f"[yellow]warning:[/] {note}", highlight=False)
        if scale is not None:
            workload = make_workload(spec.workload, scale)
        if spec.workload.images is not None:  # after calibration, which counts the text alone
            workload = with_images(workload, spec.workload.images.maker(spec.workload.seed))
        env = environment(spec, base_url, endpoint.options.model)
        # Which tokens the prompt lengths are in, for every reader of the records file too.
        env["prompt_tokens"] = workload.describe().get("prompt_tokens")
        if spec.workload.tools is not None:  # after calibration: its probes carry no tools
            workload = with_tools(workload, spec.workload.tools.build(spec.workload.seed))
        conns: list[AgentConn] = []
        drift: dict[int, int] = {}
        if agents is not None:
            conns = await _take_agents(agents, console)
            stack.push_async_callback(_let_go, agents, conns)
            # Who sent the load, with each one's clock: a reader of the records file alone
            # knows it too.
            env["agents"] = [a.to_dict() for a in conns]
        header = RunHeader(
            run_id=run_id,
            latbench_version=__version__,
            clock_monotonic_ns=monotonic_ns(),
            clock_wall_ns=time.time_ns(),
            spec=public_spec(spec),
            environment=env,
        )
        jsonl = JsonlSink(run_dir.records, header)
        runner: Runner | None = None

        def inflight() -> int:
            # The sinks that show it are made before the runner that counts it, so that they
            # can be handed to it once; until it exists nothing is in flight.
            return 0 if runner is None else runner.inflight

        def offered() -> float | None:
            return None if runner is None else runner.offered_rate()

        terminal = progress is None
        if progress is None:
            progress = ProgressSink(console, inflight, spec.load.requests, spec.load.duration)
        else:  # its clock starts where the terminal line's does
            progress.inflight, progress.started_ns = inflight, monotonic_ns()
        all_sinks: list[Sink] = [jsonl, progress]
        prometheus: PrometheusSink | None = None
        if metrics is not None:
            # Live Prometheus series; labels stay bounded (no run id), see exporter/series.py.
            # `location`: where the load comes from (the agents', or "local"): bounded labels.
            locations = None if agents is None else [a.location for a in conns]
            labels = run_labels(
                spec.target.base_url, endpoint.options.model, spec.target.api, spec.name, locations
            )
            labels = replace(
                labels,
                target=target_label or labels.target,
                scenario=scenario_label or labels.scenario,
            )
            prometheus = PrometheusSink(
                metrics,
                labels,
                spec.slos,
                inflight=inflight,
                offered=offered,
                spans=run_spans is not None,
            )
            all_sinks.append(prometheus)
            if on_labels is not None:
                on_labels(prometheus.labels)
        if run_spans is not None:
            run_spans.attach(jsonl.add_span, [] if prometheus is None else [prometheus.add_span])
        runner = Runner(
            run_id=run_id,
            endpoint=endpoint,
            workload=workload,
            load=spec.load,
            sinks=all_sinks,
            seed=spec.workload.seed,
            workers=spec.load.workers,
            verify_tls=spec.target.verify_tls,
            channels=None if agents is None else agents.pool.channels(conns),
            on_loss="continue" if agents is None else agents.on_loss,
        )
        if on_runner is not None:
            on_runner(runner)
        scraper = await _start_scraper(session, spec, base_url, endpoint.options.model, console)
        gpu = await _start_gpu(session, spec, base_url, all_sinks, console)
        footer = None
        try:
            outcome = await runner.run(session)
            footer = outcome.footer
            if conns and agents is not None:
                # How far each agent's clock moved from the estimate the run used; with its
                # host, it goes into the footer, so the records file judges each agent alone
                # (summary.validity.judge_agents) as this run does.
                drift = await _clock_drift(conns)
                outcome = with_agent_clocks(outcome, conns, drift, agents.pool.max_uncertainty_ns)
                footer = outcome.footer
            if gpu is not None:  # its last sample before the records file's footer
                await gpu.stop()
            if scraper is not None:
                completed = sum(1 for r in outcome.records if r.ok)
                server = await scraper.stop(completed)
                run_dir.write_server_metrics(server.to_dict())
            if run_spans is not None and outcome.ended != "aborted":
                # The server sends its spans in batches: the last ones may still be coming.
                await _wait_for_spans(run_spans, runner, outcome.records, spec, console)
        finally:
            if run_spans is not None:
                await run_spans.stop()  # no span after this, so none after the footer
                if footer is not None:
                    footer = replace(footer, span_receiver=_receiver_counts(run_spans))
            if scraper is not None:
                await scraper.cancel()
            if gpu is not None:  # NVML shut down even when the run raised or was cancelled
                await gpu.close()
            # The terminal line goes first, so it is off the screen before anything after it
            # prints or fails; the others close in the order they see records, so a caller's
            # progress (the service's wakes the run's followers) closes after the records
            # file has its footer.
            first = [progress] if terminal else []
            for sink in [*first, *(other for other in all_sinks if other not in first)]:
                sink.close(footer)
    summary = summarize(
        outcome.records,
        window=(footer.window_start, footer.window_end),
        slos=spec.slos,
        percentiles=spec.percentiles,
        client=outcome.client,
        limits=spec.validity.limits(),
        load=spec.load,  # a `steps` run's stairs come from it
        oversaturation=outcome.oversaturation,
        stopped_ns=footer.stopped_ns,
    )
    recon = None
    if scraper is not None:
        try:
            recon = reconcile(outcome.records, scraper.result)
        except ServerMetricsError as e:  # what the client measured stands on its own
            console.print(f"[yellow]server metrics:[/] {e}; no reconciliation", highlight=False)
    energy = None
    if gpu is not None:
        inside = Delivered(
            summary.rates.requests_in_window, 0.0, summary.rates.output_tokens_in_window
        )
        energy = energy_in_window(gpu.samples, (footer.window_start, footer.window_end), inside)
    join = (
        None
        if run_spans is None
        else join_spans(outcome.records, run_spans.spans, header, footer.span_receiver)
    )
    span_warnings = (
        [] if run_spans is None else _span_warnings(run_spans, join, spec, outcome.records)
    )
    agent_rows = None
    agent_warnings: list[str] = []
    if agents is not None:
        limit = agents.pool.max_uncertainty_ns
        agent_rows = agent_results(conns, outcome.records, drift, limit, summary)
        agent_warnings = clock_warnings(agent_rows, limit)
    for warning in [*outcome.warnings, *span_warnings, *agent_warnings]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    results = {
        "run_id": run_id,
        "ended": outcome.ended,
        "incomplete": outcome.incomplete,
        "warnings": [
            *calibration,
            *outcome.warnings,
            *span_warnings,
            *agent_warnings,
            *_prompt_warning(summary),
        ],
        "spec": header.spec,
        "environment": env,
        "workload": workload.describe(),
        "clock": {"monotonic_ns": header.clock_monotonic_ns, "wall_ns": header.clock_wall_ns},
        "window_ns": [footer.window_start, footer.window_end],
        "summary": summary.to_dict(),
        "records": run_dir.records_name,
        "reconciliation": None if recon is None else recon.to_dict(),
        "energy": None if energy is None else energy.to_dict(),
        "server_spans": None if join is None else join.to_dict(),
        "agents": agent_rows,
    }
    run_dir.write_results(results)
    return BenchResult(
        run_id,
        summary,
        run_dir.records,
        run_dir.results,
        outcome.ended,
        recon,
        incomplete=outcome.incomplete,
        energy=energy,
        spans=join,
        agents=agent_rows,
    )


async def _take_agents(agents: Agents, console: Console) -> list[AgentConn]:
    """The run's agents, their clocks fresh: waited for until the deadline (AgentError then)."""
    pool = agents.pool
    where = "" if agents.location is None else f" in location {agents.location}"
    console.print(
        f"agents: waiting for {agents.count}{where} at {pool.url}", highlight=False, soft_wrap=True
    )
    conns = await pool.wait_for(agents.count, agents.deadline, agents.location)
    try:
        stale = [a for a in conns if monotonic_ns() - a.synced_ns > RESYNC_AFTER_S * 1e9]
        if stale:  # monotonic clocks of two hosts drift apart: measured again before a run
            await pool.resync(stale)
    except BaseException:
        pool.release(conns)
        raise
    return conns


async def _let_go(agents: Agents, conns: list[AgentConn]) -> None:
    if agents.finish:
        await agents.pool.finish(conns)
    else:
        agents.pool.release(conns)


async def _clock_drift(conns: Sequence[AgentConn]) -> dict[int, int]:
    """Each connected agent's clock measured again after the run, as its offset's change since
    the estimate the run used (which its records carry); an agent that does not answer has
    none. Nothing is changed: the next run measures afresh."""
    drift = {}
    for a in conns:
        if a.closed:  # lost during the run: nothing to ask
            continue
        try:
            after = await a.measure()
        except (TimeoutError, ConnectionError):
            continue
        drift[a.index] = after.offset_ns - a.offset_ns
    return drift


def flagged(uncertainty_ns: int, drift_ns: int | None, limit_ns: int) -> bool:
    """An agent's clock is flagged: its offset was uncertain, or moved during the run, by more
    than `limit_ns` (--max-clock-uncertainty)."""
    return uncertainty_ns > limit_ns or (drift_ns is not None and abs(drift_ns) > limit_ns)


def with_agent_clocks(
    outcome: RunOutcome, conns: Sequence[AgentConn], drift: dict[int, int], limit_ns: int
) -> RunOutcome:
    """The runner's per-agent figures with what the pool knows of each agent (its host, the
    clock estimate the run used, its drift since, whether that flags it), in the outcome's
    client stats and in the footer that the records file gets."""
    by_index = {a.index: a for a in conns}
    stats = []
    for st in outcome.client.agents:
        conn = by_index.get(st.index)
        if conn is None:
            stats.append(st)
            continue
        moved = drift.get(st.index)
        stats.append(
            replace(
                st,
                host=conn.host,
                uncertainty_ns=conn.uncertainty_ns,
                drift_ns=moved,
                flagged=flagged(conn.uncertainty_ns, moved, limit_ns),
            )
        )
    client = replace(outcome.client, agents=tuple(stats))
    footer = replace(outcome.footer, validity=client.to_dict())
    return replace(outcome, client=client, footer=footer)


def agent_results(
    conns: Sequence[AgentConn],
    records: Sequence[Record],
    drift: dict[int, int],
    limit_ns: int,
    summary: Summary | None = None,
) -> list[dict[str, Any]]:
    """results.json's "agents": each agent as the pool knows it (index, location, host,
    workers, clock offset, its uncertainty and round trip), what the run got from it (its
    records, how many were lost with it), `drift_ns` (its offset measured after the run minus
    the one used; None when it could not be measured) and `flagged` (`flagged`). With the
    run's `summary`, its own verdict too (`summary.validity.judge_agents`): `client_bound`,
    `lost_reason` (why it was lost mid-run, None when it was not) and `validity`, the verdict
    over its own records, in the summary's shape."""
    counts: dict[int, list[int]] = {a.index: [0, 0] for a in conns}
    for r in records:
        if r.agent is not None and r.agent in counts:
            c = counts[r.agent]
            c[0] += 1
            c[1] += r.error is ErrorKind.LOST
    rows = []
    for a in conns:
        moved = drift.get(a.index)
        row = {**a.to_dict(), "records": counts[a.index][0], "lost": counts[a.index][1]}
        row["drift_ns"] = moved
        row["flagged"] = flagged(a.uncertainty_ns, moved, limit_ns)
        if summary is not None:
            judged = {av.agent.index: av for av in summary.validity.agents}
            own = judged.get(a.index)
            row["client_bound"] = None if own is None else own.validity.client_bound
            row["lost_reason"] = None if own is None else own.agent.lost
            row["validity"] = None if own is None else own.validity.to_dict()
        rows.append(row)
    return rows


def clock_warnings(rows: Sequence[dict[str, Any]], limit_ns: int) -> list[str]:
    """One line per flagged agent: its clock offset uncertain, or drifting, beyond the limit."""
    out = []
    for row in rows:
        if not row["flagged"]:
            continue
        where = f"agent {row['index']} (host {row['host']}" + (
            "" if row["location"] is None else f", location {row['location']}"
        )
        limit = f"the {limit_ns / 1e6:.3g} ms limit (--max-clock-uncertainty)"
        drift = row["drift_ns"]
        if row["uncertainty_ns"] > limit_ns:
            how = f"its clock offset is uncertain by {row['uncertainty_ns'] / 1e6:.3g} ms"
        else:
            how = f"its clock moved {drift / 1e6:+.3g} ms against this host's during the run"
        out.append(
            f"{where}): {how}, over {limit}: its requests' place on the run's timeline "
            "(schedule, window) may be off by that much; its latencies are not"
        )
    return out


def _run_spans(spec: RunSpec) -> RunSpans | None:
    """The run's span receiver, when the spec asks for one (not yet listening)."""
    address = spec.target.receiver_address()
    return None if address is None else RunSpans(*address)


async def _wait_for_spans(
    run_spans: RunSpans,
    runner: Runner,
    records: Sequence[Record],
    spec: RunSpec,
    console: Console,
) -> None:
    """Wait for the spans still missing, saying so; a stop or abort (Ctrl-C, the service's
    cancel) from now on skips the rest of the wait."""
    missing = len(run_spans.missing(records))
    wait_s = spec.target.span_wait
    if not missing or wait_s <= 0:
        return
    runner.add_interrupt_listener(run_spans.skip)
    console.print(
        f"waiting up to {wait_s:g} s for {missing} server span(s) (Ctrl-C skips)", highlight=False
    )
    await run_spans.wait_for(records, wait_s)


def _receiver_counts(run_spans: RunSpans) -> dict[str, Any]:
    """What the receiver saw, for the records file's footer and results.json."""
    return {
        "endpoint": run_spans.receiver.endpoint,
        **run_spans.receiver.counts.to_dict(),
        "observer_errors": run_spans.observer_errors,
        "last_observer_error": run_spans.last_observer_error,
    }


def _span_warnings(
    run_spans: RunSpans, join: SpanJoin | None, spec: RunSpec, records: Sequence[Record]
) -> list[str]:
    """What the user should know about the spans: none came (the server is not tracing to
    us), some never came, or the receiver refused payloads."""
    out: list[str] = []
    counts = run_spans.receiver.counts
    endpoint = run_spans.receiver.endpoint
    if join is None:
        if run_spans.missing(records):
            out.append(
                f"the span receiver ({endpoint}) got no span: is the server started with "
                f"--otlp-traces-endpoint {endpoint} and OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="
                "http/protobuf (docs/vllm.md, Per-request server spans)?"
            )
    elif join.requests_without_span:
        total = join.matched + join.requests_without_span
        out.append(
            f"{join.requests_without_span} of {total} measured requests got no server span "
            f"within {spec.target.span_wait:g} s (target.span_wait) of the run's end"
        )
    if counts.rejected_payloads:
        out.append(
            f"the span receiver refused {counts.rejected_payloads} payload(s); the last: "
            f"{counts.last_rejection}"
        )
    if counts.rejected_spans:
        out.append(
            f"the span receiver rejected {counts.rejected_spans} span(s); the last: "
            f"{counts.last_span_rejection}"
        )
    if run_spans.observer_errors:
        out.append(
            f"{run_spans.observer_errors} span(s) could not be observed on the live series; "
            f"the last: {run_spans.last_observer_error}"
        )
    return out


def _prompt_warning(summary: Summary) -> list[str]:
    """The summary's warning that prompts were not the length asked, for results.json's list."""
    warning = summary.tokens.prompt.warning
    return [] if warning is None else [warning]


async def _start_scraper(
    session: aiohttp.ClientSession,
    spec: RunSpec,
    base_url: str,
    model: str,
    console: Console,
) -> ServerMetricsScraper | None:
    """A running scraper of the server's metrics, or None: `auto` tries the target's /metrics
    for OpenAI-compatible kinds and quietly gives up when it cannot be read or is no Prometheus
    page; a URL given explicitly that cannot be read is said out loud (the run still goes
    ahead). A Prometheus page of no known server yet (vLLM, SGLang, TGI, TensorRT-LLM, Dynamo:
    the others create their series at first use) is scraped on, and said after the run if no
    page ever was one (`reconcile`)."""
    setting = spec.target.server_metrics
    if setting == "off" or (setting == "auto" and spec.target.api not in ("chat", "completions")):
        return None
    url = default_metrics_url(base_url) if setting == "auto" else setting
    scraper = ServerMetricsScraper(session, url, model)
    if await scraper.start():
        return scraper
    if setting != "auto":
        console.print(
            f"[yellow]server metrics:[/] {scraper.result.errors[-1]} ({url}); running without them",
            highlight=False,
        )
    return None


def on_this_host(base_url: str) -> bool:
    """The target's host is this machine: a loopback address or this host's own name. Only
    then can a GPU NVML sees here be the one serving the run."""
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host in (socket.gethostname(), socket.getfqdn()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _start_gpu(
    session: aiohttp.ClientSession,
    spec: RunSpec,
    base_url: str,
    sinks: list[Sink],
    console: Console,
) -> GpuSampler | None:
    """A running GPU sampler (`target.gpu_metrics`), its samples handed to every sink that
    takes them (the records file, Prometheus), or None: "auto" without NVML is quietly nothing;
    "nvml" or a page that cannot be read is said (the run still goes ahead)."""
    takers = [add for sink in sinks if (add := getattr(sink, "add_gpu", None)) is not None]

    def on_sample(sample: GpuSample) -> None:
        for add in takers:
            add(sample)

    setting = spec.target.gpu_metrics
    if setting == "auto" and not on_this_host(base_url):
        # A GPU here serves something else: its joules are not this run's (`nvml` says so).
        return None
    sampler, problem = await start_gpu_sampler(setting, session, on_sample)
    if problem is not None:
        console.print(f"[yellow]GPU metrics:[/] {problem}; running without them", highlight=False)
    return sampler
