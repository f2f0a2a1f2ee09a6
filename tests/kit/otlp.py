"""An OTLP/HTTP metrics collector for tests: a real aiohttp server on 127.0.0.1, on a thread of
its own (so a `latbench run` child process and an in-process run can both export to it), that
keeps every POST /v1/metrics body decoded with opentelemetry-proto's ExportMetricsServiceRequest,
as a collector would read it. Histograms come back with their explicit bounds and per-bucket
counts as sent, so a test compares them with latbench's own buckets directly.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Attrs = frozenset[tuple[str, Any]]


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def attrs_of(kvs: Any) -> Attrs:
    return frozenset((kv.key, value_of(kv.value)) for kv in kvs)


@dataclass(frozen=True)
class Hist:
    """One histogram data point as exported."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative: len(bounds) + 1
    count: int
    sum: float
    temporality: int
    unit: str


@dataclass(frozen=True)
class Sum:
    value: float
    temporality: int
    monotonic: bool
    unit: str


@dataclass(frozen=True)
class Gauge:
    value: float
    time_unix_nano: int
    unit: str


class OtlpCollector:
    """`with OtlpCollector() as c:` serves http://127.0.0.1:PORT/v1/metrics; `status` other than
    200 makes it refuse every export (a collector that rejects a bad token, say), and may be
    changed while it runs (one that is down for a while). `reject` answers every export with a
    partial success rejecting that many data points; `delay_s` holds each answer that long (a
    slow collector)."""

    def __init__(self, status: int = 200, reject: int = 0, delay_s: float = 0.0) -> None:
        self.status = status
        self.reject = reject
        self.delay_s = delay_s
        self.refused = 0
        self.requests: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"not protobuf: {request.content_type}")
        msg = ExportMetricsServiceRequest()
        msg.ParseFromString(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the slow collector under test, not a poll
        status = self.status
        with self._lock:
            self.headers.append(dict(request.headers))
            if status == 200:
                self.requests.append(msg)
            else:
                self.refused += 1
        if status != 200:
            return web.Response(status=status, text="refused by the test collector")
        answer = ExportMetricsServiceResponse()
        if self.reject:
            answer.partial_success.rejected_data_points = self.reject
            answer.partial_success.error_message = "the test collector drops these"
        return web.Response(body=answer.SerializeToString(), content_type="application/x-protobuf")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/metrics", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]

    def __enter__(self) -> OtlpCollector:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def received(self) -> list[ExportMetricsServiceRequest]:
        with self._lock:
            return list(self.requests)

    def wait(self, ready: Callable[[OtlpCollector], bool], timeout: float = 30.0) -> None:
        """Poll until `ready(self)`, failing after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not ready(self):
            assert time.monotonic() < deadline, "the collector did not get what was expected"
            time.sleep(0.05)

    # -- reading what was sent ----------------------------------------------------------------

    def metrics(self) -> Iterator[tuple[Attrs, Attrs, Any]]:
        """(resource attributes, scope attributes as (name, version, schema)), metric) for every
        metric of every export, oldest first."""
        for req in self.received():
            for rm in req.resource_metrics:
                res = attrs_of(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    scope = frozenset(
                        {
                            ("name", sm.scope.name),
                            ("version", sm.scope.version),
                            ("schema_url", sm.schema_url),
                        }
                    )
                    for m in sm.metrics:
                        yield res, scope, m

    def histograms(self, name: str) -> dict[Attrs, Hist]:
        """The latest data point of each attribute set of histogram `name`."""
        out: dict[Attrs, Hist] = {}
        for _, _, m in self.metrics():
            if m.name != name:
                continue
            assert m.WhichOneof("data") == "histogram", (name, m.WhichOneof("data"))
            for p in m.histogram.data_points:
                out[attrs_of(p.attributes)] = Hist(
                    tuple(p.explicit_bounds),
                    tuple(p.bucket_counts),
                    p.count,
                    p.sum,
                    m.histogram.aggregation_temporality,
                    m.unit,
                )
        return out

    def sums(self, name: str) -> dict[Attrs, Sum]:
        """The latest data point of each attribute set of counter `name`."""
        out: dict[Attrs, Sum] = {}
        for _, _, m in self.metrics():
            if m.name != name:
                continue
            assert m.WhichOneof("data") == "sum", (name, m.WhichOneof("data"))
            for p in m.sum.data_points:
                v = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                out[attrs_of(p.attributes)] = Sum(
                    v, m.sum.aggregation_temporality, m.sum.is_monotonic, m.unit
                )
        return out

    def gauges(self, name: str) -> dict[Attrs, Gauge]:
        """The latest data point of each attribute set of gauge `name`."""
        out: dict[Attrs, Gauge] = {}
        for _, _, m in self.history(name):
            assert m.WhichOneof("data") == "gauge", (name, m.WhichOneof("data"))
            for p in m.gauge.data_points:
                v = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                out[attrs_of(p.attributes)] = Gauge(v, p.time_unix_nano, m.unit)
        return out

    def history(self, name: str) -> Iterator[tuple[Attrs, Attrs, Any]]:
        """Metric `name` in every export, oldest first, as `metrics` gives it."""
        return ((r, s, m) for r, s, m in self.metrics() if m.name == name)

    def names(self) -> set[str]:
        return {m.name for _, _, m in self.metrics()}


__all__ = ["Gauge", "Hist", "OtlpCollector", "Sum", "attrs_of"]
