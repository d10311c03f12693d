"""The embedded default: started on demand, shared by concurrent processes, and a damaged
data directory gives a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

START = (
    "import psycopg, sys\n"
    "from dagster_project.core.db.pg import resolve_database_urls\n"
    "from dagster_project.core.settings import Settings\n"
    "from dagster_project.core.db.store import VectorStore\n"
    "urls = resolve_database_urls(Settings(refinery_home=sys.argv[1]))\n"
    "VectorStore(urls.vector_store).close()  # migrates, as every entry point does\n"
    "with psycopg.connect(urls.vector_store) as c:\n"
    "    print(c.execute(\"SELECT extversion FROM pg_extension WHERE extname = 'vector'\").fetchone()[0])\n"
)


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_PG_URL")}
    return env


def test_two_processes_starting_at_once_share_one_server(tmp_path):
    home = tmp_path / "home"
    procs = [subprocess.Popen([sys.executable, "-c", START, str(home)], cwd=PROJECT_ROOT, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
        assert out.strip().startswith("0.8")
    assert (home / "pgdata" / "PG_VERSION").read_text().strip() == "18"


def test_damaged_data_directory_says_what_to_do(tmp_path):
    home = tmp_path / "home"
    pgdata = home / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("18\n")  # looks initialized, but holds nothing
    proc = subprocess.run([sys.executable, "-c", START, str(home)], cwd=PROJECT_ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DatabaseSetupError" in proc.stderr
    assert f"delete {pgdata}" in proc.stderr and "DATABASE_URL" in proc.stderr


def test_dagster_pg_url_alone_holds_dagster_storage_beside_the_embedded_vector_store(pg_server, tmp_path):
    """DAGSTER_PG_URL counts without DATABASE_URL: Dagster's runs go to that server, the vectors to
    the embedded one; an unreachable one is refused by name, without its password."""
    import json

    import psycopg

    from tests.conftest import SAMPLE_MANIFEST, new_database, refinery

    dagster_db = new_database(pg_server, template="template1")
    env = {k: v for k, v in _env().items() if k != "DAGSTER_HOME"} | {
        "REFINERY_HOME": str(tmp_path / "home"), "EMBED_PROVIDER": "hash", "CORPUS_MANIFEST": str(SAMPLE_MANIFEST),
        "DAGSTER_PG_URL": dagster_db}
    ingest = refinery(env, "ingest", "--collection", "product", "--json")
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    with psycopg.connect(dagster_db) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'").fetchone()[0] >= 1
    status = json.loads(refinery(env, "status", "--json").stdout)
    assert status["collections"]["product"]["vectors"] > 0

    env["DAGSTER_PG_URL"] = "postgresql://dag:Dg5ecretXY@127.0.0.1:1/dagster"
    refused = refinery(env, "ingest", "--collection", "product")
    assert refused.returncode == 2
    assert "cannot connect to the Dagster storage (DAGSTER_PG_URL) at postgresql://dag:***@127.0.0.1:1/dagster" \
        in refused.stderr
    assert "Dg5ecretXY" not in refused.stdout + refused.stderr
