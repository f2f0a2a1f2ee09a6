"""Serving `/metrics` over HTTP from a thread of its own.

A scrape never waits for the client's event loop, and the loop never runs the exposition code:
the server is a threaded WSGI server that calls the `render` it was given (any function giving
the text-format body) and moves the bytes. It also tells when it answered a scrape that began
after a given instant, which is how a run's export knows its final values were read.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from latbench.exporter.errors import MetricsError
from latbench.shared.buckets import TEXT_FORMAT


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the process's exit
    on_served: Callable[[float], None] | None = None


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per scrape would bury the run's own output

    def handle(self) -> None:
        started = time.monotonic()
        super().handle()
        # Reported once the response is written, with when the request began: a scrape that
        # began after a run's end has read that run's final values.
        if getattr(self, "path", "").split("?")[0] in ("/metrics", "/"):
            server = self.server
            if isinstance(server, _Server) and server.on_served is not None:
                server.on_served(started)


class MetricsServer:
    """`/metrics` over HTTP from a thread of its own, so a scrape never waits for the client's
    event loop, and the loop never runs the exposition code. `render` gives the body, in the
    text format (`lambda: render_text(metrics)`, or `lambda: generate_latest(registry)`)."""

    def __init__(self, render: Callable[[], bytes], host: str = "127.0.0.1", port: int = 0) -> None:
        self._served = 0
        self._latest_start = -1.0
        self._cond = threading.Condition()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"latbench serves /metrics\n"]
            body = render()
            start_response(
                "200 OK", [("Content-Type", TEXT_FORMAT), ("Content-Length", str(len(body)))]
            )
            return [body]

        try:
            server_class = _Server6 if ":" in host else _Server
            self._httpd = make_server(
                host, port, app, server_class=server_class, handler_class=_Handler
            )
        except OSError as e:
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
        self._httpd.on_served = self._on_served
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="latbench-metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def _on_served(self, started: float) -> None:
        with self._cond:
            self._served += 1
            self._latest_start = max(self._latest_start, started)
            self._cond.notify_all()

    @property
    def scrapes(self) -> int:
        """How many scrapes have been answered so far."""
        return self._served

    def wait_for_scrape_after(self, instant: float, timeout: float) -> bool:
        """Wait until a scrape that began at or after `instant` (`time.monotonic()`) has been
        answered, at most `timeout` seconds. True if one was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest_start < instant:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)
