"""Reading vLLM's /metrics over HTTP before, during and after a run: the one part of the
server's account that does I/O (what the scrapes mean, and the reconciliation, are the pure
functions in `summary.server_metrics`).

The scraper reads the page once before the first request (a page that is not vLLM's turns it
off), every few seconds during the run for the gauges' course, and once after the last
response. A failed scrape is noted, never raised: the client's measurements stand on their own.
"""

from __future__ import annotations

import asyncio
from time import monotonic_ns
from urllib.parse import urlsplit

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


def default_metrics_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}/metrics"


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
        return parse_metrics(text, self._model)

    async def start(self) -> bool:
        """The first scrape; False (and an error noted) when the page is not vLLM's."""
        try:
            self.result.before = await self.scrape()
        except ServerMetricsError as e:
            self.result.errors.append(f"before the run: {e}")
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
