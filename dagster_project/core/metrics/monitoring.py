"""Thresholds for the daily metrics (monitoring.yaml): a target, a warning and a critical level
per metric, and the status of a value against them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .snapshots import METRICS

OK, WARNING, CRITICAL, NO_DATA = "ok", "warning", "critical", "no data"


class MonitoringError(ValueError):
    """monitoring.yaml is unusable; the message names the metric and the problem."""


@dataclass(frozen=True)
class Threshold:
    metric: str
    target: float
    warning: float
    critical: float
    higher_is_better: bool

    def status(self, value: float | None) -> str:
        if value is None:
            return NO_DATA
        sign = 1 if self.higher_is_better else -1  # compare as "higher is better"
        if sign * value < sign * self.critical:
            return CRITICAL
        if sign * value < sign * self.warning:
            return WARNING
        return OK

    def describe(self) -> str:
        worse = "below" if self.higher_is_better else "above"
        return (f"target {self.target:g}; warning {worse} {self.warning:g}; critical {worse} {self.critical:g}")


def load_thresholds(path: Path) -> dict[str, Threshold]:
    """`metrics: {name: {target, warning, critical[, direction: higher|lower]}}`. The direction is
    inferred from the levels (critical below warning: higher is better) unless they are equal."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise MonitoringError(f"monitoring file {path} not found (set MONITORING_FILE)") from None
    except yaml.YAMLError as exc:
        raise MonitoringError(f"monitoring file {path} is not valid YAML: {exc}") from None
    entries = raw.get("metrics") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise MonitoringError(f"{path} must have a mapping `metrics:` of metric name -> {{target, warning, critical}}")
    thresholds = {}
    for name, entry in entries.items():
        where = f"{path}, metric {name!r}"
        if name not in METRICS:
            raise MonitoringError(f"{where}: unknown metric (known: {', '.join(METRICS)})")
        if not isinstance(entry, dict):
            raise MonitoringError(f"{where}: needs target, warning and critical")
        try:
            target, warning, critical = (float(entry[k]) for k in ("target", "warning", "critical"))
        except (KeyError, TypeError, ValueError):
            raise MonitoringError(f"{where}: target, warning and critical must all be numbers") from None
        direction = entry.get("direction")
        if direction not in (None, "higher", "lower"):
            raise MonitoringError(f"{where}: direction is higher or lower, not {direction!r}")
        if direction is None:
            if warning == critical:
                raise MonitoringError(f"{where}: warning equals critical; say `direction: higher` or `lower`")
            direction = "higher" if critical < warning else "lower"
        higher = direction == "higher"
        if (critical > warning) if higher else (critical < warning):
            raise MonitoringError(f"{where}: with {direction} values better, critical must not be "
                                  f"{'above' if higher else 'below'} warning")
        if (target < warning) if higher else (target > warning):
            raise MonitoringError(f"{where}: the target is worse than the warning level")
        thresholds[name] = Threshold(name, target, warning, critical, higher)
    return thresholds
