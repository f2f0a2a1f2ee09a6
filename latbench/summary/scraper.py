"""Reading the server's /metrics over HTTP before, during and after a run: the one part of the
server's account that does I/O (what the scrapes mean, and the reconciliation, are the pure
functions in `summary.server_metrics`).

The scraper reads the page once before the first request, which says whose metrics they are
(vLLM's, SGLang's, ...: a page of no known server turns it off), every few seconds during the
run for the gauges' course, and once after the last response, each later page read as the
first one's server. A failed scrape is noted, never raised: the client's measurements stand on
their own.

TensorRT-LLM's trtllm-serve keeps its Prometheus page at /prometheus/metrics (its /metrics is
JSON iteration statistics), so a /metrics that is no known server's page is retried there.
"""

from __future__ import annotations

import asyncio
from time import monotonic_ns
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from latbench.summary.server_metrics import (
    ServerMetrics,
    ServerMetricsError,
    Snapshot,
    parse_metrics,
)

SCRAPE_EVERY_S = 2.0
# After the last response, vLLM may record the last request's stats a moment later.
SETTLE_S = 3.0


# Where trtllm-serve serves Prometheus text (tensorrt_llm/serve/openai_server.py).
TRTLLM_METRICS_PATH = "/prometheus/metrics"


def default_metrics_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}/metrics"


def _fallback(url: str) -> str | None:
    """TensorRT-LLM's page beside a /metrics that was not a known server's, or None."""
    parts = urlsplit(url)
    if parts.path.rstrip("/") != "/metrics":
        return None
    return urlunsplit(parts._replace(path=TRTLLM_METRICS_PATH))


class ServerMetricsScraper:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        model: str | None,
        every_s: float = SCRAPE_EVERY_S,
    ) -> None:
        self._session = session
        self._model = model
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self.result = ServerMetrics(url)

    async def scrape(self) -> Snapshot:
        try:
            async with self._session.get(
                self.result.url, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                if resp.status != 200:
                    raise ServerMetricsError(f"HTTP {resp.status}")
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise ServerMetricsError(f"{type(e).__name__}: {e}") from None
        before = self.result.before
        return parse_metrics(text, self._model, dialect=None if before is None else before.dialect)

    async def start(self) -> bool:
        """The first scrape; False (and an error noted) when the page is no known server's."""
        try:
            self.result.before = await self.scrape()
        except ServerMetricsError as e:
            fallback = _fallback(self.result.url)
            if fallback is None:
                self.result.errors.append(f"before the run: {e}")
                return False
            first, self.result.url = self.result.url, fallback
            try:
                self.result.before = await self.scrape()
            except ServerMetricsError as again:
                self.result.url = first
                self.result.errors.append(f"before the run: {e} (and {fallback}: {again})")
                return False
        self._note(self.result.before)
        self._task = asyncio.create_task(self._during())
        return True

    async def stop(self, client_completed: int) -> ServerMetrics:
        """The last scrape, once the server counts at least `client_completed` more successes
        than before (or after SETTLE_S)."""
        await self.cancel()
        before = self.result.before
        if before is None:
            return self.result
        deadline = monotonic_ns() + int(SETTLE_S * 1e9)
        while True:
            try:
                snap = await self.scrape()
            except ServerMetricsError as e:
                self.result.errors.append(f"after the run: {e}")
                return self.result
            done = snap.counters.get("requests", 0) - before.counters.get("requests", 0)
            if done >= client_completed or monotonic_ns() >= deadline:
                break
            await asyncio.sleep(0.1)
        self.result.after = snap
        self._note(snap)
        return self.result

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _during(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                self._note(await self.scrape())
            except ServerMetricsError as e:
                self.result.errors.append(f"during the run: {e}")

    def _note(self, snap: Snapshot) -> None:
        totals = {f"{k}_total": v for k, v in snap.counters.items()}
        self.result.timeline.append({"t_ns": snap.t_ns, **snap.gauges, **totals})
