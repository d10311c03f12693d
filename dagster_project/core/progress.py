"""Progress of a long step: done / total, rate and ETA, reported at a steady cadence (at most
once per `every` seconds, and always at the end) rather than once per batch."""

from __future__ import annotations

import time
from typing import Callable


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Call with (done, total) as work finishes; `report` receives a ready line when due."""

    def __init__(self, what: str, report: Callable[[str], None], every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.report, self.every, self.clock = what, report, every, clock
        self.started = clock()
        self.last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done < total and self.last is not None and now - self.last < self.every:
            return
        self.last = now
        self.report(self.line(done, total, now - self.started))

    def line(self, done: int, total: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        share = f" ({done / total:.0%})" if total else ""
        if done >= total:
            return f"{self.what}: {done}/{total}{share} in {_duration(elapsed)}, {rate:.1f}/s"
        eta = _duration((total - done) / rate) if rate > 0 else "unknown"
        return f"{self.what}: {done}/{total}{share}, {rate:.1f}/s, ETA {eta}"
