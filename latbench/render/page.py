"""The HTML page shell: one self-contained file, Plotly's JavaScript inlined once, no network
needed to open it. The reports (`html.py`) fill it with sections (`sections.py`); this module knows
nothing of runs, only of headings, tables and charts, and how a figure's JSON is kept from ending
its script early.

The JavaScript inlined is plotly.js's "basic" bundle (js/plotly-basic.min.js: npm's
plotly.js-basic-dist-min of the plotly.js version the plotly Python package bundles, MIT, its
licence beside it), not the full bundle that `plotly.offline.get_plotlyjs()` returns: the charts
use scatter and bar traces only (with shapes, annotations and subplots, which every bundle has),
and the basic bundle holds scatter, bar and pie in 1.19 MB against 4.82 MB, so a 15 s run's report
went from 4.9 MB to about 1.3 MB. A custom bundle without pie would save a few per cent more and
need plotly.js's build tooling to remake; a CDN would break opening the report offline.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import orjson
import plotly.graph_objects as go

from latbench import __version__

BUNDLE = "plotly-basic.min.js"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
.meta{color:#555}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));
gap:12px}
.chart{background:#fff;border:1px solid #e3e3e3;border-radius:6px;min-height:300px}
table{border-collapse:collapse;background:#fff;margin:6px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e3e3e3;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.pass,.same{color:#1a7f37}.fail,.worse{color:#c62828;font-weight:600}.better{color:#1a7f37;
font-weight:600}.warn{color:#b26a00;font-weight:600}
.badge{display:inline-block;border-radius:4px;padding:2px 8px;margin:2px 6px 2px 0;color:#fff;
font-weight:600}.b-pass{background:#2e7d32}.b-fail{background:#c62828}.b-warn{background:#ef6c00}
.b-info{background:#546e7a}
.banner{background:#c62828;color:#fff;padding:8px 12px;border-radius:6px;margin:8px 0}
pre{background:#fff;border:1px solid #e3e3e3;padding:8px;overflow:auto;max-height:420px}
nav a{margin-right:12px}
"""


class Page:
    """Accumulates sections and charts; `render()` gives the HTML text."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.charts: list[tuple[str, dict[str, Any]]] = []
        self.nav: list[tuple[str, str]] = []

    def section(self, anchor: str, title: str) -> None:
        self.nav.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{esc(title)}</h2>')

    def add(self, raw_html: str) -> None:
        self.parts.append(raw_html)

    def chart(self, fig: go.Figure, name: str) -> str:
        """A chart's placeholder div; the figure is drawn by the script at the end of the page."""
        cid = f"chart-{len(self.charts) + 1}"
        self.charts.append((cid, fig.to_plotly_json()))
        height = fig.layout.height or 360
        return (
            f'<div class="chart" id="{cid}" data-chart="{esc(name)}" '
            f'style="height:{int(height)}px"></div>'
        )

    def render(self) -> str:
        figures = {cid: {"data": fig["data"], "layout": fig["layout"]} for cid, fig in self.charts}
        # `</` never appears inside the script's JSON, so a label cannot end the script early.
        payload = orjson.dumps(figures, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        payload = payload.replace("</", "<\\/")
        nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in self.nav)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style>"
            f"<script>{plotly_js()}</script></head><body><main>"
            f"<h1>{esc(self.title)}</h1>"
            f'<p class="meta">latbench {__version__}, report written '
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p><nav>{nav}</nav>"
            + "\n".join(self.parts)
            + "</main><script>\n"
            f"const FIGURES = {payload};\n"
            f"const CONFIG = {json.dumps(PLOT_CONFIG)};\n"
            "for (const [id, fig] of Object.entries(FIGURES)) {\n"
            "  Plotly.newPlot(id, fig.data, fig.layout, CONFIG);\n"
            "}\n</script></body></html>\n"
        )


@cache
def plotly_js() -> str:
    """The bundle's text, read once per process."""
    return files("latbench.render").joinpath("js", BUNDLE).read_text(encoding="utf-8")


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """`raw`: cells are already HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else esc(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
