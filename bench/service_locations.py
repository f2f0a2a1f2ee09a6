"""`python -m bench.service_locations`: probes from many places, measured over loopback.

One simulator, one `latbench serve` with an agents section, and two `latbench agent`s, in
locations `near` and `far`; `far` reaches the target through the tests' delaying TCP proxy
(tests/kit/delay_proxy.py: every chunk toward the agent held --delay-ms, since the kernel here
has no netem), named in the catalogue as the target's URL for `far` (`location_urls`). Each round
submits the same closed-loop probe three times: on the service's own workers (`local`), on the
`near` agent and on the `far` one, and prints each run's TTFT and ITL (p50, p99) and verdict.
`far`'s TTFT should exceed `near`'s by the delay; `near`'s should equal `local`'s, the relay
costing nothing a latency can see. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' kit: the service helper, the proxy

from kit.agents import TOKEN, free_port  # noqa: E402
from kit.delay_proxy import delay_proxy  # noqa: E402
from kit.service import Service, poll, service_config  # noqa: E402

from latbench.sim import SimConfig, SimProcess  # noqa: E402


def figures(run: dict[str, Any]) -> dict[str, Any]:
    lat = run["summary"]["latency"]
    return {
        "state": run["state"],
        "ttft_p50_ms": round(lat["ttft"]["p50"] * 1e3, 2),
        "ttft_p99_ms": round(lat["ttft"]["p99"] * 1e3, 2),
        "itl_p50_ms": round(lat["itl"]["p50"] * 1e3, 2),
        "itl_p99_ms": round(lat["itl"]["p99"] * 1e3, 2),
        "client_bound": run["summary"]["client_bound"],
    }


def agent(port: int, location: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = ["agent", "--coordinator", f"127.0.0.1:{port}", "--location", location]
    return subprocess.Popen(
        [sys.executable, "-m", "latbench", *argv, "--workers", "1"],
        stderr=subprocess.DEVNULL,
        env=env,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--delay-ms", type=float, default=80.0)
    ap.add_argument("--ttft-ms", type=float, default=30.0)
    args = ap.parse_args()
    spec = {
        "load": {"concurrency": 1, "requests": args.requests, "warmup_requests": 5},
        "workload": {"input_tokens": 16, "output_tokens": 16, "tokenizer": "words"},
    }
    report: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimProcess(SimConfig(ttft=args.ttft_ms / 1e3, itl=0.005)) as sim,
        delay_proxy(sim.url, args.delay_ms / 1e3) as proxy,
    ):
        port = free_port()
        target = {"base_url": sim.url, "location_urls": {"far": proxy.url}}
        config = service_config(
            sim.url, Path(tmp), targets={"sim": target}, agents={"listen": f"127.0.0.1:{port}"}
        )
        svc = Service(config, Path(tmp), env={"LATBENCH_AGENT_TOKEN": TOKEN}).start()
        env = {**os.environ, "LATBENCH_AGENT_TOKEN": TOKEN}
        agents = [agent(port, loc, env) for loc in ("near", "far")]
        try:
            poll(lambda: len(svc.ok("GET", "/api/v1/agents")["agents"]) == 2, 60, "the agents")
            for rnd in range(args.rounds):
                for where in (None, "near", "far"):
                    placed = {} if where is None else {"location": where}
                    run = svc.submit({"target": "sim", **spec, **placed})
                    done = svc.wait_state(run["id"], "completed", "failed", timeout=600)
                    row = {"round": rnd, "from": where or "local", **figures(done)}
                    print(json.dumps(row), file=sys.stderr)
                    report.append(row)
        finally:
            svc.stop()
            for p in agents:
                p.terminate()
                p.wait(30)
    print(json.dumps({"delay_ms": args.delay_ms, "ttft_ms": args.ttft_ms, "runs": report}))


if __name__ == "__main__":
    main()
