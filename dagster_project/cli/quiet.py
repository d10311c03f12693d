"""What a job command's stderr holds besides its own lines: the storage libraries' reconnection
chatter is dropped (the command itself says in one line what happened to the database), and
nothing follows the command's last line."""

from __future__ import annotations

import logging
import os
import sys

# Dagster writes this straight to stderr when a log call cannot reach its event log.
_EVENT_LOG_WRITE_FAILED = "Exception while writing logger call to event log"


class _DropReconnectChatter(logging.Filter):
    """psycopg's pool warns at each failed reconnection and dagster-postgres at each retry (on the root
    logger): dozens of lines while a database is down or shutting down, none a user can act on. So
    does the live status publisher (core/live_status.py) when its connection is lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("psycopg.pool") or getattr(record, "database_unreachable", False):
            return False
        return not (record.name == "root" and str(record.msg).startswith("Retrying failed database connection"))


class _Stderr:
    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith(_EVENT_LOG_WRITE_FAILED):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def drop_reconnect_chatter() -> None:
    """For a job command, after logging is configured."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropReconnectChatter())
    if not isinstance(sys.stderr, _Stderr):
        sys.stderr = _Stderr(sys.stderr)


def fall_silent() -> None:
    """After a command's last line on an interrupt or a lost database: the run's thread may still be
    working as the process exits, and the embedded server stops at exit under it, so whatever it
    or the libraries say from here on is about that stop, not the user's run."""
    sys.stderr.flush()
    logging.disable(logging.CRITICAL)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
