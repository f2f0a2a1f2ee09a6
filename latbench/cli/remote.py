"""The service's command-line client: `latbench submit`, `latbench runs list|show|cancel|records`.

The server comes from `--server` or LATBENCH_SERVER; the token (needed to submit and cancel)
from LATBENCH_TOKEN or `--token-file`, never from a flag value, so it stays out of shell history
and `ps`. `submit --wait` follows the run's server-sent events, then shows the same tables and
exits with the same status as `latbench run` (docs/service.md): the tables are recomputed here
from the run's records, so they are those of `latbench summary` on that file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from latbench.cli.main import Exit
from latbench.client.reads import read_bounded
from latbench.client.sse import SSEParser
from latbench.records.record import read_records
from latbench.render.terminal import render_summary
from latbench.shared.errors import LatbenchError, SpecError
from latbench.spec.slo import DEFAULT_SLOS
from latbench.spec.spec import load_spec, read_spec_file
from latbench.summary.summary import ClientStats, summarize

SERVER_ENV = "LATBENCH_SERVER"
TOKEN_ENV = "LATBENCH_TOKEN"
DEFAULT_SERVER = "http://127.0.0.1:8080"
API = "/api/v1"
RECONNECT_FOR_S = 120.0  # while following a run, how long to keep trying an unreachable server
REQUEST_TIMEOUT_S = 30.0
# The most of one JSON answer read from a service (a run with its summary is tens of KB); a
# larger one is not read further, so a wrong or hostile server cannot fill this process.
MAX_ANSWER_BYTES = 64 << 20

OK, ERROR = Exit.OK, Exit.ERROR


class RemoteError(LatbenchError):
    """The service could not be reached, or refused the request (the message says why)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _connection_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service")
    g.add_argument(
        "--server",
        metavar="URL",
        help=f"the service's root URL (default: ${SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    g.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the service's token (default: ${TOKEN_ENV})",
    )
    g.add_argument("--json", action="store_true", help="print the service's JSON")


def add_remote_arguments(sub: Any) -> None:
    """Mount `submit` and `runs` on the main CLI's subparsers."""
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
    _connection_arguments(p)

    runs = sub.add_parser("runs", help="runs on a latbench service: list, show, cancel, records")
    rsub = runs.add_subparsers(dest="runs_command", required=True)
    ls = rsub.add_parser("list", help="run history, newest first")
    ls.add_argument("--state", help="queued, running, completed, failed, cancelled, interrupted")
    ls.add_argument("--target", metavar="NAME")
    ls.add_argument("--schedule", metavar="NAME", help="runs of this schedule only")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--cursor", metavar="CURSOR", help="the next page, as the last one gave it")
    _connection_arguments(ls)
    show = rsub.add_parser("show", help="one run: state, verdict and its summary tables")
    show.add_argument("run_id")
    _connection_arguments(show)
    cancel = rsub.add_parser("cancel", help="cancel a queued or running run (records are kept)")
    cancel.add_argument("run_id")
    _connection_arguments(cancel)
    rec = rsub.add_parser("records", help="a run's raw records (JSON Lines)")
    rec.add_argument("run_id")
    rec.add_argument("-o", "--output", type=Path, metavar="FILE", help="default: stdout")
    rec.add_argument("--follow", action="store_true", help="keep streaming until the run ends")
    _connection_arguments(rec)


