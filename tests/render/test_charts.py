"""The report's log axes and its plotly.js bundle, without a browser (tests/e2e/test_html_report.py
opens the reports in Chromium)."""

from __future__ import annotations

import math
import re

import pytest
from plotly.offline import get_plotlyjs_version

from latbench.render.charts import log_axis
from latbench.render.page import plotly_js


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
