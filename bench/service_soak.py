"""`python -m bench.service_soak`: latbench as a service, measured.

1. Overhead, side by side: the same benchmark through `latbench run --target` and through
   `latbench serve` (submitted over HTTP), against one simulator, alternating; the ratios of
   TTFT p50/p99, ITL p99 and event-loop lag p99 (service / local) show what the service costs.
2. Soak: the service probes the simulator on a short schedule for --minutes; every --every
   seconds it records the service's RSS, open file descriptors, number of exported series,
   history size, and how long a /metrics scrape and a runs listing take. A service that can run
   for months keeps RSS, descriptors and series flat while runs pile up and are pruned.

Loopback only; bounded in time. Prints a JSON report (and writes it with --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench._procmon import rss_bytes
from latbench.sim import SimConfig, SimProcess

TOKEN = "bench-token-0123456789abcdef"
READY = "latbench serve listening on "
LOOSE = {
    "validity": {
        "ttft_tolerance": "50ms",
        "itl_tolerance": "50ms",
        "loop_lag_p99": "50ms",
        "queue_delay_p99": "50ms",
    }
}


def http(method: str, url: str, body: Any = None) -> tuple[Any, float]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        raw = resp.read()
    took = time.perf_counter() - t
    ctype = resp.headers.get("Content-Type", "")
    return (json.loads(raw) if ctype.startswith("application/json") else raw.decode()), took


def start_service(config: dict[str, Any], work: Path) -> tuple[subprocess.Popen[str], str]:
    path = work / "service.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "latbench", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=(work / "serve.log").open("w"),
        text=True,
        env={**os.environ, "LATBENCH_TOKEN": TOKEN},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(READY):
        raise RuntimeError(f"latbench serve did not start: {(work / 'serve.log').read_text()}")
    return proc, line[len(READY) :].strip()


def figures(summary: dict[str, Any]) -> dict[str, float]:
    lat = summary["latency"]
    return {
        "ttft_p50_ms": lat["ttft"]["p50"] * 1e3,
        "ttft_p99_ms": lat["ttft"]["p99"] * 1e3,
        "itl_p99_ms": lat["itl"]["p99"] * 1e3,
        "loop_lag_p99_ms": summary["validity"]["loop_lag_p99_s"] * 1e3,
        "requests": summary["requests"]["succeeded"],
    }


def overhead(sim_url: str, work: Path, rounds: int, spec: dict[str, Any]) -> dict[str, Any]:
    config = {"listen": "127.0.0.1:0", "data_dir": str(work / "data-overhead"),
              "targets": {"sim": {"base_url": sim_url}}, "defaults": LOOSE}  # fmt: skip
    proc, url = start_service(config, work)
    local: list[dict[str, float]] = []
    service: list[dict[str, float]] = []
    try:
        for i in range(rounds):
            spec_file = work / "spec.yaml"
            spec_file.write_text(yaml.safe_dump({**spec, **LOOSE}))
            p = subprocess.run(
                [sys.executable, "-m", "latbench", "run", "--target", sim_url, "--spec",
                 str(spec_file), "--json", "--out", str(work / f"local-{i}")],
                capture_output=True, text=True, timeout=600, check=True,
            )  # fmt: skip
            local.append(figures(json.loads(p.stdout)))
            run, _ = http("POST", f"{url}/api/v1/runs", {**spec, "target": "sim"})
            while run["state"] in ("queued", "running"):
                time.sleep(0.5)
                run, _ = http("GET", f"{url}/api/v1/runs/{run['id']}")
            service.append(figures(run["summary"]))
    finally:
        proc.terminate()
        proc.wait(60)

    def med(rows: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    keys = ["ttft_p50_ms", "ttft_p99_ms", "itl_p99_ms", "loop_lag_p99_ms"]
    return {
        "spec": spec,
        "rounds": rounds,
        "local": {k: round(med(local, k), 3) for k in keys},
        "service": {k: round(med(service, k), 3) for k in keys},
        "ratio_service_over_local": {
            k: round(med(service, k) / med(local, k), 3) if med(local, k) else None for k in keys
        },
    }


def soak(
    sim_url: str, work: Path, minutes: float, every: float, probe_every: float, restarts: int
) -> dict[str, Any]:
    config = {
        "listen": "127.0.0.1:0",
        "data_dir": str(work / "data-soak"),
        "targets": {"sim": {"base_url": sim_url}},
        "defaults": LOOSE,
        "retention": {"max_runs": 50, "max_age": None},
        "schedules": [{"name": "probe", "target": "sim", "every": f"{probe_every:g}s",
                       "jitter": f"{probe_every / 4:g}s",
                       "spec": {"load": {"concurrency": 2, "requests": 10},
                                "workload": {"output_tokens": 32}}}],
    }  # fmt: skip
    proc, url = start_service(config, work)
    samples = []
    restarted: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        while True:
            due = len(restarted) < restarts and (
                time.monotonic() - t0 >= minutes * 60 * (len(restarted) + 1) / (restarts + 1)
            )
            if due:
                proc, entry = restart(proc, config, work, url, kill=len(restarted) % 2 == 0)
                url = entry.pop("url")
                restarted.append(entry)
                print(json.dumps({"restart": entry}), file=sys.stderr, flush=True)
            metrics, scrape_s = http("GET", f"{url}/metrics")
            page, list_s = http("GET", f"{url}/api/v1/runs?limit=500")
            series = sum(1 for line in metrics.splitlines() if line and not line.startswith("#"))
            fin = {
                line.split('state="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("latbench_service_runs_finished_total")
            }
            db = work / "data-soak" / "latbench.db"
            samples.append({
                "t_s": round(time.monotonic() - t0, 1),
                "rss_mib": round(rss_bytes(proc.pid) / 2**20, 1),
                "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
                "series": series,
                "runs_finished": int(sum(fin.values())),
                "runs_kept": len(page["runs"]),
                "db_kib": round(sum(p.stat().st_size for p in db.parent.glob("latbench.db*"))
                                / 1024, 1),
                "scrape_ms": round(scrape_s * 1e3, 2),
                "list_ms": round(list_s * 1e3, 2),
            })  # fmt: skip
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
            if time.monotonic() - t0 >= minutes * 60:
                break
            time.sleep(every)
    finally:
        proc.terminate()
        code = proc.wait(60)
    first = next((s for s in samples if s["runs_finished"] >= 5), samples[0])
    last = samples[-1]
    return {
        "minutes": minutes,
        "exit_status_on_sigterm": code,
        "first_after_5_runs": first,
        "restarts": restarted,
        "last": last,
        "samples": samples,
    }


def restart(
    proc: subprocess.Popen[str], config: dict[str, Any], work: Path, url: str, kill: bool
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Stop the service (SIGKILL or SIGTERM), start it again on the same data directory, and
    check that every run listed before is still listed, with in-flight ones interrupted."""
    before = http("GET", f"{url}/api/v1/runs?limit=500")[0]["runs"]
    if kill:
        proc.kill()
    else:
        proc.terminate()
    code = proc.wait(60)
    proc, url = start_service(config, work)
    after = {r["id"]: r for r in http("GET", f"{url}/api/v1/runs?limit=500")[0]["runs"]}
    # Retention may prune the oldest at start-up; the newest before must all still be there.
    newest = sorted(before, key=lambda r: r["id"])[-20:]
    missing = [r["id"] for r in newest if r["id"] not in after]
    was_live = [r["id"] for r in newest if r["state"] in ("queued", "running")]
    return proc, {
        "url": url,
        "signal": "SIGKILL" if kill else "SIGTERM",
        "exit_status": code,
        "listed_before": len(before),
        "listed_after": len(after),
        "newest_missing_after": missing,
        "in_flight_before": {i: after[i]["state"] for i in was_live if i in after},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="soak length")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between soak samples")
    ap.add_argument("--probe-every", type=float, default=2.0, help="seconds between probes")
    ap.add_argument("--restarts", type=int, default=0,
                    help="restart the service this many times, evenly spaced (SIGKILL, then "
                    "SIGTERM, alternating), and check its history survives")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3, help="overhead rounds (local, service)")
    ap.add_argument("--out", type=Path)
    ns = ap.parse_args()
    spec = {"load": {"concurrency": 8, "duration": "10s", "warmup": "2s"},
            "workload": {"input_tokens": 64, "output_tokens": 64}}  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="latbench-soak-") as d,
        SimProcess(SimConfig(ttft=0.05, itl=0.01)) as sim,
    ):
        work = Path(d)
        report = {
            "command": " ".join([sys.executable, "-m", "bench.service_soak", *sys.argv[1:]]),
            "overhead": overhead(sim.url, work, ns.rounds, spec),
            "soak": soak(sim.url, work, ns.minutes, ns.every, ns.probe_every, ns.restarts),
        }
    text = json.dumps(report, indent=2)
    if ns.out:
        ns.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
