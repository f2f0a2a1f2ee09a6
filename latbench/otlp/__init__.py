"""OpenTelemetry over OTLP/HTTP: latbench's metrics sent out (`metrics`), beside the Prometheus
`exporter`. The OpenTelemetry packages are the optional `otel` extra, so nothing here is imported
until a run asks for it."""
