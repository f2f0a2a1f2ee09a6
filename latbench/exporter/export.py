"""One `latbench run`'s export from start to end: a registry of its own, served and/or pushed,
and the linger that keeps the final values readable until a scrape has read them.

The life cycle is the caller's to drive (`run_started`, `run_ended`, `linger`, `close`) because
only the caller knows when its results are safe and how a signal should end the wait.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from latbench.exporter.errors import MetricsError
from latbench.exporter.exposition import render_text
from latbench.exporter.push import Pusher
from latbench.exporter.series import LatbenchMetrics, RunLabels
from latbench.exporter.server import MetricsServer


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
    """`latbench run --metrics-port/--pushgateway`: a registry of its own, served and/or pushed."""

    def __init__(
        self,
        listen: tuple[str, int] | None,
        pushgateway: str | None,
        linger_s: float = DEFAULT_LINGER_S,
    ) -> None:
        self.registry = CollectorRegistry()
        self.metrics = LatbenchMetrics(self.registry)
        self.linger_s = linger_s
        self.server = None
        if listen is not None:
            self.server = MetricsServer(lambda: render_text(self.metrics), *listen)
        self.pusher = Pusher(pushgateway, self.registry) if pushgateway else None

    def run_started(self, labels: RunLabels) -> None:
        if self.pusher is not None:
            self.pusher.start(labels)

    def run_ended(self) -> str | None:
        """Right after the run: push the final values. Returns why that failed, or None."""
        if self.pusher is None:
            return None
        try:
            self.pusher.finish()
        except MetricsError as e:
            return str(e)
        return None

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
        if self.server is not None:
            self.server.close()
