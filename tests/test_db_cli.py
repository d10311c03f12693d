"""`refinery db start|stop|status|psql` and `db-url` with real processes: the embedded PostgreSQL
outlives the command that started it, serves SQL clients until `db stop`, and `db-url` says when
it is down instead of printing a URL to a stopped server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.conftest import SAMPLE_MANIFEST, refinery


@pytest.fixture
def embedded_env():
    home = Path(tempfile.mkdtemp(prefix="refinery-db-"))  # short: PostgreSQL's socket lives in it
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")}
    env.update(REFINERY_HOME=str(home), CORPUS_MANIFEST=str(SAMPLE_MANIFEST), EMBED_PROVIDER="hash")
    yield env
    refinery(env, "db", "stop")
    shutil.rmtree(home, ignore_errors=True)


def connects(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_db_start_keeps_the_embedded_server_up_for_sql_clients_until_db_stop(embedded_env):
    down = refinery(embedded_env, "db-url")
    assert down.returncode == 1 and down.stdout == ""
    assert "not running" in down.stderr and "refinery db start" in down.stderr
    assert refinery(embedded_env, "db", "status").returncode == 3

    started = refinery(embedded_env, "db", "start")
    assert started.returncode == 0, started.stderr
    # `db start` has exited; the server it started is still up.
    url = refinery(embedded_env, "db-url").stdout.strip()
    assert url.startswith("postgresql://") and connects(url)
    status = refinery(embedded_env, "db", "status")
    assert status.returncode == 0 and "running" in status.stdout and "kept up by refinery db start" in status.stdout
    assert refinery(embedded_env, "db", "start").returncode == 0  # a second start joins: one server
    assert refinery(embedded_env, "db-url").stdout.strip() == url

    # Another refinery process uses it and exits: the server stays up.
    migrated = refinery(embedded_env, "status", "--json")
    assert migrated.returncode == 0, migrated.stderr
    psql = refinery(embedded_env, "db", "psql", "--", "-At", "-c", "SELECT count(*) FROM documents")
    assert psql.returncode == 0 and psql.stdout.strip() == "0", psql.stderr
    for named in (["-d", "dagster"], ["--dbname=dagster"]):  # psql's own -d: a database on the same server
        other = refinery(embedded_env, "db", "psql", "--", *named, "-At", "-c", "SELECT current_database()")
        assert other.returncode == 0 and other.stdout.strip() == "dagster", other.stderr
    assert connects(url)
    if shutil.which("psql"):  # the README's `psql "$(refinery db-url)"`, with the system's client
        system = subprocess.run(["psql", url, "-At", "-c", "SELECT 1"], capture_output=True, text=True, timeout=30)
        assert system.stdout.strip() == "1", system.stderr

    stopped = refinery(embedded_env, "db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not connects(url)
    assert refinery(embedded_env, "db", "status").returncode == 3
    assert refinery(embedded_env, "db-url").returncode == 1

    # Without `db start`, `db psql` runs the server for as long as psql runs.
    once = refinery(embedded_env, "db", "psql", "--", "-At", "-c", "SELECT 2")
    assert once.returncode == 0 and once.stdout.strip() == "2", once.stderr
    assert not connects(url)


def test_a_start_longer_than_pg_ctls_wait_is_waited_for(embedded_env):
    """pg_ctl gives the server 10 s; a recovery that takes longer (here: an archive recovery
    whose first restore_command sleeps 12 s) still ends in a running server, not in "did not
    start ... delete the directory"."""
    assert refinery(embedded_env, "db", "start").returncode == 0
    assert refinery(embedded_env, "db", "stop").returncode == 0
    pgdata = Path(embedded_env["REFINERY_HOME"]) / "pgdata"
    slept = pgdata / "slept"  # the server's system user writes there
    with (pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"restore_command = 'test -e {slept} || (touch {slept}; sleep 12); false'\n")
    (pgdata / "recovery.signal").touch()
    started = refinery(embedded_env, "db", "start")
    assert started.returncode == 0, started.stderr
    assert slept.exists() and not (pgdata / "recovery.signal").exists()  # it did recover, and slowly
    assert connects(refinery(embedded_env, "db-url").stdout.strip())
