"""Seconds shown as milliseconds, and other numbers shown in tables, in one place.

latbench keeps every duration in seconds and shows people milliseconds: the 100 ms target reads
best in them. Two styles exist on purpose. Fixed digits (`ms`) suit Markdown and log lines,
where columns are compared by eye or pasted on; three or four significant figures with
thousands separators (`ms_short`) keep the terminal's latency table inside 80 columns. A missing
figure is always an en dash, never 0 or "nan". `latbench.summary` and the stages above it use
these, so they live in `shared`.
"""

from __future__ import annotations

from collections.abc import Callable

MISSING = "–"


def to_ms(seconds: float | None) -> float | None:
    """As a number, for files read by programs (vLLM's result format)."""
    return None if seconds is None else seconds * 1e3


def ms(seconds: float | None, digits: int = 2, *, unit: bool = False) -> str:
    """Fixed `digits`, no thousands separators; `unit` appends " ms" (not to the dash)."""
    if seconds is None:
        return MISSING
    return f"{seconds * 1e3:.{digits}f}" + (" ms" if unit else "")


def ms_short(seconds: float | None, *, sign: bool = False, whole_from: float = 10_000) -> str:
    """Two decimals under 100 ms, one under `whole_from` ms, none above; thousands separators.
    `sign`: a "+" on positive values too (a difference)."""
    if seconds is None:
        return MISSING
    v = seconds * 1e3
    digits = 2 if abs(v) < 100 else 1 if abs(v) < whole_from else 0
    return f"{v:+,.{digits}f}" if sign else f"{v:,.{digits}f}"


def num(x: float | None, fmt: str = ",.2f") -> str:
    """Any other figure (a rate, a count, a share) in a format spec, or the dash."""
    return MISSING if x is None else format(x, fmt)


def ms_interval(
    t: tuple[float, float, float] | None, fmt: Callable[[float | None], str] = ms
) -> str:
    """An estimate and its interval, `(estimate, low, high)`: "12.30 ms [11.90, 12.80]"."""
    return MISSING if t is None else f"{fmt(t[0])} ms [{fmt(t[1])}, {fmt(t[2])}]"
