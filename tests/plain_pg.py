"""A private cluster of the system's PostgreSQL 15 (Debian's, without pgvector) on a free 127.0.0.1
port, for tests of a DATABASE_URL server that lacks what refinery needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextmanager
def plain_postgres(password: str = "p@ss"):
    """Yields (superuser URL, URL of `refinery`: a CREATEROLE login with `password` owning the
    database `refinery`). Skipped when the binaries are absent. Under root the cluster runs as the
    `postgres` system user (PostgreSQL refuses root)."""
    from urllib.parse import quote

    from tests.dev_server import free_port

    if not (PG_BIN / "initdb").is_file() or not (PG_BIN / "pg_ctl").is_file():
        pytest.skip(f"no system PostgreSQL 15 at {PG_BIN} (apt-get install postgresql-15) for a server without pgvector")
    user = "postgres" if os.geteuid() == 0 else None
    workdir = Path(tempfile.mkdtemp(prefix="refinery-plainpg-"))
    if user is not None:
        shutil.chown(workdir, user)
    pgdata, port = workdir / "data", free_port()
    try:
        subprocess.run([PG_BIN / "initdb", "-D", pgdata, "-U", "postgres", "--auth=trust", "--no-sync"],
                       user=user, check=True, capture_output=True, timeout=120)
        subprocess.run([PG_BIN / "pg_ctl", "-D", pgdata, "-w", "-l", workdir / "log", "-o",
                        f"-p {port} -h 127.0.0.1 -k {workdir} -c fsync=off", "start"],
                       user=user, check=True, capture_output=True, timeout=120)
        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE refinery LOGIN CREATEROLE PASSWORD '{password}'")
            conn.execute("CREATE DATABASE refinery OWNER refinery")
        yield admin, f"postgresql://refinery:{quote(password, safe='')}@127.0.0.1:{port}/refinery"
    finally:
        if (pgdata / "postmaster.pid").exists():
            subprocess.run([PG_BIN / "pg_ctl", "-D", pgdata, "-m", "immediate", "stop"], user=user,
                           capture_output=True, timeout=60, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
