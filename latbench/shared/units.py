"""Seconds shown as milliseconds, and other numbers shown in tables, in one place.

latbench keeps every duration in seconds and shows people milliseconds: the 100 ms target reads
best in them. Two styles exist on purpose. Fixed digits (`ms`) suit Markdown and log lines,
where columns are compared by eye or pasted on; three or four significant figures with
thousands separators (`ms_short`) suit tables. A missing figure is always an en dash, never 0 or
"nan". `latbench.summary` and the stages above it use these, so they live in `shared`.

A table row switches to seconds as a whole once any of its figures reaches 1,000 ms
(`row_unit`, `short`): seven-character cells such as "2,474.9" (a 2.5 s E2E) made the
terminal's latency table 83 columns wide, and rich cut them to "2,474…" at 80; "2.475" keeps
millisecond resolution in five characters, and the table is 75 wide. Mixing units inside a row
would make its cells incomparable at a glance, so the unit is the row's, printed once beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

MISSING = "–"
Unit = Literal["ms", "s"]
# From here a row reads in seconds (see the module's docstring).
SECONDS_FROM_MS = 1_000.0


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


def row_unit(seconds: Iterable[float | None]) -> Unit:
    """ "s" when any figure of the row reaches 1,000 ms, else "ms"."""
    top = max((abs(x) for x in seconds if x is not None), default=0.0)
    return "s" if top * 1e3 >= SECONDS_FROM_MS else "ms"


def short(seconds: float | None, unit: Unit, *, sign: bool = False) -> str:
    """A figure in `unit`, at most four significant figures before the thousands: ms as
    `ms_short`; seconds with three decimals under 10 s (millisecond resolution), two under
    100 s, one under 1,000 s, none above."""
    if unit == "ms":
        return ms_short(seconds, sign=sign)
    if seconds is None:
        return MISSING
    v = abs(seconds)
    digits = 3 if v < 10 else 2 if v < 100 else 1 if v < 1_000 else 0
    return f"{seconds:+,.{digits}f}" if sign else f"{seconds:,.{digits}f}"


def num(x: float | None, fmt: str = ",.2f") -> str:
    """Any other figure (a rate, a count, a share) in a format spec, or the dash."""
    return MISSING if x is None else format(x, fmt)


def ms_interval(
    t: tuple[float, float, float] | None, fmt: Callable[[float | None], str] = ms
) -> str:
    """An estimate and its interval, `(estimate, low, high)`: "12.30 ms [11.90, 12.80]"."""
    return MISSING if t is None else f"{fmt(t[0])} ms [{fmt(t[1])}, {fmt(t[2])}]"
