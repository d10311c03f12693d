"""Trend charts for the UI: one metric over recent days against its thresholds, as PNG bytes."""

from __future__ import annotations

import io
from datetime import date

from .monitoring import Threshold


def trend_png(metric: str, values: dict[date, float], threshold: Threshold | None = None) -> bytes:
    """A small line chart (days on x) with the target, warning and critical levels as lines."""
    import matplotlib

    matplotlib.use("Agg")  # no display; the Figure API below never touches pyplot's global state
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 2.4), dpi=100)
    axes = figure.add_subplot()
    days = sorted(values)
    axes.plot(days, [values[d] for d in days], marker="o", color="#1f5fbf", linewidth=1.5, label=metric)
    if threshold is not None:
        for level, color, name in ((threshold.target, "#2e7d32", "target"), (threshold.warning, "#f9a825", "warning"),
                                   (threshold.critical, "#c62828", "critical")):
            axes.axhline(level, color=color, linestyle="--", linewidth=1, label=f"{name} {level:g}")
    axes.set_title(metric, fontsize=10)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=6, loc="best")
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
