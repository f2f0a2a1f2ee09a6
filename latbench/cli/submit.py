"""`latbench submit`: a run sent to a latbench service (latbench serve).

`submit --wait` follows the run's server-sent events, then shows the same tables and exits with
the same status as `latbench run` (docs/service.md): the tables are recomputed here from the
run's records, so they are those of `latbench summary` on that file.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.text import Text

from latbench.cli.common import Exit, run_in_loop
from latbench.cli.service_client import (
    API,
    Client,
    RemoteError,
    add_connection_arguments,
    client_from_args,
    print_json,
    render_remote_summary,
)
from latbench.client.sse import SSEParser
from latbench.shared.errors import SpecError
from latbench.shared.units import ms
from latbench.spec import read_spec_file
from latbench.spec.slo import DEFAULT_SLOS

RECONNECT_FOR_S = 120.0  # while following a run, how long to keep trying an unreachable server


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a run to a latbench service (latbench serve)")
    p.add_argument(
        "spec",
        type=Path,
        nargs="?",
        help="run spec (YAML/JSON) whose target names a catalogue target",
    )
    p.add_argument("--target", metavar="NAME", help="the catalogue target (overrides the spec's)")
    p.add_argument("--name", help="scenario name")
    p.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="SLO",
        help="as for `latbench run`: sets the run's SLOs and, with --wait, makes the exit status "
        "3 when one is missed. 'default' = p99 TTFT, ITL, TPOT <= 100 ms",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the run live; exit status from its verdict, as `latbench run`",
    )
    p.add_argument(
        "--agents",
        type=int,
        metavar="N",
        help="send the load from N of the service's registered agents (docs/distributed.md)",
    )
    p.add_argument(
        "--location",
        metavar="LABEL",
        help="only agents of this location (alone: one agent)",
    )
    add_connection_arguments(p)


def submit_body(ns: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = read_spec_file(ns.spec) if ns.spec else {}
    if ns.target:
        data["target"] = ns.target
    if ns.name:
        data["name"] = ns.name
    # Where the load comes from: beside the spec, as the service's API takes them.
    if ns.agents is not None:
        data["agents"] = ns.agents
    if ns.location is not None:
        data["location"] = ns.location
    if ns.slo:
        slos = [s for s in ns.slo if s != "default"]
        if "default" in ns.slo:
            slos = [str(s) for s in DEFAULT_SLOS] + slos
        data["slos"] = slos
    if "target" not in data:
        raise SpecError("name the catalogue target: --target NAME, or target: NAME in the spec")
    return data


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    body = submit_body(ns)
    client = client_from_args(ns)
    run_id: list[str] = []

    async def submit() -> int:
        async with client:
            run = await client.call("POST", f"{API}/runs", body, auth=True)
            run_id.append(run["id"])
            if not ns.wait:
                if ns.json:
                    print_json(run)
                else:
                    err.print(f"submitted run {run['id']} (target {run['target']}, {run['state']})")
                    console.print(run["id"], highlight=False)
                return Exit.OK
            err.print(f"run {run['id']}: {run['state']} (target {run['target']})", highlight=False)
            final = await follow(client, run["id"], err)
            return await finish(client, final, console, err, ns.json, gate=bool(ns.slo))

    try:
        return int(run_in_loop(submit))
    except RemoteError as e:
        if e.status == 400:
            raise SpecError(str(e)) from None
        raise
    except KeyboardInterrupt:
        if run_id:
            err.print(
                f"stopped following; run {run_id[0]} goes on on the server "
                f"(latbench runs cancel {run_id[0]} stops it)",
                highlight=False,
            )
        return Exit.INTERRUPTED


async def follow(client: Client, run_id: str, err: Console) -> dict[str, Any]:
    """Follow a run's events until it ends; returns the final run. A dropped connection (the
    service restarting) is retried for RECONNECT_FOR_S."""
    live = Live(console=err, transient=True, refresh_per_second=4) if err.is_terminal else None
    state = None
    lost_since: float | None = None
    if live is not None:
        live.start()
    try:
        while True:
            try:
                parser = SSEParser()
                async for piece in client.stream(f"{API}/runs/{run_id}/events"):
                    lost_since = None
                    for payload in parser.feed(piece):
                        ev = orjson.loads(payload)
                        kind = ev.get("type")
                        if kind == "end":
                            return dict(ev["run"])
                        if kind == "state" and ev["run"]["state"] != state:
                            state = ev["run"]["state"]
                            err.print(f"run {run_id}: {state}", highlight=False)
                        elif kind == "progress" and live is not None:
                            live.update(_progress_line(ev["progress"]))
                        elif kind == "shutdown":
                            err.print(f"[yellow]{ev.get('message')}[/]", highlight=False)
            except RemoteError as e:
                if e.status is not None:
                    raise
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > RECONNECT_FOR_S:
                    raise
            await asyncio.sleep(1.0)  # then follow again: the stream resumes with the state
    finally:
        if live is not None:
            live.stop()


def _progress_line(p: dict[str, Any]) -> Text:
    def p50_p99(d: dict[str, float] | None) -> str:
        return "-" if not d else f"{ms(d['p50'], 1)}/{ms(d['p99'], 1, unit=True)}"

    rate = p.get("output_tokens_per_s")
    return Text(
        f"{p['elapsed_s']:.0f} s  done {p['done']}  in flight {p['inflight']}  "
        f"errors {p['errors']}  |  TTFT p50/p99 {p50_p99(p.get('recent_ttft_s'))}  |  "
        f"ITL p50/p99 {p50_p99(p.get('recent_itl_s'))}  |  "
        f"{0 if rate is None else rate:,.0f} tok/s"
    )


async def finish(
    client: Client, run: dict[str, Any], console: Console, err: Console, as_json: bool, gate: bool
) -> int:
    state = run["state"]
    if as_json:
        print_json(run)
    elif run.get("summary") is not None:
        await render_remote_summary(client, run["id"], console)
    if run.get("error"):
        err.print(f"[{'red' if state == 'failed' else 'yellow'}]run {run['id']} {state}:[/] "
                  f"{run['error']}", highlight=False)  # fmt: skip
    if not as_json:
        console.print(f"run {run['id']}: {state}", highlight=False)
        console.print(
            f"records: {client.server}{API}/runs/{run['id']}/records",
            highlight=False,
            soft_wrap=True,
        )
    if state == "failed":
        return Exit.ERROR
    if state in ("cancelled", "interrupted"):
        return Exit.INTERRUPTED
    return _verdict_exit(run.get("verdict"), gate)


def _verdict_exit(verdict: dict[str, Any] | None, gate: bool) -> int:
    """As `latbench run`: client-bound first (its latencies cannot be trusted), then
    over-saturated, then too many failed requests, then SLOs."""
    if verdict is None:
        return Exit.ERROR
    if verdict["client_bound"]:
        return Exit.CLIENT_BOUND
    if verdict.get("oversaturated", False):
        return Exit.OVERSATURATED
    if not verdict.get("failures_passed", True):
        return Exit.FAILED
    if gate and not verdict["slo_passed"]:
        return Exit.SLO_MISSED
    return Exit.OK
