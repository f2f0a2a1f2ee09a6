"""Reading the server's /metrics over HTTP before, during and after a run: the one part of the
server's account that does I/O (what the scrapes mean, and the reconciliation, are the pure
functions in `summary.server_metrics`).

The scraper reads the page once before the first request, every few seconds during the run for
the gauges' course, and once after the last response. The first page that is a known server's
says whose metrics they are (vLLM's, SGLang's, ...), and every page is read as that server's.
It need not be the first page: vLLM creates its series when it starts, but SGLang, TGI,
TensorRT-LLM and Dynamo create each at its first observation, so a fresh server's page before
the run can hold none of them. Such a page (Prometheus text, no known server's series for the
model) is kept and read once a later page has said whose it is; its missing series are the
zero the server starts them from. A page that is never recognised is said after the run. A
failed scrape is noted, never raised: the client's measurements stand on their own.

TensorRT-LLM's trtllm-serve keeps its Prometheus page at /prometheus/metrics (its /metrics is
JSON iteration statistics), so a /metrics that is no known server's page is retried there.
"""

from __future__ import annotations

import asyncio
from time import monotonic_ns
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from latbench.summary.server_metrics import (
    NotRecognisedYet,
    ServerMetrics,
    ServerMetricsError,
    Snapshot,
    parse_metrics,
)

SCRAPE_EVERY_S = 2.0
# After the last response, vLLM may record the last request's stats a moment later.
SETTLE_S = 3.0
# How long, after the run, a page that no page has yet recognised is read again: a server that
# creates its series at their first observation has them by its last response, so this is only
# for one that records a moment later; an unknown server's page costs the run no more.
UNRECOGNISED_SETTLE_S = 1.0


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
        # The page before the run (its instant and text) while no page has said whose it is.
        self._unread: tuple[int, str] | None = None
        self.result = ServerMetrics(url)

    async def _fetch(self) -> tuple[int, str]:
        try:
            async with self._session.get(
                self.result.url, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                if resp.status != 200:
                    raise ServerMetricsError(f"HTTP {resp.status}")
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise ServerMetricsError(f"{type(e).__name__}: {e}") from None
        return monotonic_ns(), text

    async def scrape(self) -> Snapshot:
        """The page now, read as the server's that the first recognised page named;
        NotRecognisedYet while no page has."""
        t_ns, text = await self._fetch()
        before = self.result.before
        if before is not None:
            return parse_metrics(text, self._model, t_ns, before.dialect)
        snap = parse_metrics(text, self._model, t_ns)
        if self._unread is not None:
            # The first page was this server's before its series existed: read it as such.
            first_ns, first = self._unread
            self.result.before = parse_metrics(first, self._model, first_ns, snap.dialect)
            self._unread = None
            self._note(self.result.before)
        return snap

    async def start(self) -> bool:
        """The first scrape; False (and an error noted) when the page cannot be read or is not
        Prometheus text. A page of Prometheus text that is no known server's yet is kept, and
        the scrapes go on until one says whose it is."""
        try:
            await self._first()
        except ServerMetricsError as e:
            fallback = _fallback(self.result.url)
            if fallback is not None:
                first, unread = self.result.url, self._unread
                self.result.url = fallback
                try:
                    await self._first()
                except NotRecognisedYet:
                    if unread is not None:  # both unknown yet: the page asked for goes on
                        self.result.url, self._unread = first, unread
                except ServerMetricsError as again:
                    self.result.url, self._unread = first, unread
                    if unread is None:
                        self.result.errors.append(f"before the run: {e} (and {fallback}: {again})")
                        return False
            elif not isinstance(e, NotRecognisedYet):
                self.result.errors.append(f"before the run: {e}")
                return False
        self._task = asyncio.create_task(self._during())
        return True

    async def _first(self) -> None:
        t_ns, text = await self._fetch()
        try:
            self.result.before = parse_metrics(text, self._model, t_ns)
        except NotRecognisedYet:
            self._unread = (t_ns, text)
            raise
        self._unread = None
        self._note(self.result.before)

    async def stop(self, client_completed: int) -> ServerMetrics:
        """The last scrape, once the server counts at least `client_completed` more successes
        than before (or after SETTLE_S)."""
        await self.cancel()
        if self.result.before is None and self._unread is None:
            return self.result
        now = monotonic_ns()
        deadline = now + int(SETTLE_S * 1e9)
        unknown_deadline = now + int(UNRECOGNISED_SETTLE_S * 1e9)
        while True:
            try:
                snap = await self.scrape()
            except NotRecognisedYet as e:
                if monotonic_ns() >= unknown_deadline:
                    self.result.errors.append(f"before, during and after the run: {e}")
                    return self.result
                await asyncio.sleep(0.1)
                continue
            except ServerMetricsError as e:
                self.result.errors.append(f"after the run: {e}")
                return self.result
            before = self.result.before
            assert before is not None  # scrape() read it once a page was recognised
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
            except NotRecognisedYet:
                pass  # the server has not yet created its series; a later page will say
            except ServerMetricsError as e:
                self.result.errors.append(f"during the run: {e}")

    def _note(self, snap: Snapshot) -> None:
        totals = {f"{k}_total": v for k, v in snap.counters.items()}
        row = {"t_ns": snap.t_ns, **snap.gauges, **totals}
        # The page before the run is read once a later one is recognised: keep time order.
        at = len(self.result.timeline)
        while at and self.result.timeline[at - 1]["t_ns"] > snap.t_ns:
            at -= 1
        self.result.timeline.insert(at, row)
