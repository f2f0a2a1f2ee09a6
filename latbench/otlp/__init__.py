"""OpenTelemetry in, over OTLP/HTTP, beside the exporter (which sends latbench's own metrics out
over OTLP: `latbench.exporter.otlp`, docs/otel.md).

    receiver   a tracing server's per-request spans (vLLM's `llm_request`) received for a run,
               each as a `records.record.ServerSpan` (protobuf or JSON, gzip, capped)

The binding (`opentelemetry-proto`) is the `otel` extra: it is imported on first use, and its
absence is a clear error naming `pip install 'latbench[otel]'`, never an ImportError at start-up.
"""

from latbench.otlp.receiver import SpanReceiver, otel_available

__all__ = ["SpanReceiver", "otel_available"]
