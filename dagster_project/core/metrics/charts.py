"""Trend charts for the UI: one metric over the days, as text bars. The Dagster UI shows table
metadata inline everywhere, while its Markdown drops data: images and hides long values behind
a dialog, so the chart is a column of the days' table."""

from __future__ import annotations

from datetime import date

from .monitoring import Threshold

BAR_WIDTH = 20  # characters of the longest bar
_EIGHTHS = " ▏▎▍▌▋▊▉"


def trend_bars(values: dict[date, float | None], threshold: Threshold | None = None,
               width: int = BAR_WIDTH) -> dict[date, str]:
    """A bar per day on one scale, from 0 to the largest value or threshold level; no bar for a
    day without a value."""
    levels = [threshold.target, threshold.warning, threshold.critical] if threshold else []
    top = max([abs(v) for v in values.values() if v is not None] + [abs(x) for x in levels] + [0.0])
    bars = {}
    for day, value in values.items():
        if value is None:
            bars[day] = ""
            continue
        eighths = round(width * 8 * abs(value) / top) if top else 0
        bars[day] = ("█" * (eighths // 8) + _EIGHTHS[eighths % 8]).rstrip() or "▏"
    return bars
