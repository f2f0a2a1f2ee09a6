"""The exporter's one error, apart so that serving and pushing raise it without importing each
other."""

from __future__ import annotations

from latbench.shared.errors import LatbenchError


class MetricsError(LatbenchError):
    """The metrics endpoint could not be served, or a push to the Pushgateway failed."""
