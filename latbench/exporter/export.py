"""One `latbench run`'s export from start to end: a registry of its own, served, pushed to a
Pushgateway and/or sent to an OTLP collector, and the linger that keeps the final values readable
until a scrape has read them.

The life cycle is the caller's to drive (`run_started`, `run_ended`, `linger`, `close`) because
only the caller knows when its results are safe and how a signal should end the wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from latbench.exporter.errors import MetricsError
from latbench.exporter.exposition import render_text
from latbench.exporter.push import Pusher
from latbench.exporter.series import LatbenchMetrics, RunLabels
from latbench.exporter.server import MetricsServer

if TYPE_CHECKING:
    from latbench.exporter.otlp import OtlpPusher
    from latbench.exporter.otlp_config import OtlpConfig


def parse_listen(text: str) -> tuple[str, int]:
    """`9400` -> ('127.0.0.1', 9400); `0.0.0.0:9400` -> ('0.0.0.0', 9400); `[::]:9400` ->
    ('::', 9400). Port 0: any free port."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    try:
        n = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: expected PORT or HOST:PORT, e.g. 9400, 0.0.0.0:9400") from None
    if not 0 <= n <= 65535:
        raise ValueError(f"{text!r}: port {n} is outside 0..65535")
    return host, n


# Two scrapes at Prometheus's default 15 s interval: a healthy scraper catches the end, one
# missed scrape included. The linger ends early once a scrape has read the final values.
DEFAULT_LINGER_S = 30.0


class MetricsExport:
    """`latbench run --metrics-port/--pushgateway/--otlp-metrics`: a registry of its own, served,
    pushed and/or sent over OTLP; each exposition reads the same `LatbenchMetrics`."""

    def __init__(
        self,
        listen: tuple[str, int] | None,
        pushgateway: str | None,
        linger_s: float = DEFAULT_LINGER_S,
        otlp: OtlpConfig | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = LatbenchMetrics(self.registry)
        self.linger_s = linger_s
        self.server = None
        if listen is not None:
            self.server = MetricsServer(lambda: render_text(self.metrics), *listen)
        self.pusher = Pusher(pushgateway, self.registry) if pushgateway else None
        self.otlp: OtlpPusher | None = None
        if otlp is not None:
            # Imported here: the protobuf binding is the optional `otel` extra.
            from latbench.exporter.otlp import OtlpPusher

            self.otlp = OtlpPusher(self.metrics, otlp)

    def run_started(self, labels: RunLabels) -> None:
        if self.pusher is not None:
            self.pusher.start(labels)
        if self.otlp is not None:
            self.otlp.start()

    def run_ended(self) -> str | None:
        """Right after the run: push and export the final values. Returns why the Pushgateway's
        push failed, or None; OTLP's failures are only warnings (`otlp_warnings`)."""
        if self.otlp is not None:
            self.otlp.finish()
        if self.pusher is None:
            return None
        try:
            self.pusher.finish()
        except MetricsError as e:
            return str(e)
        return None

    @property
    def otlp_warnings(self) -> list[str]:
        """OTLP exports that failed, as one line (the collector missed them; the run did not)."""
        return [] if self.otlp is None else self.otlp.warnings

    @property
    def warnings(self) -> list[str]:
        """Pushes during the run that failed (the live view missed them; the end did not)."""
        if self.pusher is None or not self.pusher.errors:
            return []
        errors = self.pusher.errors
        return [f"{len(errors)} of the pushes during the run failed; the first: {errors[0]}"]

    def linger(self) -> bool:
        """Serve until a scrape that began after the run has been answered, at most `linger_s`
        seconds. True when such a scrape happened; Ctrl-C ends the wait (False)."""
        if self.server is None:
            return True
        try:
            return self.server.wait_for_scrape_after(self.metrics.last_run_end(), self.linger_s)
        except KeyboardInterrupt:
            return False

    def close(self) -> None:
        if self.pusher is not None:
            self.pusher.stop()
        if self.otlp is not None:
            self.otlp.stop()
        if self.server is not None:
            self.server.close()
