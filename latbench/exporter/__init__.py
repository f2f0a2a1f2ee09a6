"""Metrics export: latbench's series, their `/metrics` text, serving it, pushing it, sending it
over OTLP.

One module per concern, as prometheus/client_python keeps state apart from exposition:
`series` (names, labels, buckets, `LatbenchMetrics` as a Collector), `exposition` (the text
writer), `server` (`/metrics` from a thread), `push` (the Pushgateway), `otlp` (the same state as
an OTLP/HTTP metrics request, sent from a thread; needs the `otel` extra, so it is not imported
here), `otlp_config` (its settings), `export` (one CLI run's export from start to linger).
Records become observations in `latbench.sinks.prometheus`, which is the only writer of the state.
"""

from latbench.exporter.errors import MetricsError
from latbench.exporter.export import DEFAULT_LINGER_S, MetricsExport, parse_listen
from latbench.exporter.exposition import render_text
from latbench.exporter.otlp_config import OtlpConfig, OtlpError, otlp_config
from latbench.exporter.push import Pusher
from latbench.exporter.series import (
    HISTOGRAMS,
    LABELS,
    LOCAL,
    PREFIX,
    LatbenchMetrics,
    RunLabels,
    location_label,
    target_label,
)
from latbench.exporter.server import MetricsServer

__all__ = [
    "DEFAULT_LINGER_S",
    "HISTOGRAMS",
    "LABELS",
    "LOCAL",
    "PREFIX",
    "LatbenchMetrics",
    "MetricsError",
    "MetricsExport",
    "MetricsServer",
    "OtlpConfig",
    "OtlpError",
    "Pusher",
    "RunLabels",
    "location_label",
    "otlp_config",
    "parse_listen",
    "render_text",
    "target_label",
]
