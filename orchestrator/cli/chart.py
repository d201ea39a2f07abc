"""A small terminal line chart for ``ballast history --plot``.

Pure text: every series is resampled to the chart's width and drawn with its
own mark on a shared y axis, with labels at both ends of each axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

MARKS = "*+o#x@%&"


def _resample(values: Sequence[float | None], width: int) -> list[float | None]:
    if not values:
        return [None] * width
    out: list[float | None] = []
    for col in range(width):
        lo = col * len(values) // width
        hi = max(lo + 1, (col + 1) * len(values) // width)
        chunk = [v for v in values[lo:hi] if v is not None and math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else None)
    return out


def render_chart(
    times: Sequence[datetime],
    series: Mapping[str, Sequence[float | None]],
    *,
    width: int = 72,
    height: int = 12,
    unit: str = "",
) -> str:
    """Draw ``series`` (same length as ``times``) as text; one mark per series."""
    if width < 10 or height < 3:
        raise ValueError("chart too small")
    columns = {name: _resample(vals, width) for name, vals in series.items()}
    finite = [v for col in columns.values() for v in col if v is not None]
    if not finite:
        return "(no data in this range)"
    low, high = min(finite), max(finite)
    if high == low:
        high = low + 1.0
    grid = [[" "] * width for _ in range(height)]
    for index, col in enumerate(columns.values()):
        mark = MARKS[index % len(MARKS)]
        for x, value in enumerate(col):
            if value is None:
                continue
            y = round((value - low) / (high - low) * (height - 1))
            grid[height - 1 - y][x] = mark
    top, bottom = f"{high:,.0f}{unit}", f"{low:,.0f}{unit}"
    label_width = max(len(top), len(bottom))
    lines = []
    for row_index, row in enumerate(grid):
        label = top if row_index == 0 else bottom if row_index == height - 1 else ""
        lines.append(f"{label:>{label_width}} |{''.join(row)}")
    lines.append(" " * label_width + " +" + "-" * width)
    if times:
        start, end = f"{times[0]:%m-%d %H:%M}", f"{times[-1]:%m-%d %H:%M}"
        gap = max(width - len(start) - len(end), 1)
        lines.append(" " * (label_width + 2) + start + " " * gap + end)
    legend = "  ".join(f"{MARKS[i % len(MARKS)]} {name}" for i, name in enumerate(columns))
    lines.append(" " * (label_width + 2) + legend)
    return "\n".join(lines)
