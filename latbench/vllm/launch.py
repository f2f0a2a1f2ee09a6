"""`latbench run --launch-vllm "<vllm args>"`: a vLLM server in a child process for one run.

It listens on loopback on a port latbench picks, its output goes to `vllm.log` in the run's
directory, and it is stopped (SIGTERM to its process group, then SIGKILL) whatever way the run
ends: finished, failed, Ctrl-C, or latbench itself killed (the kernel sends the child SIGTERM when
its parent dies, Linux only).

Tracing is on by default: vLLM gets `--otlp-traces-endpoint` pointing at the run's span receiver
(`target.otlp_receiver`, a free loopback port unless the user names one, or `off`; a named port
0 is made a free port before vLLM is told, since vLLM starts before the receiver listens) with OTLP
over HTTP and a short batch delay, so each request's span arrives right after it and the run
joins the two (`run/spans.py`). vLLM sends a span only when a request finishes, so the receiver,
which starts with the run's event loop after vLLM is ready, misses none. Where latbench lacks
its OpenTelemetry binding, vLLM starts without tracing and the user is told why. A user's own
`--otlp-traces-endpoint` is refused: vLLM sends its spans to one endpoint, and a run launched by
latbench joins them.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from latbench.otlp.receiver import INSTALL_HINT, otel_available
from latbench.shared.child import Child, StartStop
from latbench.shared.errors import LatbenchError, SpecError

ENTRYPOINT = ("-m", "vllm.entrypoints.openai.api_server")
# Opinions of a benchmark run, each only where the caller's environment says nothing.
DEFAULT_ENV = {"VLLM_NO_USAGE_STATS": "1"}
# With tracing: OTLP over HTTP (vLLM's default is gRPC, which the receiver does not speak), and a
# 200 ms batch delay instead of the SDK's 5 s, so spans come right after their requests.
TRACING_ENV = {
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
}
TRACING_FLAG = "--otlp-traces-endpoint"
READY_TIMEOUT_S = 900.0  # a large model's weights can take minutes to load
STOP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` now (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parse_launch_args(text: str) -> list[str]:
    """The vLLM arguments; latbench owns --host and --port (it benchmarks what it launched)."""
    try:
        args = shlex.split(text)
    except ValueError as e:
        raise SpecError(f"--launch-vllm: {e}") from None
    for arg in args:
        if arg.split("=", 1)[0] == TRACING_FLAG:
            raise SpecError(
                f"--launch-vllm: drop {TRACING_FLAG}; latbench points vLLM's tracing at its own "
                "span receiver and joins each span with its request (--otlp-receiver HOST:PORT "
                "chooses where it listens)"
            )
        if arg.split("=", 1)[0] in ("--host", "--port"):
            raise SpecError(
                f"--launch-vllm: drop {arg.split('=', 1)[0]}; latbench serves vLLM on "
                "127.0.0.1 on a free port and benchmarks that"
            )
    if "--model" not in {a.split("=", 1)[0] for a in args}:
        raise SpecError('--launch-vllm: name the model, e.g. --launch-vllm "--model MODEL"')
    return args


def tracing_unavailable() -> str | None:
    """Why latbench cannot receive a launched vLLM's spans, or None when it can. vLLM's side
    needs no check: vLLM requires opentelemetry-sdk and -exporter-otlp itself (0.32's
    metadata), and one that lacks them says so in the log tail of its failed start."""
    if not otel_available():
        return f"latbench cannot receive spans without the OpenTelemetry binding: {INSTALL_HINT}"
    return None


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VllmServer(StartStop):
    """A context manager: starts vLLM, waits until /health answers, stops it on exit."""

    def __init__(
        self,
        args: Sequence[str],
        port: int,
        log_path: Path,
        python: str | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        otlp_traces_endpoint: str | None = None,
    ) -> None:
        self.args = list(args)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.python = python or sys.executable
        self.ready_timeout_s = ready_timeout_s
        self.otlp_traces_endpoint = otlp_traces_endpoint
        self._child: Child | None = None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        tracing: list[str] = []
        env = {**DEFAULT_ENV, **os.environ}
        if self.otlp_traces_endpoint is not None:
            tracing = [TRACING_FLAG, self.otlp_traces_endpoint]
            env = {**DEFAULT_ENV, **TRACING_ENV, **os.environ}
        cmd = [
            self.python,
            *ENTRYPOINT,
            *self.args,
            *tracing,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with self.log_path.open("ab") as log:
            log.write(f"# latbench: {shlex.join(cmd)}\n".encode())
            log.flush()
            try:
                self._child = Child(
                    cmd,
                    # Its own process group: Ctrl-C reaches latbench only, which drains the run
                    # before it stops vLLM; and the stop reaches vLLM's engine processes too.
                    own_group=True,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                raise LatbenchError(f"--launch-vllm: cannot start {self.python}: {e}") from None
        try:
            self._child.wait_ready(
                self._healthy,
                self.ready_timeout_s,
                every_s=0.5,
                exited=lambda status: LatbenchError(
                    f"vLLM exited with status {status} before it was ready; "
                    f"the end of {self.log_path}:\n{self.log_tail()}"
                ),
                late=lambda: LatbenchError(
                    f"vLLM was not ready within {self.ready_timeout_s:g} s; "
                    f"the end of {self.log_path}:\n{self.log_tail()}"
                ),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False  # not listening yet

    def stop(self) -> int | None:
        return None if self._child is None else self._child.stop(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
