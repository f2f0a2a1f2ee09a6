"""Pushing to a Pushgateway, for runs that Prometheus does not scrape directly (docs/prometheus.md).

Each run's labels are its group, so a PUT replaces that run's series and no other label set's.
Pushes go from a thread of their own, never the event loop: at the start, every few seconds while
the run goes (so rate() over the gateway's series sees it grow) and once at the end. A failed
push during the run is kept for a warning; a failed final push raises, for the caller to report.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, push_to_gateway

from latbench.exporter.errors import MetricsError
from latbench.exporter.series import RunLabels

JOB = "latbench"
PUSH_INTERVAL_S = 5.0  # also during the run, so rate() over the gateway's series sees it grow
PUSH_TIMEOUT_S = 10.0


def grouping_key(labels: RunLabels) -> dict[str, str]:
    """Pushgateway group of a run: job="latbench" (in the URL) plus the run's own labels, so
    each (target, model, api, scenario, location) keeps its latest run and runs of others are
    untouched."""
    return labels.as_dict()


class Pusher:
    """Pushes the registry to a Pushgateway (HTTP PUT: the group's metrics are replaced) when a
    run starts, every `interval` seconds while it runs, and once more at the end."""

    def __init__(
        self,
        url: str,
        registry: CollectorRegistry,
        interval: float = PUSH_INTERVAL_S,
        timeout: float = PUSH_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._registry = registry
        self._interval = interval
        self._timeout = timeout
        self._key: dict[str, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []  # failures of the pushes made during the run
        self.pushes = 0

    def push(self) -> None:
        if self._key is None:
            raise MetricsError("nothing to push: no run has started")
        try:
            push_to_gateway(
                self.url, job=JOB, registry=self._registry, grouping_key=self._key,
                timeout=self._timeout,
            )  # fmt: skip
        except Exception as e:  # urllib raises URLError, HTTPError, OSError, ValueError
            raise MetricsError(f"push to {self.url} failed: {e}") from e
        self.pushes += 1

    def start(self, labels: RunLabels) -> None:
        """Begin pushing for a run with these labels (from a thread: never on the event loop)."""
        self._key = grouping_key(labels)
        self._thread = threading.Thread(target=self._run, name="latbench-push", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.push()
            except MetricsError as e:
                self.errors.append(str(e))
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        """Stop the periodic pushes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 1)

    def finish(self) -> None:
        """Stop the periodic pushes and push the final values; raises MetricsError on failure."""
        self.stop()
        if self._key is not None:
            self.push()
