"""What a DATABASE_URL server must offer, checked before anything runs: pgvector >= 0.8 (a real
PostgreSQL 15 without it), and a migration the server refuses blamed on the server, not the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from urllib.parse import quote, urlsplit

import psycopg
import pytest

from dagster_project.core.db.migrations import MigrationError, migrate
from dagster_project.core.db.pg import (
    DatabaseSetupError,
    _with_database,
    mask_url,
    pgvector_problem,
)
from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST
from tests.dev_server import free_port
from tests.plain_pg import plain_postgres

INSTALL = "install pgvector >= 0.8 on the server that DATABASE_URL names (postgresql://refinery:***@127.0.0.1:"


def _refinery(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A `refinery` command in its own session; killed with its group if it outlives `timeout`
    (a `refinery dev` that started its UI on a broken store would never exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", *args], env=env, cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"`refinery {' '.join(args)}` still ran after {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_a_server_without_pgvector_is_refused_first_with_what_to_do_there(tmp_path):
    with plain_postgres(password="p@ss") as (admin, url):
        env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_PG_URL", "DAGSTER_HOME")}
        env.update(DATABASE_URL=url, REFINERY_HOME=str(tmp_path / "home"), EMBED_PROVIDER="hash",
                   CORPUS_MANIFEST=str(SAMPLE_MANIFEST))
        for args in (("status",), ("ingest",), ("search", "anything"), ("dev", "--port", str(free_port()))):
            result = _refinery(env, *args)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and INSTALL in lines[0] and "no pgvector" in lines[0], (args, result.stderr)
            assert "p@ss" not in result.stderr + result.stdout and "p%40ss" not in result.stderr
            assert "Fix " not in result.stderr and "Dagster UI" not in result.stdout
        # The runs of a deployment (no CLI in front) meet the same line in the store's migrations.
        with pytest.raises(DatabaseSetupError, match="install pgvector >= 0.8 on the server"):
            migrate(url)
        with psycopg.connect(_with_database(admin, "refinery")) as conn:  # nothing ran on it
            assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


@pytest.mark.parametrize("installed, default, available, expected", [
    (None, None, [], "has no pgvector extension (>= 0.8 is needed): install pgvector >= 0.8 on"),
    (None, "0.7.4", ["0.7.4"], "offers pgvector 0.7.4, >= 0.8 is needed: install"),
    (None, "0.10.0", ["0.10.0"], None),  # versions compare as numbers, not text
    ("0.7.4", "0.8.1", ["0.7.4", "0.8.1"], "pgvector 0.7.4 is installed, >= 0.8 is needed: on {server}, run `ALTER"),
    ("0.5.1", "0.5.1", ["0.5.1"], "install pgvector >= 0.8 on {server}, then run `ALTER EXTENSION vector UPDATE`"),
    ("0.8.0", "0.8.0", ["0.8.0"], None),
])
def test_pgvector_older_than_0_8_is_refused_too(installed, default, available, expected):
    problem = pgvector_problem(installed, default, available)
    assert problem == expected if expected is None else expected in problem


def test_a_migration_the_server_refuses_names_the_servers_side_not_the_file(pg_server):
    """A user that owns its database but may not grant itself refinery's roles: the migration's
    GRANT fails with permission denied, which no edit of sql/0002_roles.sql would fix."""
    with login_database(pg_server, f"weak{os.getpid()}", password="w3ak!", owner=True) as weak:
        with pytest.raises(MigrationError) as refused:
            migrate(weak)
        message = str(refused.value)
        assert "permission denied" in message and "The cause is on the server that DATABASE_URL names" in message
        assert "Grant it there and run again" in message and "Fix " not in message and "w3ak" not in message


@contextmanager
def login_database(pg_server: str, name: str, *, password: str = "", owner: bool):
    """A role `name` and a database `name` (owned by it or not) with pgvector created by the
    superuser, so the pgvector check passes; yields the role's URL; both dropped after."""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {name}")
        conn.execute(f"CREATE ROLE {name} LOGIN" + (f" PASSWORD '{password}'" if password else ""))
        conn.execute(f"CREATE DATABASE {name}" + (f" OWNER {name}" if owner else "") + " TEMPLATE template0")
    with psycopg.connect(_with_database(pg_server, name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    try:
        yield _with_database(pg_server, name).replace("postgresql://postgres:@",
                                                      f"postgresql://{name}:{quote(password)}@", 1)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {name}")


def test_an_older_pgvector_installed_in_the_database_is_refused_with_the_update_to_run(pg_server, tmp_path):
    """The catalog says 0.7.4 (as a database created before an upgrade of the server's pgvector
    would): the server offers 0.8, so the fix is ALTER EXTENSION ... UPDATE in that database."""
    from tests.conftest import new_database

    url = new_database(pg_server)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE pg_extension SET extversion = '0.7.4' WHERE extname = 'vector'")
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_PG_URL", "DAGSTER_HOME")}
    env.update(DATABASE_URL=url, REFINERY_HOME=str(tmp_path / "home"), EMBED_PROVIDER="hash",
               CORPUS_MANIFEST=str(SAMPLE_MANIFEST))
    result = _refinery(env, "status")
    assert result.returncode == 2
    database = urlsplit(url).path.lstrip("/")
    assert result.stderr.strip().splitlines() == [(
        f"refinery: pgvector 0.7.4 is installed, >= 0.8 is needed: on the server that DATABASE_URL names "
        f"({mask_url(url)}), run `ALTER EXTENSION vector UPDATE` in database {database} (as its owner or a "
        "superuser) and run again")]


def test_a_user_that_may_not_create_tables_is_told_what_to_grant_on_the_server(pg_server):
    """Not the database's owner: since PostgreSQL 15 such a user may not create tables in public,
    so even the migrations' bookkeeping table fails; the message says so, without a traceback."""
    with login_database(pg_server, f"guest{os.getpid()}", owner=False) as guest:
        with pytest.raises(MigrationError) as refused:
            migrate(guest)
        message = str(refused.value)
        assert "schema_migrations" in message and "permission denied" in message
        assert "The cause is on the server that DATABASE_URL names" in message and "Grant it there" in message
