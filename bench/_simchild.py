"""One simulator process of a farm: serves the shared port with SO_REUSEPORT and a private admin
port, so the harness can read and reset each process's own `/sim/truth`.

`python -m bench._simchild CONFIG_JSON PORT` prints `bench-sim PUBLIC_PORT ADMIN_PORT` once both
sockets are bound, then serves until SIGTERM (or the harness's death: the simulator's own
parent-death hook is reused).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from latbench.shared import rxstamp
from latbench.sim import SimConfig
from latbench.sim.__main__ import _die_with_parent
from latbench.sim.arrival import listen
from latbench.sim.server import create_app


async def serve(config: SimConfig, port: int) -> None:
    runner = web.AppRunner(create_app(config), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    servers: list[asyncio.Server] = []
    try:
        servers.append(await listen(runner, config.host, port, reuse_port=True))
        servers.append(await listen(runner, config.host, 0))
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        print(f"bench-sim {ports[0]} {ports[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for s in servers:
            s.close()
        await runner.cleanup()


def main() -> None:
    _die_with_parent()
    config = SimConfig.model_validate_json(sys.argv[1])
    with asyncio.Runner(loop_factory=rxstamp.new_event_loop) as r:
        r.run(serve(config, int(sys.argv[2])))


if __name__ == "__main__":
    main()
