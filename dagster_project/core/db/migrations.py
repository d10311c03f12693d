"""Schema migrations: numbered files in sql/, applied in order, each in its own transaction,
recorded with a checksum; an edited, deleted or out-of-order migration is refused, a failing one
named; migrators serialize."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ..settings import SQL_DIR
from .pg import check_pgvector, mask_url

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x5245_4649  # "REFI": one advisory lock for all migrators of a database


class MigrationError(RuntimeError):
    """A migration cannot be applied; the message says which file and what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations in {sql_dir} share a number: {versions}")
    return migrations


def _refuse_missing_or_out_of_order(migrations: list[Migration], applied: dict[int, tuple[str, str]],
                                    sql_dir: Path) -> None:
    """The files must still hold every applied migration, and a new file must come after them:
    one numbered below the last applied would run on a schema its author never saw."""
    present = {m.version for m in migrations}
    missing = [name for version, (name, _) in sorted(applied.items()) if version not in present]
    if missing:
        raise MigrationError(f"applied migration {', '.join(missing)} is missing from {sql_dir}. Applied "
                             "migrations are never deleted: restore the file (from version control).")
    last = max(applied, default=0)
    early = [m.name for m in migrations if m.version not in applied and m.version < last]
    if early:
        raise MigrationError(f"migration {', '.join(early)} is numbered before the last applied one "
                             f"({applied[last][0]}): renumber it after {last:04d} and run again.")


def migrate(url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    migrations = load_migrations(sql_dir)
    check_pgvector(url)
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            try:
                conn.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                           version integer PRIMARY KEY, name text NOT NULL,
                           checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
                )
            except psycopg.errors.InsufficientPrivilege as exc:  # e.g. a user that may not create tables
                raise MigrationError(f"cannot create the table schema_migrations: {' '.join(str(exc).split())}. "
                                     + _server_side_fix(exc, url)) from None
            applied = {
                version: (name, checksum)
                for version, name, checksum in conn.execute(
                    "SELECT version, name, checksum FROM schema_migrations"
                )
            }
            _refuse_missing_or_out_of_order(migrations, applied, sql_dir)
            for migration in migrations:
                if migration.version in applied:
                    name, checksum = applied[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.name} was edited after it was applied "
                            f"(as {name}). Applied migrations are immutable: revert the edit and "
                            "put the change in a new, higher-numbered file in sql/."
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as exc:
                    if conn.closed or isinstance(exc, psycopg.OperationalError):
                        raise  # the connection, not the file
                    reason = " ".join(str(exc).split())
                    raise MigrationError(f"migration {migration.name} failed and was rolled back: {reason}. "
                                         + (_server_side_fix(exc, url)
                                            or f"Fix {sql_dir / migration.name} and run again.")) from None
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _server_side_fix(exc: psycopg.Error, url: str) -> str | None:
    """For a failure whose cause is the server, not the file (a right the user lacks, an
    extension it does not have, a full disk): what to do there. None when the SQL is to blame."""
    server = f"the server that DATABASE_URL names ({mask_url(url)})"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (f"The cause is on {server}, not in the file: its user lacks a right the migration needs "
                "(it creates the extension vector and the roles refinery_*: it needs CREATEROLE and to own its "
                "database, or a superuser to run the failing statement once). Grant it there and run again.")
    if isinstance(exc, psycopg.errors.FeatureNotSupported) and "extension" in str(exc):
        return (f"The cause is on {server}, not in the file: install the extension it names there "
                "(pgvector >= 0.8 for vector) and run again.")
    if exc.sqlstate and exc.sqlstate[:2] in ("53", "58"):  # insufficient resources, system error
        return f"The cause is on {server}, not in the file (its resources or files): fix it there and run again."
    return None
