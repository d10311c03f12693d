"""Progress of a long step: done / total, rate and ETA, reported at a steady cadence (at most
once per `every` seconds, and always at the end) rather than once per batch; and its display on
a terminal: one bar redrawn in place on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol, TextIO

# Displays watching every Progress of this process (the CLI runs its steps in process).
_watchers: list[Callable[[Progress, int, int], None]] = []
_watchers_lock = threading.Lock()


@contextmanager
def watching(display: Callable[[Progress, int, int], None]) -> Iterator[None]:
    """While inside, `display(progress, done, total)` sees every update of every Progress."""
    with _watchers_lock:
        _watchers.append(display)
    try:
        yield
    finally:
        with _watchers_lock:
            _watchers.remove(display)


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
        for display in list(_watchers):
            display(self, done, total)
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


class _Stream(Protocol):
    def write(self, text: str) -> object: ...
    def flush(self) -> object: ...
    def isatty(self) -> bool: ...


class ProgressDisplay:
    """Shows progress on `stream` (stderr): on a TTY one line, a bar and the counts, redrawn in
    place with a carriage return at most `redraw` times a second, ended by a newline when the
    step is done; on anything else (a pipe, a log file) a plain line per `every` seconds and at
    the end. `label` (e.g. the collection) prefixes the line."""

    BAR = 24

    def __init__(self, stream: TextIO | _Stream, *, tty: bool | None = None, every: float = 10.0,
                 redraw: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.stream, self.every, self.redraw, self.clock = stream, every, redraw, clock
        self.tty = stream.isatty() if tty is None else tty
        self.label = ""
        self._last: dict[int, float] = {}
        self._open = False  # a bar is drawn and not yet ended by a newline
        self._lock = threading.Lock()

    def __call__(self, progress: Progress, done: int, total: int) -> None:
        now, finished = self.clock(), done >= total
        with self._lock:
            last = self._last.get(id(progress))
            if not finished and last is not None and now - last < (self.redraw if self.tty else self.every):
                return
            self._last[id(progress)] = now
            text = (f"{self.label}: " if self.label else "") + progress.line(done, total, now - progress.started)
            if self.tty:
                self._draw(text, done, total, finished)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def _draw(self, text: str, done: int, total: int, finished: bool) -> None:
        filled = self.BAR if not total else min(self.BAR, self.BAR * done // total)
        line = f"[{'#' * filled}{'.' * (self.BAR - filled)}] {text}"
        width = self._columns() - 1
        # Clear to the end of the line: a shorter line must not leave the tail of a longer one.
        self.stream.write("\r" + line[:width] + "\x1b[K" + ("\n" if finished else ""))
        self._open = not finished

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            return shutil.get_terminal_size((100, 24)).columns

    def close(self) -> None:
        """End a bar left open (a step that failed before its end), so later output starts on a new line."""
        with self._lock:
            if self._open:
                self.stream.write("\n")
                self.stream.flush()
                self._open = False
