"""Live status for applications: a step's progress published as it happens with PostgreSQL
NOTIFY on the channel `refinery_progress`, a JSON payload per message. Best effort: a message
that cannot be sent is dropped, never the step."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

CHANNEL = "refinery_progress"
EVERY = 1.0  # seconds between messages of one step (the first and the last always go out)
RETRY_AFTER = 5.0  # seconds without trying again after a failed connect or send
CONNECT_TIMEOUT = 3  # seconds: a server that does not answer must not hold the step up for long

log = logging.getLogger(__name__)


class LiveStatus:
    """Publishes (done, total) of one step of one collection on its own autocommit connection
    (a NOTIFY inside the step's transactions would only be seen at their commit)."""

    def __init__(self, conninfo: str, collection: str, step: str, *, every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.conninfo, self.collection, self.step, self.every, self.clock = conninfo, collection, step, every, clock
        self.started = clock()
        self.sent = 0
        self.failed = 0
        self._conn: psycopg.Connection | None = None
        self._last_sent: float | None = None
        self._retry_at = 0.0
        self._pending: tuple[int, int] | None = None  # the latest update not yet sent (throttled)
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            now = self.clock()
            self._pending = (done, total)
            if done < total and self._last_sent is not None and now - self._last_sent < self.every:
                return
            self._send(done, total, "running", now)

    def finish(self, state: str) -> None:
        """The step ended (`done` or `failed`): the last counts go out with the state."""
        with self._lock:
            done, total = self._pending or (0, 0)
            self._send(done, total, state, self.clock(), retry=True)
            self._close()

    def payload(self, done: int, total: int, state: str, now: float) -> str:
        elapsed = now - self.started
        return json.dumps({"collection": self.collection, "step": self.step, "state": state, "done": done,
                           "total": total, "rate": round(done / elapsed, 3) if elapsed > 0 else 0.0,
                           "elapsed_s": round(elapsed, 3)})

    def _send(self, done: int, total: int, state: str, now: float, retry: bool = False) -> None:
        self._last_sent = now
        if now < self._retry_at and not retry:
            return
        # A session open since the last message may have died meanwhile (terminated, server
        # restarted): that one gets a second try on a fresh connection.
        for attempt in range(2 if self._conn is not None else 1):
            try:
                if self._conn is None:
                    self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                                 application_name="refinery-live-status")
                self._conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.payload(done, total, state, now)))
                self.sent += 1
                return
            except Exception as exc:  # noqa: BLE001 - publishing is best effort: the step goes on
                self._close()
                error = exc
                if not isinstance(exc, psycopg.OperationalError):
                    break  # the server refused the message itself: sending it again would not help
        self.failed += 1
        self._retry_at = now + RETRY_AFTER
        if self.failed == 1:  # once per step: a dead listener path must not flood the log
            # The exception's type only: a connection error's text can quote the URL.
            # A lost connection is marked: the step's own queries meet it too, and a command
            # says so itself in one line (cli/quiet.py drops this one there).
            log.warning("live status for %s/%s not published (%s); the step goes on",
                        self.collection, self.step, type(error).__name__,
                        extra={"database_unreachable": isinstance(error, psycopg.OperationalError)})

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None


@contextmanager
def publishing(conninfo: str, collection: str, step: str,
               progress: Callable[[int, int], None] | None) -> Iterator[Callable[[int, int], None]]:
    """`progress` that also publishes each update (at most every EVERY seconds) and, at the end,
    the step's state: `done`, or `failed` if it raised."""
    live = LiveStatus(conninfo, collection, step)

    def both(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)
        live(done, total)

    try:
        yield both
    except BaseException:
        live.finish("failed")
        raise
    live.finish("done")
