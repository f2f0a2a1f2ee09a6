"""The HTTP API under /api/v1, plus /healthz, /readyz and the OpenAPI document.

Every error is JSON, `{"error": "..."}`, naming what was wrong. Mutating endpoints (submit,
cancel) need `Authorization: Bearer <token>`, checked before the body is read and compared in
constant time. Reads are open: run history holds no secrets (keys never enter a spec, a record
or a label).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from latbench.agents.pool import AgentPool
from latbench.service.admit import Refused, admit
from latbench.service.agents import agent_json, check_registered, connected
from latbench.service.config import ServiceConfig
from latbench.service.runs import Active, RunManager
from latbench.service.scheduler import Scheduler
from latbench.service.store import QUEUED, RUNNING, STATES, RunRow, Store

CONFIG = web.AppKey("config", ServiceConfig)
STORE = web.AppKey("store", Store)
MANAGER = web.AppKey("manager", RunManager)
SCHEDULER = web.AppKey("scheduler", Scheduler)
SCHEDULER_TASK = web.AppKey("scheduler_task", asyncio.Task)
TOKEN = web.AppKey("token", str)
POOL: web.AppKey[AgentPool | None] = web.AppKey("pool")

API = "/api/v1"
OPENAPI = Path(__file__).with_name("openapi.yaml")
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
PROGRESS_INTERVAL_S = 0.5  # at most two progress events a second per follower
MAX_PAGE = 500

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status, headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Refused as e:
        return error(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return error(e.status, e.text or e.reason, headers)


def _check_token(request: web.Request) -> None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="latbench"'}
    if scheme.lower() != "bearer" or not given.strip():
        raise web.HTTPUnauthorized(
            text="this endpoint needs the service's token: Authorization: Bearer <token>",
            headers=challenge,
        )
    if not hmac.compare_digest(given.strip().encode(), request.app[TOKEN].encode()):
        raise web.HTTPUnauthorized(text="the bearer token is not this service's", headers=challenge)


def requires_token(handler: Handler) -> Handler:
    async def checked(request: web.Request) -> web.StreamResponse:
        _check_token(request)
        return await handler(request)

    checked.__name__ = handler.__name__
    return checked


def _time(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verdict(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    # Summaries stored before the failed share existed have no `failures`: they were not judged.
    failures = summary.get("failures")
    return {
        "slo_passed": summary["slo"]["passed"],
        "client_bound": summary["client_bound"],
        "failures_passed": failures["passed"] if failures else True,
        # Summaries stored before the over-saturation stop existed have none: not stopped.
        "oversaturated": summary.get("oversaturation") is not None,
    }


def placement(request: dict[str, Any]) -> tuple[int | None, str | None]:
    """A stored submission's agents and location (admitted once, so well-formed)."""
    location = request.get("location")
    location = location if isinstance(location, str) else None
    agents = request.get("agents")
    if type(agents) is not int:
        agents = None if location is None else 1
    return agents, location


def run_json(row: RunRow, active: Active | None, *, detail: bool) -> dict[str, Any]:
    link = f"{API}/runs/{row.id}"
    agents, location = placement(row.request)
    d: dict[str, Any] = {
        "id": row.id,
        "state": row.state,
        "target": row.target,
        "name": row.name,
        "schedule": row.schedule,
        "agents": agents,
        "location": location,
        "created_at": _time(row.created_at),
        "started_at": _time(row.started_at),
        "ended_at": _time(row.ended_at),
        "ended": row.ended,
        "error": row.error,
        "cancel_requested": bool(active is not None and active.cancel_requested),
        "verdict": verdict(row.summary),
        "progress": active.progress.snapshot() if active and row.state == RUNNING else None,
        "links": {"self": link, "events": f"{link}/events", "records": f"{link}/records"},
    }
    if detail:
        d["spec"] = row.spec
        d["summary"] = row.summary
        d["validity"] = None if row.summary is None else row.summary["validity"]
    return d


def _run_id(request: web.Request) -> str:
    return request.match_info["run_id"]


