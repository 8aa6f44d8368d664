"""Plain-text output of the `abe` command: aligned tables and readable numbers."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["format_count", "format_ms", "format_rate", "note", "table"]


def table(
    rows: Sequence[Sequence[str]],
    *,
    header: Sequence[str] | None = None,
    right: Sequence[int] = (),
    indent: int = 0,
) -> list[str]:
    """Lines of a table whose columns are padded to fit; columns in `right` align right.

    The last column is never padded, so a long last cell (a description) does not
    widen the others.
    """
    lines = [list(header)] if header is not None else []
    lines.extend(list(row) for row in rows)
    if not lines:
        return []
    columns = max(len(line) for line in lines)
    widths = [
        max((len(line[i]) for line in lines if i < len(line)), default=0) for i in range(columns)
    ]
    rendered = []
    for line in lines:
        cells = []
        for index, cell in enumerate(line):
            if index == len(line) - 1 and index not in right:
                cells.append(cell)
            elif index in right:
                cells.append(cell.rjust(widths[index]))
            else:
                cells.append(cell.ljust(widths[index]))
        rendered.append((" " * indent + "  ".join(cells)).rstrip())
    return rendered


def format_count(value: float) -> str:
    """A whole number with thousands separators: 12,345."""
    return f"{value:,.0f}"


def format_rate(value: float) -> str:
    """Messages per second, to three significant figures at least: 12,345 or 4.56."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_ms(value: float) -> str:
    """Milliseconds to three significant figures: 0.0412, 1.23, 456."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def note(text: str) -> None:
    """One line for the person at the terminal, on stderr, apart from the command's output."""
    print(text, file=sys.stderr, flush=True)
