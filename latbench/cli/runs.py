"""`latbench runs list|show|cancel|records`: the run history of a latbench service, one run's
state and summary tables, a cancel, a run's raw records (docs/service.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from latbench.cli.common import Exit, run_in_loop
from latbench.cli.service_client import (
    API,
    Client,
    add_connection_arguments,
    client_from_args,
    print_json,
    render_remote_summary,
)
from latbench.render.fit import Column, print_fitted


def add_arguments(sub: Any) -> None:
    runs = sub.add_parser("runs", help="runs on a latbench service: list, show, cancel, records")
    rsub = runs.add_subparsers(dest="runs_command", required=True)
    ls = rsub.add_parser("list", help="run history, newest first")
    ls.add_argument("--state", help="queued, running, completed, failed, cancelled, interrupted")
    ls.add_argument("--target", metavar="NAME")
    ls.add_argument("--schedule", metavar="NAME", help="runs of this schedule only")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--cursor", metavar="CURSOR", help="the next page, as the last one gave it")
    add_connection_arguments(ls)
    show = rsub.add_parser("show", help="one run: state, verdict and its summary tables")
    show.add_argument("run_id")
    add_connection_arguments(show)
    cancel = rsub.add_parser("cancel", help="cancel a queued or running run (records are kept)")
    cancel.add_argument("run_id")
    add_connection_arguments(cancel)
    rec = rsub.add_parser("records", help="a run's raw records (JSON Lines)")
    rec.add_argument("run_id")
    rec.add_argument("-o", "--output", type=Path, metavar="FILE", help="default: stdout")
    rec.add_argument("--follow", action="store_true", help="keep streaming until the run ends")
    add_connection_arguments(rec)


def main(ns: argparse.Namespace, console: Console, err: Console) -> int:
    client = client_from_args(ns)

    async def runs() -> int:
        async with client:
            if ns.runs_command == "list":
                return await _list(client, ns, console, err)
            if ns.runs_command == "show":
                run = await client.call("GET", f"{API}/runs/{ns.run_id}")
                if ns.json:
                    print_json(run)
                    return Exit.OK
                _show(run, console)
                if run.get("summary") is not None:
                    await render_remote_summary(client, run["id"], console)
                return Exit.OK
            if ns.runs_command == "cancel":
                run = await client.call("POST", f"{API}/runs/{ns.run_id}/cancel", auth=True)
                if ns.json:
                    print_json(run)
                else:
                    what = "cancelled" if run["state"] == "cancelled" else "cancel requested"
                    err.print(f"run {run['id']}: {what} ({run['state']})", highlight=False)
                return Exit.OK
            return await _records(client, ns)

    return int(run_in_loop(runs))


async def _list(client: Client, ns: argparse.Namespace, console: Console, err: Console) -> int:
    params = {
        k: v
        for k, v in (
            ("state", ns.state),
            ("target", ns.target),
            ("schedule", ns.schedule),
            ("limit", str(ns.limit)),
            ("cursor", ns.cursor),
        )
        if v is not None
    }
    query = "&".join(f"{k}={v}" for k, v in params.items())
    page = await client.call("GET", f"{API}/runs?{query}")
    if ns.json:
        print_json(page)
        return Exit.OK
    # The id first and repeated in each table a narrow terminal splits the list into, whole, so
    # it can be pasted into `runs show` (render/fit.py); what tells runs apart comes next.
    rows = [
        [
            r["id"], r["state"], _verdict_text(r.get("verdict")),
            (r["created_at"] or "").replace("T", " ")[:19], r["target"], r["name"],
            r["schedule"] or "",
        ]
        for r in page["runs"]
    ]  # fmt: skip
    values = ("state", "verdict", "created (UTC)", "target", "name", "schedule")
    print_fitted(console, None, [Column("id", "left")], [Column(c, "left") for c in values], rows)
    if page.get("next_cursor"):
        err.print(f"more: --cursor {page['next_cursor']}", highlight=False)
    return Exit.OK


def _verdict_text(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    if v["client_bound"]:
        return "client-bound"
    if not v.get("failures_passed", True):
        return "too many failed"
    return "SLOs met" if v["slo_passed"] else "SLO missed"


def _show(run: dict[str, Any], console: Console) -> None:
    rows = [
        ("run", run["id"]),
        ("state", run["state"] + (" (cancel requested)" if run.get("cancel_requested") else "")),
        ("target", run["target"]),
        ("name", run["name"]),
        ("schedule", run["schedule"] or "-"),
        ("created", run["created_at"]),
        ("started", run["started_at"] or "-"),
        ("ended", run["ended_at"] or "-"),
        ("verdict", _verdict_text(run.get("verdict"))),
    ]
    if run.get("error"):
        rows.append(("error", run["error"]))
    for k, v in rows:
        console.print(f"{k:>9}  {v}", highlight=False)


async def _records(client: Client, ns: argparse.Namespace) -> int:
    path = f"{API}/runs/{ns.run_id}/records" + ("?follow=true" if ns.follow else "")
    out = ns.output.open("wb") if ns.output else sys.stdout.buffer
    try:
        async for piece in client.stream(path):
            out.write(piece)
            out.flush()
    finally:
        if ns.output:
            out.close()
    return Exit.OK
