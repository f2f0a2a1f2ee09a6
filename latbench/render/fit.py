"""Tables that fit the terminal without cutting a cell.

rich shrinks a table wider than the console by cutting cells to "…": at 80 columns the run
summary showed E2E as "1,322…" and `runs list` every column as "compl…", "clien…", "2026-…", which
hides exactly what the tables exist to show. `fitted` instead measures the table as it would be
drawn and, when it is too wide, moves the columns that do not fit into a second table (and a
third, ...), each repeating the key columns (the metric, the run id) so every row can still be
read on its own. Measured widths with rich's own measurement: at 80 columns the default latency
table (metric, unit, n, mean, five percentiles, max) fits in one table; at 60 it takes two.

A cell is never cut even when one key column and one value column are already wider than the
console (a very long run name at 40 columns): such a column wraps at spaces and folds inside a
word, so every character is still printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

Justify = Literal["left", "right"]
Cell = str | Text


@dataclass(frozen=True)
class Column:
    header: str
    justify: Justify = "right"


def _table(
    title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[Cell]], first: bool
) -> Table:
    table = Table(
        title=title if first else None,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        collapse_padding=True,
    )
    for c in columns:
        # Not no_wrap: rich ends a no_wrap cell that does not fit with "…" (or crops it
        # silently with overflow="fold"); a wrapping cell with "fold" loses nothing.
        table.add_column(c.header, justify=c.justify, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _width(console: Console, table: Table) -> int:
    # Measured unbounded: rich caps a measurement at the console's width, which would say that
    # every table fits.
    unbounded = console.options.update(max_width=1_000_000)
    return Measurement.get(console, unbounded, table).maximum


def fitted(
    console: Console,
    title: str | None,
    keys: Sequence[Column],
    values: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
) -> list[Table]:
    """The table of `keys` + `values` (each row: its key cells, then its value cells), split by
    value columns into as many tables as it takes for each to fit `console`'s width."""
    nk = len(keys)
    groups: list[list[int]] = []
    for i in range(len(values)):
        if groups:
            trial = [*groups[-1], i]
            cols = [*keys, *(values[j] for j in trial)]
            sub = [[*r[:nk], *(r[nk + j] for j in trial)] for r in rows]
            if _width(console, _table(title, cols, sub, len(groups) == 1)) <= console.width:
                groups[-1] = trial
                continue
        groups.append([i])
    if not groups:
        groups = [[]]
    return [
        _table(
            title,
            [*keys, *(values[j] for j in g)],
            [[*r[:nk], *(r[nk + j] for j in g)] for r in rows],
            first=n == 0,
        )
        for n, g in enumerate(groups)
    ]


def print_fitted(
    console: Console,
    title: str | None,
    keys: Sequence[Column],
    values: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
) -> None:
    for table in fitted(console, title, keys, values, rows):
        console.print(table)
