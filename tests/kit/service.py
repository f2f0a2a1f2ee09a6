"""`latbench serve` as the tests run it: a child process on a free loopback port, with a config
written for the test, talked to over HTTP. Every wait polls with a deadline; every process is
stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kit.cli import COMMAND
from latbench.records import Record, RunFooter, RunHeader
from latbench.records.record import iter_lines

TOKEN = "test-token-0123456789abcdef"
READY = "latbench serve listening on "
T = TypeVar("T")

# The machine is shared with other test runs: loop lag of a few ms now and then must not turn
# runs client-bound in tests about the API (as tests/cli/test_run.py's LOOSE).
LOOSE_VALIDITY = {
    "validity": {
        "ttft_tolerance": "50ms",
        "itl_tolerance": "50ms",
        "loop_lag_p99": "50ms",
        "queue_delay_p99": "50ms",
    }
}


def poll(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        got = probe()
        if got:
            return got
        last = got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what} (last: {last})")
        time.sleep(interval)


def service_config(sim_url: str, workdir: Path, **over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "data_dir": str(workdir / "data"),
        "targets": {"sim": {"base_url": sim_url}},
        "defaults": LOOSE_VALIDITY,
        "shutdown_grace": "5s",
    }
    config.update(over)
    return config


@contextmanager
def running(sim_url: str, workdir: Path, **over: Any) -> Iterator[Service]:
    """A service in front of the simulator at `sim_url`, for a module's tests: started with
    `service_config(sim_url, workdir, **over)`, and at the end it must stop cleanly (exit 0)."""
    svc = Service(service_config(sim_url, workdir, **over), workdir).start()
    yield svc
    assert svc.stop() == 0, svc.log()


def free_port_config(config: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """A deployment's config, run here: any free loopback port, data under `workdir`."""
    return {**config, "listen": "127.0.0.1:0", "data_dir": str(workdir / "data")}


class Service:
    """A `latbench serve` child process."""

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config_path = workdir / "service.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config)))
        self.data_dir = Path(config.get("data_dir", workdir / "data"))
        self.env = {**os.environ, "LATBENCH_TOKEN": TOKEN, **(env or {})}
        self.argv = argv or [*COMMAND, "serve", "--config"]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.starts = 0

    def start(self, timeout: float = 60.0) -> Service:
        self.starts += 1
        self.log_path = self.workdir / f"serve-{self.starts}.log"
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*self.argv, str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=self.env,
        )
        log.close()
        ready = threading.Event()
        urls: list[str] = []

        def read(stream: Any) -> None:
            for line in stream:  # drained for the child's whole life
                if line.startswith(READY) and not ready.is_set():
                    urls.append(line[len(READY) :].strip())
                    ready.set()

        threading.Thread(target=read, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"latbench serve did not start:\n{self.log()}")
        self.url = urls[0]
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL past `timeout`. The exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    # -- HTTP ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes, Mapping[str, str]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, data, _ = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else None

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = self.call(method, path, body, **kw)
        assert status < 300, (status, data)
        return data

    def submit(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        status, run = self.call("POST", "/api/v1/runs", dict(spec))
        assert status == 202, run
        return dict(run)

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.ok("GET", f"/api/v1/runs/{run_id}"))

    def wait_state(self, run_id: str, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        return poll(
            lambda: (r := self.run(run_id))["state"] in states and r,
            timeout,
            f"run {run_id} to be {'/'.join(states)}",
        )

    def runs(self, **query: str) -> list[dict[str, Any]]:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return list(self.ok("GET", f"/api/v1/runs?{q}")["runs"])

    def records(self, run_id: str) -> bytes:
        status, data, _ = self.request("GET", f"/api/v1/runs/{run_id}/records")
        assert status == 200, data
        return data

    def events(self, run_id: str, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
        """The run's server-sent events, parsed, until the stream ends."""
        req = urllib.request.Request(f"{self.url}/api/v1/runs/{run_id}/events")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for line in resp:
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])

    def metrics(self) -> str:
        status, data, _ = self.request("GET", "/metrics", token=None)
        assert status == 200
        return data.decode()


def request_lines(jsonl: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in jsonl.splitlines() if b'"type":"request"' in x]


def parse_records(jsonl: bytes) -> tuple[RunHeader | None, list[Any], RunFooter | None]:
    header = footer = None
    records = []
    for item in iter_lines(jsonl.splitlines(), "records"):
        if isinstance(item, RunHeader):
            header = item
        elif isinstance(item, RunFooter):
            footer = item
        elif isinstance(item, Record):
            records.append(item)
    return header, records, footer