class Client:
    def __init__(self, server: str, token: str | None) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self._token:
            raise SpecError(f"this needs the service's token: set {TOKEN_ENV} or give --token-file")
        return {"Authorization": f"Bearer {self._token}"}

    async def call(self, method: str, path: str, body: Any = None, auth: bool = False) -> Any:
        assert self._session is not None
        url = self.server + path
        try:
            async with self._session.request(
                method,
                url,
                data=None if body is None else orjson.dumps(body),
                headers={**self._headers(auth), "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as resp:
                data = await read_bounded(resp.content, MAX_ANSWER_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RemoteError(f"cannot reach {self.server}: {_why(e)}") from None
        if len(data) > MAX_ANSWER_BYTES:
            raise RemoteError(
                f"{method} {path}: the answer is over {MAX_ANSWER_BYTES >> 20} MiB; is "
                f"{self.server} a latbench service?",
                status,
            )
        if status >= 400:
            raise RemoteError(f"{method} {path}: HTTP {status}: {_message(data)}", status)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise RemoteError(
                f"{method} {path}: HTTP {status}, but the answer is not JSON; is {self.server} "
                "a latbench service?",
                status,
            ) from None

    async def stream(self, path: str) -> AsyncIterator[bytes]:
        """The response body of a GET, piece by piece."""
        assert self._session is not None
        try:
            async with self._session.get(self.server + path) as resp:
                if resp.status >= 400:
                    raise RemoteError(
                        f"GET {path}: HTTP {resp.status}: "
                        f"{_message(await resp.content.read(1 << 16))}",
                        resp.status,
                    )
                async for piece in resp.content.iter_any():
                    yield piece
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RemoteError(f"lost {self.server}: {_why(e)}") from None


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _message(data: bytes) -> str:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.decode(errors="replace")[:500]
    return (str(body.get("error", body)) if isinstance(body, dict) else str(body))[:500]


def _client(ns: argparse.Namespace) -> Client:
    server = ns.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    if ns.token_file is not None:
        try:
            token = ns.token_file.read_text().strip()
        except OSError as e:
            raise SpecError(f"--token-file {ns.token_file}: {e.strerror}") from None
    return Client(server, token)


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _run(coro_fn: Callable[[], Any], loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as r:
        return r.run(coro_fn())


# -- submit -------------------------------------------------------------------------------------


def submit_body(ns: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = read_spec_file(ns.spec) if ns.spec else {}
    if ns.target:
        data["target"] = ns.target
    if ns.name:
        data["name"] = ns.name
    if ns.slo:
        slos = [s for s in ns.slo if s != "default"]
        if "default" in ns.slo:
            slos = [str(s) for s in DEFAULT_SLOS] + slos
        data["slos"] = slos
    if "target" not in data:
        raise SpecError("name the catalogue target: --target NAME, or target: NAME in the spec")
    return data


def cmd_submit(
    ns: argparse.Namespace,
    console: Console,
    err: Console,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> int:
    body = submit_body(ns)
    client = _client(ns)
    run_id: list[str] = []

    async def main() -> int:
        async with client:
            run = await client.call("POST", f"{API}/runs", body, auth=True)
            run_id.append(run["id"])
            if not ns.wait:
                if ns.json:
                    _print_json(run)
                else:
                    err.print(f"submitted run {run['id']} (target {run['target']}, {run['state']})")
                    console.print(run["id"], highlight=False)
                return OK
            err.print(f"run {run['id']}: {run['state']} (target {run['target']})", highlight=False)
            final = await follow(client, run["id"], err)
            return await finish(client, final, console, err, ns.json, gate=bool(ns.slo))

    try:
        return int(_run(main, loop_factory))
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
    def ms(d: dict[str, float] | None) -> str:
        return "-" if not d else f"{d['p50'] * 1e3:.1f}/{d['p99'] * 1e3:.1f} ms"

    rate = p.get("output_tokens_per_s")
    return Text(
        f"{p['elapsed_s']:.0f} s  done {p['done']}  in flight {p['inflight']}  "
        f"errors {p['errors']}  |  TTFT p50/p99 {ms(p.get('recent_ttft_s'))}  |  "
        f"ITL p50/p99 {ms(p.get('recent_itl_s'))}  |  "
        f"{0 if rate is None else rate:,.0f} tok/s"
    )


async def finish(
    client: Client, run: dict[str, Any], console: Console, err: Console, as_json: bool, gate: bool
) -> int:
    state = run["state"]
    if as_json:
        _print_json(run)
    elif run.get("summary") is not None:
        await render_remote_summary(client, run["id"], console)
    if run.get("error"):
        err.print(f"[{'red' if state == 'failed' else 'yellow'}]run {run['id']} {state}:[/] "
                  f"{run['error']}", highlight=False)  # fmt: skip
    if not as_json:
        console.print(f"run {run['id']}: {state}", highlight=False)
        console.print(f"records: {client.server}{API}/runs/{run['id']}/records", highlight=False)
    if state == "failed":
        return ERROR
    if state in ("cancelled", "interrupted"):
        return Exit.INTERRUPTED
    return verdict_exit(run.get("verdict"), gate)


def verdict_exit(verdict: dict[str, Any] | None, gate: bool) -> int:
    """As `latbench run`: client-bound first (its latencies cannot be trusted), then too many
    failed requests, then SLOs."""
    if verdict is None:
        return ERROR
    if verdict["client_bound"]:
        return Exit.CLIENT_BOUND
    if not verdict.get("failures_passed", True):
        return Exit.FAILED
    if gate and not verdict["slo_passed"]:
        return Exit.SLO_MISSED
    return OK


async def render_remote_summary(client: Client, run_id: str, console: Console) -> None:
    """Fetch the run's records and render them as `latbench run` does."""
    with tempfile.TemporaryDirectory(prefix="latbench-") as d:
        path = Path(d) / "records.jsonl"
        with path.open("wb") as f:
            async for piece in client.stream(f"{API}/runs/{run_id}/records"):
                f.write(piece)
        records = read_records(path)
    spec = load_spec(records.header.spec if records.header else {}, source=f"run {run_id}")
    footer = records.footer
    summary = summarize(
        records.records,
        window=None if footer is None else (footer.window_start, footer.window_end),
        slos=spec.slos,
        percentiles=spec.percentiles,
        client=ClientStats.from_dict(footer.validity) if footer and footer.validity else None,
        limits=spec.validity.limits(),
    )
    render_summary(summary, console)


# -- runs ---------------------------------------------------------------------------------------


def cmd_runs(
    ns: argparse.Namespace,
    console: Console,
    err: Console,
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> int:
    client = _client(ns)

    async def main() -> int:
        async with client:
            if ns.runs_command == "list":
                return await _list(client, ns, console, err)
            if ns.runs_command == "show":
                run = await client.call("GET", f"{API}/runs/{ns.run_id}")
                if ns.json:
                    _print_json(run)
                    return OK
                _show(run, console)
                if run.get("summary") is not None:
                    await render_remote_summary(client, run["id"], console)
                return OK
            if ns.runs_command == "cancel":
                run = await client.call("POST", f"{API}/runs/{ns.run_id}/cancel", auth=True)
                if ns.json:
                    _print_json(run)
                else:
                    what = "cancelled" if run["state"] == "cancelled" else "cancel requested"
                    err.print(f"run {run['id']}: {what} ({run['state']})", highlight=False)
                return OK
            return await _records(client, ns)

    return int(_run(main, loop_factory))


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
        _print_json(page)
        return OK
    t = Table("state", "target", "name", "schedule", "created (UTC)", "verdict")
    t.add_column("id", no_wrap=True)  # whole, so it can be pasted into `runs show`
    for r in page["runs"]:
        t.add_row(
            r["state"], r["target"], r["name"], r["schedule"] or "",
            (r["created_at"] or "").replace("T", " ")[:19], _verdict_text(r.get("verdict")),
            r["id"],
        )  # fmt: skip
    console.print(t)
    if page.get("next_cursor"):
        err.print(f"more: --cursor {page['next_cursor']}", highlight=False)
    return OK


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
    return OK
