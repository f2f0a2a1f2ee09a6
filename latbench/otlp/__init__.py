"""OpenTelemetry in and out, over OTLP/HTTP, beside the Prometheus exporter.

    receiver   a tracing server's per-request spans (vLLM's `llm_request`) received for a run,
               each as a `records.record.ServerSpan` (protobuf or JSON, gzip, capped)
    metrics    latbench's own metrics sent out over OTLP/HTTP with the GenAI semantic
               conventions' names and latbench's exact buckets (docs/otel.md)

The binding (`opentelemetry-proto`) is the `otel` extra: it is imported on first use, and its
absence is a clear error naming `pip install 'latbench[otel]'`, never an ImportError at start-up.
"""

from latbench.otlp.receiver import SpanReceiver, otel_available

__all__ = ["SpanReceiver", "otel_available"]
