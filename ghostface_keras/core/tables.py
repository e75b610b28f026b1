"""The one Markdown table writer (results tables, the model zoo, parity reports). A leaf module: no pandas.

Example:
    >>> print(markdown_table([{"name": "lfw", "accuracy": 0.99, "pairs": 6000}], thousands=True))
    | name | accuracy | pairs |
    | --- | --- | --- |
    | lfw | 0.9900 | 6,000 |
    <BLANKLINE>
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any
from collections.abc import Mapping, Sequence


def _cell(value: Any, digits: int, thousands: bool) -> str:
    if value is None or (isinstance(value, Real) and not isinstance(value, Integral) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return f"{int(value):,}" if thousands else str(int(value))
    if isinstance(value, Real):
        return f"{float(value):.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]] | Any, digits: int = 4, thousands: bool = False) -> str:
    """A GitHub-flavoured Markdown table of row dicts (or a pandas DataFrame); columns in first-seen order,
    reals with `digits` decimals, integers with thousands separators if asked, None / NaN as "-".

    Example:
        >>> print(markdown_table([{"a": 1, "b": None}, {"a": 2, "c": "x|y"}], digits=2), end="")
        | a | b | c |
        | --- | --- | --- |
        | 1 | - | - |
        | 2 | - | x\\|y |
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a DataFrame
        rows = rows.to_dict("records")
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = ["| " + " | ".join(str(column) for column in columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(row.get(column), digits, thousands) for column in columns) + " |"
              for row in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[Mapping[str, Any]], digits: int = 4, thousands: bool = False) -> str:
    """The same table as plain aligned columns for a terminal.

    Example:
        >>> print(text_table([{"name": "MobileFaceNet", "params": 1220864}, {"name": "x", "params": 5}]), end="")
        name          params
        MobileFaceNet 1220864
        x             5
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict("records")
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    cells = [[str(column) for column in columns]]
    cells += [[_cell(row.get(column), digits, thousands).replace("\\|", "|") for column in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    return "".join(" ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() + "\n"
                   for line in cells)
