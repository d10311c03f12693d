"""The store's connections: one pool, and the transactions every table family runs in (as the
`refinery_writer`, `refinery_reader` or `refinery_feedback` role) with the collection locks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

from .migrations import migrate


class StoreBase:
    """The pool and the transactions; every table family runs its SQL through these."""

    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        migrate(url)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, configure=register_vector, open=True,
            kwargs={"application_name": "corpus-refinery"},
        )

    def close(self) -> None:
        self._pool.close()

    @property
    def conninfo(self) -> str:
        """What the pool connects with, for a connection of its own (live status)."""
        return self._pool.conninfo

    def drop_broken_connections(self) -> None:
        """Replace pooled connections whose session died (e.g. terminated by an administrator)."""
        self._pool.check()

    @contextmanager
    def writing(self, collection: str | None = None) -> Iterator[psycopg.Connection]:
        """One transaction as refinery_writer; with a collection, runs on the same collection
        serialize on an advisory lock, so they never interleave rows."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE refinery_writer")
            if collection is not None:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:' || %s))", (collection,))
            yield conn

    @contextmanager
    def step_lock(self, collection: str) -> Iterator[None]:
        """Held for a whole step (read the state, work, write): two runs on one collection take
        turns instead of interleaving, so one never writes what it read before the other wrote.
        A different key from the transactions' own, which run on other connections."""
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext('refinery-step:' || %s))", (collection,))
            try:
                conn.commit()
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(hashtext('refinery-step:' || %s))", (collection,))
                    conn.commit()
                except psycopg.OperationalError:
                    pass  # the session died, and its lock with it; the error that killed it is reported

    @contextmanager
    def reading(self) -> Iterator[psycopg.Connection]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE refinery_reader")
            yield conn

    @contextmanager
    def giving_feedback(self) -> Iterator[psycopg.Connection]:
        """One transaction as refinery_feedback: exactly what applications may do (insert feedback)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE refinery_feedback")
            yield conn
