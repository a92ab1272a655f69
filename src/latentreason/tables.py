"""The one markdown table builder: every table the project writes (sweep tables, reports, benchmarks,
the scripts under results/) goes through `markdown_table`, so they all look alike and none is hand-rolled.

No imports beyond the standard library: benchmarks and result scripts may use it without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def format_cell(value: Any) -> str:
    """Default cell text: blank for None, 3 significant digits for very large or very small floats, else
    3 decimals; strings (already formatted cells) and everything else via str."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.3f}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   fmt: Callable[[Any], str] = format_cell) -> str:
    """A GitHub markdown table of `rows` (dicts) restricted to `columns`, in that order; each cell is
    `fmt(row.get(column))`. Builders that format their own cells pass rows of strings keyed by header."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)
