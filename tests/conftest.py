"""Shared fixtures: one embedded PostgreSQL + pgvector for the session, a fresh migrated
database per test (cloned from a template, ~50 ms), and a fake OpenAI server."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import psycopg
import pytest

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from dagster_project.core.db.migrations import migrate  # noqa: E402
from dagster_project.core.db.pg import _with_database, start_embedded  # noqa: E402
from dagster_project.core.db.store import VectorStore  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MANIFEST = PROJECT_ROOT / "examples" / "corpus.yaml"
PEPS = PROJECT_ROOT.parent / "shared" / "corpora" / "peps"
_counter = itertools.count()


def enterable(path: Path) -> Path:
    """Under root the embedded server runs as `pgserver`, and refinery changes no permission
    outside its home: let that user cross pytest's own (0700) temporary directories."""
    if os.geteuid() == 0:
        for directory in (path, *path.parents):
            if directory.stat().st_mode & 0o011 != 0o011:  # it keeps root's groups
                directory.chmod(directory.stat().st_mode | 0o011)
    return path


@pytest.fixture(autouse=True)
def _enterable_tmp_path(request):
    if "tmp_path" in request.fixturenames:
        enterable(request.getfixturevalue("tmp_path"))


@pytest.fixture(scope="session")
def pg_server():
    """URL of the session's embedded server (its `postgres` database)."""
    home = Path(tempfile.mkdtemp(prefix="refinery-test-"))
    # The server stops when this process exits (the library's atexit hook); its data goes after
    # that (atexit runs last-registered first). Removed earlier, the server could not be stopped
    # and outlived every test run.
    atexit.register(shutil.rmtree, home, True)
    url = start_embedded(home)
    template = _with_database(url, "refinery")
    migrate(template)
    yield url


def new_database(server_url: str, template: str = "refinery") -> str:
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _with_database(server_url, name)


@pytest.fixture
def db_url(pg_server) -> str:
    """A fresh database with every migration applied."""
    return new_database(pg_server)


@pytest.fixture
def store(db_url):
    s = VectorStore(db_url)
    yield s
    s.close()


@pytest.fixture
def fake_openai():
    with FakeOpenAI(dims=64) as server:
        yield server


@pytest.fixture
def peps_dir() -> Path:
    if not PEPS.is_dir():
        pytest.skip(f"the PEP corpus is not at {PEPS} (it lives in ../shared/corpora beside the project)")
    return PEPS


@pytest.fixture
def project_env(db_url, tmp_path, monkeypatch):
    """The environment the code location is built from: a copy of the sample corpus (tests may
    edit it), the test database, the hash embedder and no LLM. Returns the monkeypatch."""
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    for name, value in {"DATABASE_URL": db_url, "EMBED_PROVIDER": "hash", "REFINERY_HOME": str(tmp_path / "home"),
                        "CORPUS_MANIFEST": str(tmp_path / "examples" / SAMPLE_MANIFEST.name)}.items():
        monkeypatch.setenv(name, value)
    for name in ("LLM_MODEL", "OPENAI_API_KEY", "CHUNK_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def refinery(env, *args) -> subprocess.CompletedProcess:
    """A `refinery` command in its own process, with `env` as its whole environment."""
    return subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)


def command_line(process) -> str:
    """A psutil process's command line, or "" for one that exited or became a zombie since it was
    listed (the commands under test start short-lived children)."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def write_manifest(root: Path, collections: dict[str, dict]) -> Path:
    import yaml

    path = root / "corpus.yaml"
    path.write_text(yaml.safe_dump({"collections": collections}))
    return path


def ingest_sample(store) -> VectorStore:
    """Every collection of the sample manifest ingested with the hash embedder (no model, no server)."""
    from dagster_project.core.embed.local import HashEmbedder
    from dagster_project.core.ingest.chunking import ChunkSettings
    from dagster_project.core.ingest.corpus import load_manifest
    from dagster_project.core.ingest.pipeline import ingest_collection

    for collection in load_manifest(SAMPLE_MANIFEST).collections.values():
        ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                          max_file_bytes=10**7)
    return store


@pytest.fixture
def indexed(store) -> VectorStore:
    return ingest_sample(store)


def refine_cli_env(pg_server: str, tmp_path: Path, fake_openai, **settings: str) -> dict[str, str]:
    """The environment of a `refinery` command whose LLM is the fake server: fresh vector and
    Dagster databases with the sample ingested (hash embedder), gpt-4o-mini, plus `settings`."""
    from dagster_project.core.db.store import VectorStore

    env = {**os.environ, "DATABASE_URL": new_database(pg_server),
           "DAGSTER_PG_URL": new_database(pg_server, template="template1"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "REFINERY_HOME": str(tmp_path / "refinery_home"),
           "EMBED_PROVIDER": "hash", "CORPUS_MANIFEST": str(SAMPLE_MANIFEST), "LLM_MODEL": "gpt-4o-mini",
           "OPENAI_BASE_URL": fake_openai.base_url, **settings}
    store = VectorStore(env["DATABASE_URL"])
    try:
        ingest_sample(store)
    finally:
        store.close()
    return env


def kill_while_polling_a_batch(env, db_url: str, fake_openai, purpose: str, *args: str) -> None:
    """`refinery ARGS` in its own process group, SIGKILLed once its `purpose` batch (refine |
    embed) is submitted, recorded and being polled (the fake holds batches meanwhile)."""
    import signal
    import time

    fake_openai.hold_batches = True
    process = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", *args], env=env, cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with psycopg.connect(db_url) as conn:
                submitted = conn.execute("SELECT count(*) FROM llm_batches WHERE status = 'submitted' "
                                         "AND purpose = %s", (purpose,)).fetchone()[0]
            if submitted and fake_openai.requests_to("GET", "/v1/batches/"):
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        else:
            pytest.fail(f"the {purpose} batch was never submitted")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    fake_openai.hold_batches = False
