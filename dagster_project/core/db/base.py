"""The store's connections: one pool, and the transactions every table family runs in (as the
`refinery_writer`, `refinery_reader` or `refinery_feedback` role) with the collection locks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool

from .migrations import migrate


class StoreBase:
    """The pool and the transactions; every table family runs its SQL through these."""

    def __init__(self, url: str, *, max_connections: int = 4, session_role: str | None = None,
                 connection_wait: float | None = None) -> None:
        """`session_role`: the role every session starts as (and returns to after each transaction),
        e.g. refinery_reader for a read-only service: SQL outside `writing()` runs with its rights.
        `connection_wait`: for a service, the seconds a caller waits for a connection before
        psycopg_pool.PoolTimeout (default 30)."""
        migrate(url)

        def configure(conn: psycopg.Connection) -> None:
            register_vector(conn)
            if session_role is not None:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(session_role)))
                conn.commit()

        # With a bounded wait, reconnection attempts give up as soon as a caller would: the next
        # caller then tries at once. The pool's own backoff (1, 2, 4 ... s for 5 minutes) would
        # keep a service down for up to a minute after its database came back.
        bounded = {} if connection_wait is None else {"timeout": connection_wait,
                                                      "reconnect_timeout": connection_wait}
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, configure=configure, open=True,
            kwargs={"application_name": "corpus-refinery"}, **bounded,
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
    def reading(self, tenant: str | None = None) -> Iterator[psycopg.Connection]:
        """One transaction as refinery_reader (every row), or as a tenant's read role, which row
        security limits to that tenant's collections (sql/0014_tenants.sql)."""
        from .tenants import TenantError, tenant_role

        with self._pool.connection() as conn, conn.transaction():
            if tenant is None:
                conn.execute("SET LOCAL ROLE refinery_reader")
            else:
                try:
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(tenant_role(tenant))))
                except (psycopg.errors.InvalidParameterValue, psycopg.errors.InsufficientPrivilege):
                    raise TenantError(f"tenant {tenant!r} has no read role this connection may use: create it "
                                      f"with `refinery tenant add {tenant}`") from None
            yield conn

    @contextmanager
    def giving_feedback(self) -> Iterator[psycopg.Connection]:
        """One transaction as refinery_feedback: exactly what applications may do (insert feedback)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE refinery_feedback")
            yield conn
