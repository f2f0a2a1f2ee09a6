"""`python -m bench.agents`: one seeded open-loop load sent by 1, 2 and 4 agents, each scored
against the simulator's own truth: streams held, and the TTFT and ITL error per agent and over
the run, next to the error bound latbench measured for itself.

Why: a distributed run is worth its set-up only if agents add client capacity without adding
error. Each layout is a real `latbench run --agents N` coordinator and N `latbench agent`
processes over loopback (docs/distributed.md), sending the same seeded Poisson schedule to a
simulator farm (`bench/_simfarm.py`) whose truth is reset before each layout. The harness then
matches latbench's records to the requests the simulator saw (`bench/_truth.py`, by order:
loopback keeps it, on one host's clock) and reports, per layout and per agent:

- streams held: the mean and the most streams open at the simulator inside the window (a
  request from its arrival to its last event);
- the error: latbench's TTFT and ITL percentile minus the truth's over the same matched requests,
  and the error bound latbench stated for them (`summary/bound.py`), the run's and each agent's
  own (`summary.validity.agents`);
- the client's side: each agent's loop lag p99 and busiest worker's CPU, its verdict, and the CPU
  (cores) of the coordinator, the agents and the simulator.

With `--pin`, the simulator, the coordinator and each agent run on cores of their own (sched
affinity, inherited by every worker process), as on a machine big enough to measure agents
rather than the machine: it needs sim processes + 1 + 4 x --cpus-per-agent cores, and says so
when there are fewer. Without it everything shares the cores this process may use, and the
table says the run was shared.

    python -m bench.agents                                  # a small look: 40 req/s, 8 s
    python -m bench.agents --rate 400 --duration 30 --warmup 5 --pin --cpus-per-agent 2 \\
        --agent-workers 2 --sim-processes 4                 # a machine with 16 cores or more
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._procmon import TreeMonitor
from bench._simfarm import SimFarm
from bench._truth import BoundCheck, check_pairs, pairs, score
from latbench.records import Record, read_records
from latbench.sim import SimConfig
from latbench.vllm.launch import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-agents-" + os.urandom(16).hex()  # this harness's own: its agents are its children


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.agents", description=__doc__.split("\n")[0])
    p.add_argument("--layouts", default="1,2,4", help="agent counts to run (default 1,2,4)")
    p.add_argument("--rate", type=float, default=40.0, help="Poisson arrivals per second")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before the window")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--input-tokens", type=int, default=16)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--ttft", type=float, default=0.02, help="the simulator's TTFT, seconds")
    p.add_argument("--itl", type=float, default=0.01, help="the simulator's ITL, seconds")
    p.add_argument("--agent-workers", type=int, default=1, help="worker processes per agent")
    p.add_argument("--sim-processes", type=int, default=1)
    p.add_argument("--pin", action="store_true", help="give each process its own cores")
    p.add_argument("--cpus-per-agent", type=int, default=1, help="with --pin")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-agents"))
    ns = p.parse_args(argv)
    try:
        ns.layouts = [int(x) for x in ns.layouts.split(",") if x.strip()]
    except ValueError:
        p.error(f"--layouts {ns.layouts!r}: give agent counts, e.g. 1,2,4")
    if not ns.layouts or min(ns.layouts) < 1:
        p.error("--layouts: give one agent count or more, each 1 or more")
    return ns


def cpu_plan(ns: argparse.Namespace) -> dict[str, list[int]] | None:
    """With --pin: the cores of the simulator, the coordinator and each agent ("agent0", ...);
    SystemExit when there are too few. None without --pin: everything shares."""
    if not ns.pin:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    most = max(ns.layouts)
    need = ns.sim_processes + 1 + most * ns.cpus_per_agent
    if need > len(cpus):
        raise SystemExit(
            f"--pin needs {need} cores ({ns.sim_processes} simulator, 1 coordinator, {most} "
            f"agents x {ns.cpus_per_agent}); this process may use {len(cpus)}: run without "
            "--pin (shared cores) or with fewer"
        )
    plan = {"sim": cpus[: ns.sim_processes], "coordinator": [cpus[ns.sim_processes]]}
    at = ns.sim_processes + 1
    for i in range(most):
        plan[f"agent{i}"] = cpus[at : at + ns.cpus_per_agent]
        at += ns.cpus_per_agent
    return plan


def pinned(cpus: list[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that puts the child (and every process it starts) on `cpus`."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def streams_held(entries: Sequence[dict[str, Any]], window: tuple[int, int]) -> tuple[float, int]:
    """Streams open at the simulator inside [lo, hi]: the mean (each request from its arrival
    to its last event, the part inside the window, over the window) and the most at once."""
    lo, hi = window
    spans = [(e["arrival_ns"], e["events_ns"][-1]) for e in entries if e["events_ns"]]
    inside = [(max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi]
    if hi <= lo or not inside:
        return 0.0, 0
    mean = sum(b - a for a, b in inside) / (hi - lo)
    edges = sorted([(a, 1) for a, _ in inside] + [(b, -1) for _, b in inside])
    level = top = 0
    for _, step in edges:
        level += step
        top = max(top, level)
    return mean, top


def _p99(d: dict[float, float] | None) -> float | None:
    return None if d is None else round(d[99.0], 3)


def _checked(c: BoundCheck) -> dict[str, Any]:
    return {
        "matched": c.matched,
        "ttft_err_p99_ms": _p99(c.ttft_err_ms),
        "ttft_bound_p99_ms": _p99(c.ttft_bound_ms),
        "itl_err_p99_ms": _p99(c.itl_err_ms),
        "itl_bound_p99_ms": _p99(c.itl_bound_ms),
        "bound_holds": c.holds(),
    }


def run_layout(
    n: int, farm: SimFarm, ns: argparse.Namespace, plan: dict[str, list[int]] | None
) -> dict[str, Any]:
    """One `latbench run --agents n` and its n agents against the farm, scored."""
    out = ns.out / f"agents{n}"
    out.mkdir(parents=True, exist_ok=True)
    farm.reset()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATBENCH_AGENT_TOKEN": TOKEN, "NO_COLOR": "1"}
    env.pop("JOB_COMPLETION_INDEX", None)
    port = free_port()
    total = ns.duration + ns.warmup
    coordinator = [
        sys.executable, "-m", "latbench", "run", "--target", farm.url, "--api", "chat",
        "--agents", str(n), "--agent-listen", f"127.0.0.1:{port}", "--agent-wait", "120",
        "--rate", f"{ns.rate:g}", "--duration", f"{total:g}s", "--warmup", f"{ns.warmup:g}s",
        "--seed", str(ns.seed), "--input-tokens", str(ns.input_tokens),
        "--output-tokens", str(ns.output_tokens), "--tokenizer", "words",
        "--server-metrics", "off", "--out", str(out), "--json",
    ]  # fmt: skip
    log = (out / "log.txt").open("w")
    coord = subprocess.Popen(
        coordinator, stdout=subprocess.PIPE, stderr=log, env=env, text=True,
        preexec_fn=pinned(None if plan is None else plan["coordinator"]),
    )  # fmt: skip
    agent = [
        sys.executable, "-m", "latbench", "agent", "--coordinator", f"127.0.0.1:{port}",
        "--workers", str(ns.agent_workers), "--connect-timeout", "120",
    ]  # fmt: skip
    agents = [
        subprocess.Popen(
            [*agent, "--index", str(i)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            preexec_fn=pinned(None if plan is None else plan[f"agent{i}"]),
        )
        for i in range(n)
    ]
    mons = [TreeMonitor(p.pid).start() for p in [coord, *agents]]
    sim_cpu0 = sum(farm.cpu())
    t0 = time.monotonic()
    try:
        stdout, _ = coord.communicate(timeout=total + 300)
        for a in agents:
            a.wait(60)
    finally:
        for p in [coord, *agents]:
            if p.poll() is None:
                p.kill()
                p.wait()
        for m in mons:
            m.stop()
        log.close()
    wall = time.monotonic() - t0
    sim_cpu = sum(farm.cpu()) - sim_cpu0
    summary = json.loads(stdout[stdout.index("{") :]) if "{" in stdout else None
    if summary is None:
        raise SystemExit(f"agents {n}: the coordinator exited {coord.returncode}; see {log.name}")
    (run,) = [d for d in out.iterdir() if d.is_dir() and (d / "results.json").exists()][-1:]
    results = json.loads((run / "results.json").read_text())
    records: list[Record] = read_records(run / "records.jsonl").records
    entries = farm.truth()
    truth = score(entries, skip_s=ns.warmup, tail_s=1.0)
    window = truth.window or (0, 0)
    mean, top = streams_held(entries, window)
    matched = pairs(records, entries, truth.window)
    judged = {a["index"]: a for a in summary["validity"]["agents"]}
    cpu = [m.samples[-1].cpu_s - m.samples[0].cpu_s if m.samples else 0.0 for m in mons]
    per_agent = []
    for i in range(n):
        own = judged.get(i, {}).get("validity") or {}
        bound = own.get("error_bound") or {}
        per_agent.append(
            {
                "index": i,
                **_checked(check_pairs([p for p in matched if p[0].agent == i])),
                "stated_ttft_bound_p99_ms": _bound_ms(bound, "ttft"),
                "stated_itl_bound_p99_ms": _bound_ms(bound, "itl"),
                "send_lag_p99_ms": _ms(own.get("queue_delay_p99_s")),
                "loop_lag_p99_ms": _ms(own.get("loop_lag_p99_s")),
                "busiest_worker_cpu": own.get("client_cpu"),
                "client_bound": own.get("client_bound"),
                "cpu_s": round(cpu[1 + i], 2),
            }
        )
    return {
        "agents": n,
        "workers": n * ns.agent_workers,
        "exit": coord.returncode,
        "ended": results["ended"],
        "requests": summary["requests"]["measured"],
        "requests_per_s": summary["rates"]["requests_per_s"],
        "truth_requests": truth.requests,
        "streams_mean": round(mean, 2),
        "streams_max": top,
        **_checked(check_pairs(matched)),
        "client_bound": summary["client_bound"],
        "reasons": summary["validity"]["reasons"],
        "cpu_s": {
            "coordinator": round(cpu[0], 2),
            "agents": round(sum(cpu[1:]), 2),
            "sim": round(sim_cpu, 2),
        },
        "wall_s": round(wall, 1),
        "per_agent": per_agent,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _bound_ms(bound: dict[str, Any], metric: str) -> float | None:
    p99 = (bound.get(metric) or {}).get("p99")
    return None if p99 is None else round(p99["bound_s"] * 1e3, 3)


def _cell(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:+.2f}" if x < 0 else f"{x:.2f}"
    return str(x)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown tables: one row per layout, then one per agent. Errors are latbench's
    percentile minus the truth's over the matched requests; bounds are latbench's own over the
    same requests (the JSON also has each agent's bound as its summary stated it, over all of
    its measured requests); a bound holds when it covers the error less the transport's
    slack (`bench._truth.SLACK_MS`)."""
    head = ("| agents | workers | requests | streams held mean / max | TTFT err p99 | bound "
            "| ITL err p99 | bound | client-bound | CPU s: coordinator / agents / sim |\n"
            "|--:|--:|--:|--:|--:|--:|--:|--:|:--|--:|")  # fmt: skip
    lines = [head]
    for r in rows:
        c = r["cpu_s"]
        lines.append(
            f"| {r['agents']} | {r['workers']} | {r['requests']:,} | {r['streams_mean']:.1f} / "
            f"{r['streams_max']} | {_cell(r['ttft_err_p99_ms'])} | "
            f"{_cell(r['ttft_bound_p99_ms'])} | {_cell(r['itl_err_p99_ms'])} | "
            f"{_cell(r['itl_bound_p99_ms'])} | {_cell(r['client_bound'])} | "
            f"{c['coordinator']:.1f} / {c['agents']:.1f} / {c['sim']:.1f} |"
        )
    lines += [
        "",
        "| agents | agent | matched | TTFT err p99 | bound | ITL err p99 | bound | bound holds "
        "| send lag p99 | loop lag p99 | busiest worker CPU | client-bound |",
        "|--:|--:|--:|--:|--:|--:|--:|:--|--:|--:|--:|:--|",
    ]
    for r in rows:
        for a in r["per_agent"]:
            cpu = a["busiest_worker_cpu"]
            lines.append(
                f"| {r['agents']} | {a['index']} | {a['matched']:,} | "
                f"{_cell(a['ttft_err_p99_ms'])} | {_cell(a['ttft_bound_p99_ms'])} | "
                f"{_cell(a['itl_err_p99_ms'])} | {_cell(a['itl_bound_p99_ms'])} | "
                f"{_cell(a['bound_holds'])} | {_cell(a['send_lag_p99_ms'])} | "
                f"{_cell(a['loop_lag_p99_ms'])} | "
                f"{'–' if cpu is None else f'{cpu:.0%}'} | {_cell(a['client_bound'])} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ns = parse_args(argv)
    plan = cpu_plan(ns)
    ns.out.mkdir(parents=True, exist_ok=True)
    config = SimConfig(ttft=ns.ttft, itl=ns.itl)
    rows = []
    farm = SimFarm(config, ns.sim_processes, log=ns.out / "sim.log").start()
    try:
        if plan is not None:
            for pid in farm.pids:
                os.sched_setaffinity(pid, plan["sim"])
        for n in ns.layouts:
            row = run_layout(n, farm, ns, plan)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        farm.stop()
    command = "python -m bench.agents " + shlex.join(argv if argv is not None else sys.argv[1:])
    cores = len(os.sched_getaffinity(0))
    shared = "shared by the simulator, coordinator and agents"
    setup = f"{platform.node()}: {cores} cores usable, " + (
        f"pinned {json.dumps(plan)}" if plan else shared
    )
    report = f"- command: {command.strip()}\n- machine: {setup}\n\n{table(rows)}\n"
    (ns.out / "agents.md").write_text(report)
    (ns.out / "agents.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    print(report)


if __name__ == "__main__":
    main()
