"""The calibration table (bench/_calibrate.py): its "bound >= error" column is `BoundCheck.holds`,
the rule tests/bench/test_truth.py checks, on rows whose answers are known."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench._calibrate import table
from bench._truth import SLACK_MS, BoundCheck


def row(itl_err_p99: float, itl_bound_p99: float | None) -> dict[str, Any]:
    legs = {50.0: 0.01, 99.0: 0.02}
    bound = None if itl_bound_p99 is None else {50.0: 0.0, 99.0: itl_bound_p99}
    check = BoundCheck(
        matched=10,
        ttft_err_ms={50.0: 0.0, 99.0: 0.0},
        itl_err_ms={50.0: 0.0, 99.0: itl_err_p99},
        ttft_bound_ms={50.0: 0.0, 99.0: 0.0},
        itl_bound_ms=bound,
    )
    return {
        "level": "none",
        "streams": 16,
        "loop_lag_p99_ms": 0.5,
        "client_bound": False,
        "check": asdict(check),
        "decomposition": {"send_to_arrival_ms": legs, "write_to_read_ms": legs},
    }


def column(r: dict[str, Any]) -> str:
    """The row's "bound >= error" cell."""
    line = table([r]).splitlines()[-1]
    return line.split("|")[7].strip()


def test_the_bound_column_is_the_checks_own_rule() -> None:
    # Within the transport's slack of the error holds; a hair past it does not; no bound is
    # unknown, never a pass.
    assert column(row(0.5, 0.5 - SLACK_MS / 2)) == "yes"
    assert column(row(0.5, 0.5 - SLACK_MS * 1.5)) == "**no**"
    assert column(row(-0.5, 0.5 - SLACK_MS / 2)) == "yes"  # an understatement counts by its size
    assert column(row(-0.5, 0.5 - SLACK_MS * 1.5)) == "**no**"
    assert column(row(0.5, None)) == "unknown"
