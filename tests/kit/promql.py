"""Real Prometheus parts for the tests: a Prometheus server and a Pushgateway run as child
processes on free loopback ports with temporary config and data.

Nothing here mocks latbench: the exporter under test is latbench itself, scraped over real
sockets. Every wait polls with a deadline; every process started is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
NEEDS = (
    "needs Debian's prometheus package (apt-get install -y --no-install-recommends prometheus); "
    ".ci/run installs it"
)

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy (not None, False or empty), or fail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            got = probe()
            if got:
                return got
        except (OSError, ValueError, KeyError) as e:  # not up yet, not there yet
            last_error = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what} ({last_error})")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def stop_pid(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM the process by its PID, then SIGKILL it if it has not exited in time."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


class Prometheus:
    """`prometheus` in the foreground on a free loopback port, with this config and a temporary
    data directory."""

    def __init__(self, config: Mapping[str, Any], workdir: Path) -> None:
        if PROMETHEUS is None:
            raise RuntimeError(NEEDS)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._ready, 60, "Prometheus to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        return http_get(f"{self.url}/-/ready").startswith(b"Prometheus")

    def api(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=30)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} {params}: HTTP {e.code}: {e.read()[:500]!r}") from e
        data = json.loads(body)
        if data.get("status") != "success":
            raise AssertionError(f"{path} {params}: {data}")
        return data["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        return list(self.api("query", **params)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def stop(self) -> None:
        stop_pid(self.proc)
        self._log.close()


class Pushgateway:
    def __init__(self, workdir: Path) -> None:
        if PUSHGATEWAY is None:
            raise RuntimeError("needs Debian's prometheus-pushgateway package")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "pushgateway.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                PUSHGATEWAY,
                f"--web.listen-address=127.0.0.1:{self.port}",
                # No persistence: Debian's default file would carry groups from one test (and
                # one run) to the next.
                "--persistence.file=",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: http_get(f"{self.url}/-/ready") is not None, 30, "the Pushgateway")
        except BaseException:
            self.stop()
            raise

    def groups(self) -> list[dict[str, Any]]:
        return list(json.loads(http_get(f"{self.url}/api/v1/metrics"))["data"])

    def stop(self) -> None:
        stop_pid(self.proc)
        self._log.close()


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Grafana's variable substitution for `$name` and `${name}`, longest names first."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    if "$" in expr.replace("$$", ""):
        raise AssertionError(f"unsubstituted variable left in {expr!r}")
    return expr