async def _row(request: web.Request) -> tuple[RunRow, Active | None]:
    manager = request.app[MANAGER]
    run_id = _run_id(request)
    a = manager.active(run_id)
    row = a.row if a is not None else await manager.store.get(run_id)
    if row is None:
        raise Refused(404, f"no run {run_id!r}")
    return row, a


# -- probes and documents -----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    try:
        store_ok = await asyncio.wait_for(app[STORE].ping(), 2.0)
    except Exception:
        store_ok = False
    task = app[SCHEDULER_TASK]
    # With no schedules the task ends at once, cleanly; otherwise it must be running.
    scheduler_ok = not task.done() or (not task.cancelled() and task.exception() is None)
    checks = {
        "store": store_ok,
        "scheduler": scheduler_ok,
        "accepting_runs": not app[MANAGER].draining,
    }
    ready = all(checks.values())
    return _json({"ready": ready, "checks": checks}, 200 if ready else 503)


async def openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})


# -- catalogue and schedules --------------------------------------------------------------------


async def list_targets(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    manager = request.app[MANAGER]
    out = []
    for name, t in config.targets.items():
        out.append(
            {
                "name": name,
                "api": t.api,
                "model": t.model,
                "builtin_sim": t.builtin_sim is not None,
                "max_concurrent_runs": t.max_concurrent_runs,
                "queued": sum(a.row.target == name for a in manager.queued),
                "running": sum(a.row.target == name for a in manager.running.values()),
            }
        )
    return _json({"targets": out})


async def list_agents(request: web.Request) -> web.Response:
    """The agents registered with the service (none without an agents section)."""
    pool = request.app[POOL]
    if pool is None:
        return _json({"enabled": False, "coordinator": None, "agents": []})
    agents = [agent_json(a) for a in connected(pool)]
    return _json({"enabled": True, "coordinator": pool.url, "agents": agents})


async def list_schedules(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    sch = request.app[SCHEDULER]
    out = [
        {
            "name": s.name,
            "target": s.target,
            "every_s": s.every,
            "cron": s.cron,
            "jitter_s": s.jitter,
            "locations": s.locations,
            "agents": s.placements()[0][0],
            "next_fire_at": _time(sch.next_at.get(s.name)),
            "last_run_id": sch.last_run.get(s.name),
            "fired": sch.fired[s.name],
            "skipped": sch.skipped[s.name],
        }
        for s in config.schedules
    ]
    return _json({"schedules": out})


# -- runs ---------------------------------------------------------------------------------------


def _int_param(
    request: web.Request, name: str, default: int | None, lo: int, hi: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise Refused(400, f"query parameter {name}={raw!r}: give a whole number") from None
    if not lo <= v <= hi:
        raise Refused(400, f"query parameter {name}={v}: give {lo}..{hi}")
    return v


async def list_runs(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise Refused(400, f"query parameter state={state!r}: one of {', '.join(STATES)}")
    limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
    cursor = _int_param(request, "cursor", None, 1, 2**62)
    assert limit is not None
    rows, nxt = await manager.store.list(
        state=state,
        target=request.query.get("target"),
        schedule=request.query.get("schedule"),
        limit=limit,
        before=cursor,
    )
    runs = []
    for row in rows:
        a = manager.active(row.id)
        runs.append(run_json(a.row if a else row, a, detail=False))
    return _json({"runs": runs, "next_cursor": None if nxt is None else str(nxt)})


async def get_run(request: web.Request) -> web.Response:
    row, a = await _row(request)
    return _json(run_json(row, a, detail=True))


@requires_token
async def submit_run(request: web.Request) -> web.Response:
    try:
        body = await request.json(loads=orjson.loads)
    except (orjson.JSONDecodeError, UnicodeDecodeError) as e:
        raise Refused(400, f"the request body is not JSON: {e}") from None
    manager = request.app[MANAGER]
    admitted = admit(body, request.app[CONFIG], manager.urls)
    pool = request.app[POOL]
    if admitted.agents is not None and pool is not None:
        check_registered(pool, admitted.agents, admitted.location)
    row = await manager.submit(admitted)
    a = manager.active(row.id)
    return _json(run_json(row, a, detail=True), 202, {"Location": f"{API}/runs/{row.id}"})


@requires_token
async def cancel_run(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    row = await manager.cancel(_run_id(request))
    return _json(run_json(row, manager.active(row.id), detail=False), 202)


async def run_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `state` on every state change, `progress` while running (at most
    twice a second), then `end` with the whole run; `shutdown` if the service stops first."""
    manager = request.app[MANAGER]
    row, a = await _row(request)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx would otherwise buffer the stream
        }
    )
    await resp.prepare(request)

    async def send(kind: str, data: dict[str, Any]) -> None:
        await resp.write(b"data: " + orjson.dumps({"type": kind, **data}) + b"\n\n")

    last_state = None
    with contextlib.suppress(ConnectionResetError):  # the follower went away
        while True:
            if row.state != last_state:
                await send("state", {"run": run_json(row, a, detail=False)})
                last_state = row.state
            if a is None:
                await send("end", {"run": run_json(row, None, detail=True)})
                break
            if manager.draining and row.state == QUEUED:
                await send("shutdown", {"message": "the service is shutting down; the run "
                                        "stays queued and runs after a restart"})  # fmt: skip
                break
            if row.state == RUNNING:
                await send("progress", {"progress": a.progress.snapshot()})
            if await a.progress.wait(HEARTBEAT_S):
                await asyncio.sleep(PROGRESS_INTERVAL_S)  # coalesce bursts of records
            else:
                await resp.write(b": keep-alive\n\n")
            a = manager.active(row.id)
            row = a.row if a is not None else (await manager.store.get(row.id) or row)
    return resp


async def run_records(request: web.Request) -> web.StreamResponse:
    """The run's records file (JSON Lines), whole lines only; `follow=true` keeps streaming new
    lines until the run ends."""
    manager = request.app[MANAGER]
    row, a = await _row(request)
    follow = request.query.get("follow", "false").lower() in ("1", "true", "yes")
    path = manager.records_path(row.id)
    if a is None and not path.exists():
        raise Refused(
            404, f"run {row.id} has no records: it was {row.state} before sending a request"
            + (f" ({row.error})" if row.error else ""),
        )  # fmt: skip
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    pending = b""
    f = None
    with contextlib.suppress(ConnectionResetError):  # the follower went away
        try:
            while True:
                a = manager.active(row.id)
                if f is None and path.exists():
                    f = path.open("rb")
                chunk = f.read(1 << 16) if f is not None else b""
                if chunk:
                    data = pending + chunk
                    cut = data.rfind(b"\n") + 1
                    if cut:
                        await resp.write(data[:cut])
                    pending = data[cut:]
                    continue
                if a is None or not follow:
                    break
                await a.progress.wait(1.0)
        finally:
            if f is not None:
                f.close()
        await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(f"{API}/openapi.yaml", openapi)
    app.router.add_get(f"{API}/targets", list_targets)
    app.router.add_get(f"{API}/schedules", list_schedules)
    app.router.add_get(f"{API}/agents", list_agents)
    app.router.add_get(f"{API}/runs", list_runs)
    app.router.add_post(f"{API}/runs", submit_run)
    app.router.add_get(f"{API}/runs/{{run_id}}", get_run)
    app.router.add_get(f"{API}/runs/{{run_id}}/events", run_events)
    app.router.add_get(f"{API}/runs/{{run_id}}/records", run_records)
    app.router.add_post(f"{API}/runs/{{run_id}}/cancel", cancel_run)


QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class AccessLogger(AbstractAccessLogger):
    """One line per API request; scrapes and probes only when they fail (every 15 s for months
    would bury everything else)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path in QUIET_PATHS and response.status < 400:
            return
        self.logger.info(
            "%s %s %s %d %.1f ms",
            request.remote, request.method, request.path_qs, response.status, time * 1e3,
        )  # fmt: skip
