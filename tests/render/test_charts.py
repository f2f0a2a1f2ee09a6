"""The report's log axes and its plotly.js bundle, without a browser (tests/e2e/test_html_report.py
opens the reports in Chromium)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from plotly.offline import get_plotlyjs_version

from latbench.records import Record
from latbench.records.record import RecordsFile
from latbench.render.charts import cdf_figure, log_axis
from latbench.render.page import plotly_js
from latbench.render.readback import Run
from latbench.spec import load_spec
from latbench.summary import summarize

MS = 1_000_000


@pytest.mark.parametrize(
    ("lo", "hi", "labels"),
    [
        (20.0, 40.0, ["20", "30", "40"]),  # Plotly's own labels here read "2, 3, 4"
        (10.0, 100.0, ["10", "20", "50", "100"]),
        (0.05, 0.3, ["0.05", "0.06", "0.07", "0.08", "0.09", "0.1", "0.2", "0.3"]),
        (
            300.0,
            120_000.0,
            ["500", "1,000", "2,000", "5,000", "10,000", "20,000", "50,000", "100,000"],
        ),
    ],
)
def test_log_ticks_are_labelled_with_their_value_in_ms(
    lo: float, hi: float, labels: list[str]
) -> None:
    axis = log_axis(lo, hi)
    assert [t for t in axis["ticktext"] if lo <= float(t.replace(",", "")) <= hi] == labels
    for value, text in zip(axis["tickvals"], axis["ticktext"], strict=True):
        assert float(text.replace(",", "")) == pytest.approx(value)


def test_a_distribution_at_one_value_sits_inside_the_axis() -> None:
    # TPOT at exactly 10 ms: the range opens to a factor of 3 around it, so the curve is not on
    # the frame, and the axis still has ticks to read it by.
    lo, hi = log_axis(10.0, 10.0)["range"]
    assert hi - lo == pytest.approx(math.log10(3))
    assert lo < 1.0 < hi and 1.0 - lo == pytest.approx(hi - 1.0)
    assert "10" in log_axis(10.0, 10.0)["ticktext"]
    # A curve's ends are never on the frame either: 15 % each side.
    lo, hi = log_axis(10.0, 1_000.0)["range"]
    assert lo == pytest.approx(1.0 - math.log10(1.15)) and hi == pytest.approx(3 + math.log10(1.15))


def test_the_inlined_bundle_is_plotly_js_basic_of_the_version_plotly_py_builds_for() -> None:
    js = plotly_js()
    head = re.search(r"plotly\.js \(basic - minified\) v(\d+)\.(\d+)\.(\d+)", js[:500])
    assert head is not None, js[:200]
    # Figures are built by the plotly Python package for its own plotly.js: a different major
    # version may not read them.
    assert head.group(1) == get_plotlyjs_version().split(".")[0]
    assert len(js) < 1_300_000  # the full bundle is 4.8 MB


def test_a_cdf_with_zero_gaps_starts_its_axis_at_its_smallest_positive_point() -> None:
    # Two events of one read share their instant: an ITL of exactly 0, which a log axis cannot
    # show. The axis starts at the curve's smallest positive point, not at a stand-in for 0
    # decades below every sample.
    records = [
        Record(
            run_id="t", seq=i, phase="measure", api="chat", t_intended=0, t_sent=0,
            t_end=40 * MS, ev_t=(20 * MS, 20 * MS, 25 * MS, 35 * MS), ev_kind="cccc",
        )
        for i in range(4)
    ]  # fmt: skip
    file = RecordsFile(None, records, None)
    run = Run("t", Path("records.jsonl"), file, load_spec({}), summarize(records))
    fig = cdf_figure([("t", run)], "itl")
    curve = np.asarray(fig.data[0].x)
    assert curve[0] == 0  # drawn from 0, as the samples are
    lo, hi = fig.layout.xaxis.range
    assert 10**lo == pytest.approx(curve[curve > 0].min() / 1.15)
    assert 10**hi == pytest.approx(100 * 1.15)  # the 100 ms target
