"""The aiohttp application and `latbench serve`'s life: start, serve, drain on SIGTERM, stop.

Start-up order (a `cleanup_ctx`, so each thing is undone if and only if it was set up): builtin
simulators, the store, the agents' pool (with an `agents` section: it listens on its own port for
the service's life, and closes after the runs on its agents have drained), recovery of runs a
previous process left behind, the run manager and the scheduler. Shutdown on the first SIGTERM
or SIGINT: stop listening (aiohttp closes the sockets first), stop the scheduler, give running
runs `shutdown_grace` to finish, cancel what is still in flight (records flushed, footers
written), close the agents' connections (they connect again to the next service) and the store,
exit 0. A second signal skips the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from latbench.agents.pool import AgentPool
from latbench.exporter import LatbenchMetrics
from latbench.service.admit import Refused, check_target_keys
from latbench.service.agents import AgentGauge
from latbench.service.api import (
    CONFIG,
    MANAGER,
    POOL,
    SCHEDULER,
    SCHEDULER_TASK,
    STORE,
    TOKEN,
    AccessLogger,
    add_routes,
    json_errors,
)
from latbench.service.config import ServiceConfig
from latbench.service.runs import RunManager
from latbench.service.scheduler import Scheduler, check_schedules
from latbench.service.store import Store
from latbench.shared.errors import LatbenchError, SpecError
from latbench.sim import SimProcess
from latbench.spec import TargetSpec

log = logging.getLogger("latbench.service")

READY_PREFIX = "latbench serve listening on "
DB_NAME = "latbench.db"
HANDLER_SHUTDOWN_S = 5.0  # after the drain, how long open requests (followers) may take


def create_app(
    config: ServiceConfig, token: str, agent_token: str | None = None
) -> web.Application:
    """`agent_token`: the agents' token, read at start (`serve`), when the config has agents."""
    app = web.Application(client_max_size=config.limits.max_body_bytes, middlewares=[json_errors])
    app[CONFIG] = config
    app[TOKEN] = token
    app[POOL] = None
    # The app's own registry (never the process-global one), holding the exporter's series and
    # the service's gauges; a scrape reads both.
    registry = CollectorRegistry()
    metrics = LatbenchMetrics(registry)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            urls = await _target_urls(config, stack)
            try:
                check_schedules(config, urls)
            except Refused as e:
                raise SpecError(e.message) from None
            store = await Store.open(config.data_dir / DB_NAME)
            stack.push_async_callback(store.close)
            pool = None
            if config.agents is not None:
                pool = await _start_pool(config, agent_token)
                stack.push_async_callback(pool.close)
                registry.register(AgentGauge(pool, metrics))
                app[POOL] = pool
            if config.otlp_metrics is not None:
                # The same series over OTLP, exported for the service's life from a thread
                # of its own; imported here, the binding being the optional `otel` extra.
                from latbench.exporter.otlp import OtlpPusher

                otlp = OtlpPusher(metrics, config.otlp_metrics.build(), log=log)
                otlp.start()
                # Its last export, off the loop, after the runs have drained.
                stack.push_async_callback(asyncio.to_thread, otlp.finish)
            manager = RunManager(config, store, metrics, urls, pool)
            await manager.recover()
            scheduler = Scheduler(config, manager, random.Random())
            registry.register(manager)
            registry.register(scheduler)
            task = asyncio.create_task(scheduler.run(), name="latbench-scheduler")
            stack.callback(task.cancel)
            app[STORE], app[MANAGER], app[SCHEDULER], app[SCHEDULER_TASK] = (
                store, manager, scheduler, task,
            )  # fmt: skip
            yield

    async def drain(app: web.Application) -> None:
        app[SCHEDULER_TASK].cancel()
        await app[MANAGER].drain(config.shutdown_grace)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)
    add_routes(app)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app


async def _start_pool(config: ServiceConfig, token: str | None) -> AgentPool:
    """The agents' endpoint, listening until the service stops (AgentError if it cannot)."""
    assert config.agents is not None
    host, port = config.agents.host_port
    pool = AgentPool(
        token or config.agents.read_token(),
        host,
        port,
        max_uncertainty_ns=round(config.agents.max_clock_uncertainty * 1e9),
        keep_agents=True,  # they stay between runs, and come back after a lost connection
    )
    await pool.start()
    log.info("agents: listening on %s:%d (latbench agent --coordinator %s)", host, pool.port,
             pool.url)  # fmt: skip
    return pool


async def _target_urls(config: ServiceConfig, stack: contextlib.AsyncExitStack) -> dict[str, str]:
    """Each target's base URL; builtin simulators are started, in child processes, for the
    service's life."""
    urls: dict[str, str] = {}
    for name, t in config.targets.items():
        if t.builtin_sim is None:
            assert t.base_url is not None
            url = TargetSpec(base_url=t.base_url).base_url  # a trailing /v1 dropped, as for runs
            assert url is not None
            urls[name] = url
            continue
        sim = SimProcess(t.builtin_sim)
        await asyncio.to_thread(sim.start)
        stack.push_async_callback(asyncio.to_thread, sim.stop)
        urls[name] = sim.url
        log.info("target %s: builtin simulator at %s", name, sim.url)
    return urls


async def serve(config: ServiceConfig) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    token = config.auth.read_token()
    agent_token = None if config.agents is None else config.agents.read_token()
    check_target_keys(config)
    app = create_app(config, token, agent_token)
    runner = web.AppRunner(
        app,
        handle_signals=False,  # ours below: the first signal drains, a second skips the grace
        access_log_class=AccessLogger,
        shutdown_timeout=HANDLER_SHUTDOWN_S,
    )
    await runner.setup()
    host, port = config.host_port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise LatbenchError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    bound = runner.addresses[0]
    print(f"{READY_PREFIX}http://{host}:{bound[1]}", flush=True)
    log.info("listening on http://%s:%d; data in %s", host, bound[1], config.data_dir)

    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("shutting down: no new runs; running ones have %g s", config.shutdown_grace)
            stop.set()
        else:
            log.warning("second signal: cancelling running runs now")
            app[MANAGER].abort_now()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    await runner.cleanup()
    log.info("stopped")


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
