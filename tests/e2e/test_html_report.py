"""The HTML reports in a real browser: headless Chromium (Debian's `chromium`, which .ci/run
installs) opens each report from disk with no network, driven over the DevTools protocol with
aiohttp's WebSocket client. Each page must log no console error, draw every chart at a non-zero
size, and show drawn charts in a screenshot (coloured trace pixels inside every chart's box).
The CDFs' log axes must label each tick with its full value in ms (Plotly's own labels read
"2, 3, 4" for 20, 30, 40 ms), a distribution concentrated at one value must be drawn inside the
plot, not on its frame, and a report must stay small (the basic plotly.js bundle, not the full
one)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape as html_escape
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from kit.cli import latbench
from kit.spans import run_with_spans
from PIL import Image

CHROMIUM = os.environ.get("LATBENCH_CHROMIUM") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (apt-get install chromium; .ci/run does)",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
WIDTH = 1280
# Every chart, once its figure is drawn: box and whether Plotly rendered its SVG.
CHARTS_JS = """(() => {
  const divs = [...document.querySelectorAll('.chart')];
  if (!divs.every(d => d._fullLayout && d.querySelector('svg.main-svg'))) return null;
  return divs.map(d => {
    const r = d.getBoundingClientRect();
    const s = d.querySelector('svg.main-svg').getBoundingClientRect();
    return {name: d.dataset.chart, x: r.left + scrollX, y: r.top + scrollY, w: r.width,
            h: r.height, svg_w: s.width, svg_h: s.height,
            traces: d.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length,
            points: d.querySelectorAll('.scatterlayer .point').length};
  });
})()"""

# Each CDF's x axis as Plotly laid it out: its type, the ticks it drew (log10 position, label),
# the labels in the SVG, the plot area, and the first trace's drawn extent (pixels in the plot).
AXES_JS = """(() => [...document.querySelectorAll('.chart')]
  .filter(d => d.dataset.chart.startsWith('cdf-'))
  .map(d => {
    const ax = d._fullLayout.xaxis, size = d._fullLayout._size;
    const line = d.querySelector('.scatterlayer .trace path.js-line');
    const box = line ? line.getBBox() : null;
    const r = d.getBoundingClientRect();
    return {name: d.dataset.chart, type: ax.type, length: ax._length,
            ticks: (ax._vals || []).map(v => [v.x, v.text]),
            drawn: [...d.querySelectorAll('.xtick text')].map(t => t.textContent),
            plot: {x: r.left + scrollX + size.l, y: r.top + scrollY + size.t, w: size.w,
                   h: size.h},
            line: box && {x0: box.x, x1: box.x + box.width}};
  }))()"""
# The report of a run of a few seconds: the basic plotly.js bundle (1.19 MB) and the figures.
# The full bundle alone is 4.8 MB.
REPORT_BYTES = 1_600_000
TRACE_BLUE = (31, 119, 180)  # charts.COLORS[0], the first run's curve


class Page:
    """One DevTools page session: calls, and the events that arrive meanwhile."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my = self._id
        await self.ws.send_json({"id": my, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == my:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    def errors(self) -> list[dict[str, Any]]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if (
                m == "Runtime.exceptionThrown"
                or (m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"))
                or (m == "Log.entryAdded" and p["entry"]["level"] == "error")
            ):
                out.append(e)
        return out

    def requested(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]


@asynccontextmanager
async def open_browser(profile: Path) -> AsyncIterator[Page]:
    proc = subprocess.Popen(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so every helper process goes at the end
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as s:
            async with s.put(f"http://127.0.0.1:{port}/json/new?about:blank") as r:
                target = await r.json(content_type=None)
            async with s.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Runtime", "Log", "Page", "Network"):
                    await page.call(f"{domain}.enable")
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=WIDTH,
                    height=900,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield page
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def render(page: Page, path: Path) -> tuple[list[dict[str, Any]], Image.Image]:
    page.events.clear()
    await page.call("Page.navigate", url=path.resolve().as_uri())
    deadline = time.monotonic() + 90
    while True:
        res = await page.call("Runtime.evaluate", expression=CHARTS_JS, returnByValue=True)
        charts = res["result"].get("value")
        if charts:
            break
        assert time.monotonic() < deadline, f"charts of {path.name} not drawn in time"
        await asyncio.sleep(0.1)
    height = (
        await page.call(
            "Runtime.evaluate",
            expression="document.documentElement.scrollHeight",
            returnByValue=True,
        )
    )["result"]["value"]
    shot = await page.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
    )
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    return charts, image


def coloured_pixels(image: Image.Image, box: dict[str, Any]) -> int:
    """Pixels inside `box` whose colour is not a grey: traces, markers, bars (Plotly draws axes,
    grid and text in greys)."""
    crop = np.asarray(
        image.crop(
            (int(box["x"]), int(box["y"]), int(box["x"] + box["w"]), int(box["y"] + box["h"]))
        )
    ).astype(np.int16)
    spread = crop.max(axis=2) - crop.min(axis=2)
    return int((spread > 60).sum())


def check_page(
    charts: list[dict[str, Any]], image: Image.Image, page: Page, path: Path, must: set[str]
) -> None:
    assert not page.errors(), json.dumps(page.errors(), indent=1)[:4000]
    # Opening it asked for nothing but the file itself: no network, no other file.
    assert set(page.requested()) <= {path.resolve().as_uri()}, page.requested()
    names = {c["name"] for c in charts}
    assert must <= names, (must - names, names)
    for c in charts:
        assert c["w"] > 100 and c["h"] > 100, c
        assert c["svg_w"] > 100 and c["svg_h"] > 100, c
        assert c["traces"] >= 1, c
        if c["name"].startswith("change-"):
            # One marker per metric, coloured by verdict: all grey when every change is "same",
            # so the markers are counted instead of coloured pixels.
            assert c["points"] >= 1, (c, path.name)
        else:
            assert coloured_pixels(image, c) > 150, (c, path.name)  # drawn, not a blank frame
    assert image.height > 1500


CDFS = {"cdf-ttft", "cdf-ttfo", "cdf-itl", "cdf-tpot", "cdf-e2e"}
LOOSE = (
    "validity: {ttft_tolerance: 2s, itl_tolerance: 2s, "
    "loop_lag_p99: 2s, queue_delay_p99: 2s, client_cpu: 8}\n"
)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A sweep with a passing and a failing step (a simulator with 2 slots serves at most
    2 / (0.02 + 7 * 0.01) = 22 requests/s) and injected HTTP errors; its report, the report of
    one of its runs, and the comparison of its two runs."""
    tmp = tmp_path_factory.mktemp("html")
    spec = tmp / "loose.yaml"
    spec.write_text(LOOSE)
    p = latbench(
        "sweep", "--rate", "5,40", "--mode", "constant", "--spec", str(spec), "--out", str(tmp),
        "--duration", "1.5s", "--warmup", "0.3s", "--output-tokens", "8", "--max-error-rate", "30%",
        "--sim", "max_batch=2", "--sim", "ttft=0.02", "--sim", "itl=0.01",
        "--sim", "faults=[{kind: http_status, every: 7, status: 503}]",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    (sweep_dir,) = tmp.glob("sweep-*")
    step_dirs = sorted(d for d in sweep_dir.iterdir() if d.is_dir())
    assert len(step_dirs) == 2
    run = latbench("report", str(step_dirs[0]), "--html", str(tmp / "run.html"))
    assert run.returncode == 0, run.stderr
    cmp = latbench("compare", *map(str, step_dirs), "--html", str(tmp / "cmp.html"))
    assert cmp.returncode == 0, cmp.stderr
    return {
        "sweep": sweep_dir / "report.html",
        "sweep_md": sweep_dir / "report.md",
        "run": tmp / "run.html",
        "compare": tmp / "cmp.html",
    }


def blue_pixels(image: Image.Image, box: dict[str, Any]) -> int:
    """Pixels inside `box` of the first run's curve colour."""
    crop = np.asarray(
        image.crop(
            (int(box["x"]), int(box["y"]), int(box["x"] + box["w"]), int(box["y"] + box["h"]))
        )
    ).astype(np.int16)
    return int((np.abs(crop - np.array(TRACE_BLUE)).max(axis=2) < 40).sum())


async def test_cdf_axes_are_labelled_in_ms_and_a_narrow_distribution_is_drawn_inside(
    reports: dict[str, Path], tmp_path: Path
) -> None:
    async with open_browser(tmp_path / "profile") as page:
        _, image = await render(page, reports["run"])
        axes = (await page.call("Runtime.evaluate", expression=AXES_JS, returnByValue=True))[
            "result"
        ]["value"]
    assert {a["name"] for a in axes} == CDFS
    for a in axes:
        assert a["type"] == "log", a
        assert len(a["ticks"]) >= 3, a
        for x, text in a["ticks"]:
            # The label is the tick's value in ms, whole: 10**x, not its first digit.
            value = float(text.replace(",", ""))
            assert value == pytest.approx(10**x, rel=1e-6), (a["name"], x, text)
        assert a["drawn"] == [t for _, t in a["ticks"]], a
    # TPOT at the simulator's fixed 10 ms ITL: every sample within a few per cent of 10 ms, so
    # the curve is a vertical line. It must stand inside the plot (Plotly's own range put it on
    # the left frame, where it could not be seen), and be there in the screenshot.
    tpot = next(a for a in axes if a["name"] == "cdf-tpot")
    assert tpot["line"] is not None
    margin = 0.05 * tpot["length"]
    assert margin < tpot["line"]["x0"] and tpot["line"]["x1"] < tpot["length"] - margin, tpot
    assert any(t in ("9", "10") for _, t in tpot["ticks"]), tpot["ticks"]
    assert blue_pixels(image, tpot["plot"]) > 150, tpot


async def test_reports_draw_every_chart_in_headless_chromium(
    reports: dict[str, Path], tmp_path: Path
) -> None:
    expected = {
        "sweep": CDFS | {"sweep-curve", "errors"},
        "run": CDFS | {"over-time", "errors"},
        "compare": CDFS | {"throughput-over-time", "errors"},
    }
    async with open_browser(tmp_path / "profile") as page:
        for kind, must in expected.items():
            charts, image = await render(page, reports[kind])
            image.save(tmp_path / f"{kind}.png")  # kept with the test's files, for a look
            check_page(charts, image, page, reports[kind], must)
    # The sweep report says what the sweep found: 5/s passed, 40/s failed.
    html = reports["sweep"].read_text()
    assert "capacity: 5/s; fails at 40/s" in html
    assert "capacity: 5/s; fails at 40/s" in reports["sweep_md"].read_text()


def test_a_report_is_one_file_that_needs_no_network(reports: dict[str, Path]) -> None:
    text = reports["run"].read_text()
    # Plotly's JavaScript is inlined; nothing is loaded from elsewhere.
    assert "<script src" not in text and "<link" not in text
    assert "Plotly.newPlot" in text
    # The basic bundle, so the report stays small.
    assert "plotly.js (basic - minified)" in text
    for kind in ("run", "sweep", "compare"):
        assert reports[kind].stat().st_size < REPORT_BYTES, (kind, reports[kind].stat().st_size)


def test_a_run_report_sets_the_client_beside_the_servers_own_metrics(
    reports: dict[str, Path],
) -> None:
    """The sweep's simulator serves vLLM's metrics, so each step scraped them; the run report
    shows the reconciliation (docs/vllm.md)."""
    text = reports["run"].read_text()
    assert '<h2 id="server">Client vs server</h2>' in text
    assert "the client completed" in text and "server p99 in" in text
    assert "TTFT, mean" in text and "outside the server" in text


async def test_a_run_with_server_spans_draws_the_per_request_charts(tmp_path: Path) -> None:
    # `latbench run --otlp-receiver` against a tracing simulator (kit/spans.py): its report
    # gains the scatter of client vs server TTFT and the strip of TTFT's parts, one marker per
    # request and part, and says how far the client's own stamping may move the outside part.
    n = 20
    run_dir = run_with_spans(
        tmp_path / "run", "--requests", str(n), "--concurrency", "4", "--output-tokens", "6",
        max_batch=2, ttft=0.01, itl=0.002,
    )  # fmt: skip
    html = tmp_path / "spans.html"
    p = latbench("report", str(run_dir), "--html", str(html))
    assert p.returncode == 0, p.stderr
    async with open_browser(tmp_path / "profile") as page:
        charts, image = await render(page, html)
        image.save(tmp_path / "spans.png")
        check_page(charts, image, page, html, CDFS | {"span-scatter", "span-parts"})
    by_name = {c["name"]: c for c in charts}
    assert by_name["span-scatter"]["points"] == n
    assert by_name["span-parts"]["points"] == 4 * n
    text = html.read_text()
    assert "Client vs server, per request" in text
    assert "front end (server)" in text and "intake" not in text
    assert html_escape("outside the server holds the client's own stamping error") in text
