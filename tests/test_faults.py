"""Fault injection, as deployed: `refinery ingest` in its own process on its own embedded
PostgreSQL, killed with SIGKILL mid-embedding, its connections terminated, its postmaster
killed; a rerun must finish in bounded time and leave exactly the index of a clean run. Also the
embedded server's own hazards (a stale postmaster.pid, a long home) and unreadable input files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from dagster_project.core.search.evaluation import QuestionsError, load_questions
from tests.conftest import PEPS, PROJECT_ROOT, command_line, write_manifest

PEP_FILES = 30  # seconds of parsing and chunking; a few thousand texts to embed
SMALL_CHUNKS = {"CHUNK_MAX_TOKENS": "48", "CHUNK_OVERLAP_TOKENS": "0"}  # more texts: several batches of 1,024
RERUN_TIMEOUT = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if not PEPS.is_dir():
        pytest.skip(f"the PEP corpus is not at {PEPS}")
    root = tmp_path_factory.mktemp("faults")
    peps = root / "peps"
    peps.mkdir()
    for path in sorted(PEPS.glob("pep-0*.rst"))[:PEP_FILES]:
        shutil.copy(path, peps / path.name)
    small = root / "small"
    small.mkdir()
    for path in sorted(PEPS.glob("pep-3*.rst"))[:3]:
        shutil.copy(path, small / path.name)
    defaults = {"category": "pep", "doc_type": "spec", "status": "published", "embed_mode": "full",
                "pricing_sensitive": False}
    write_manifest(root, {"peps": {"root": str(peps), "include": ["*.rst"], "defaults": defaults},
                          "small": {"root": str(small), "include": ["*.rst"], "defaults": defaults}})
    return root / "corpus.yaml"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME", "LLM_MODEL", "OPENAI_API_KEY")}
    env.update(PYTHONPATH=str(PROJECT_ROOT), REFINERY_HOME=str(home), EMBED_PROVIDER="hash",
               PYTHONWARNINGS="ignore::UserWarning", **SMALL_CHUNKS, **extra)
    return env


def _ingest(home: Path, manifest: Path, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "ingest", "--manifest", str(manifest),
                             "--json", *args], cwd=PROJECT_ROOT, env=_env(home, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until(proc: subprocess.Popen, needle: str, timeout: float = 150) -> list[str]:
    """stderr lines of `proc` up to the first holding `needle` (the rest is drained behind)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return seen
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout}s:\n{''.join(seen)}"
    raise AssertionError(f"the process ended before {needle!r} (code {proc.wait()}):\n{''.join(seen)}")


def _finish(proc: subprocess.Popen, timeout: float = RERUN_TIMEOUT) -> tuple[int, dict | None, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"wedged: no end within {timeout}s\n{err[-3000:]}") from None
    try:
        summary = json.loads(out)
    except ValueError:
        summary = None
    return proc.returncode, summary, err


def _refinery_url(home: Path) -> str:
    """The vector store of an embedded home, started by a helper process kept alive by the caller."""
    pid_file = home / "pgdata" / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    return f"postgresql://postgres@/refinery?host={lines[4]}&port={lines[3]}"


def _fingerprint(url: str) -> dict:
    with psycopg.connect(url) as conn:
        q = lambda sql: conn.execute(sql).fetchone()  # noqa: E731
        return {
            "documents": q("SELECT count(*), md5(string_agg(collection || path || encode(content_hash, 'hex'), ','"
                           " ORDER BY collection, path)) FROM documents"),
            "chunks": q("SELECT count(*), md5(string_agg(d.path || c.ordinal || encode(c.content_hash, 'hex'), ','"
                        " ORDER BY d.path, c.ordinal)) FROM chunks c JOIN documents d ON d.id = c.document_id"),
            "vectors": q("SELECT count(*), md5(string_agg(encode(content_hash, 'hex') || embedding::text, ','"
                         " ORDER BY content_hash)) FROM embeddings"),
        }


def _with_server(home: Path, func):
    """Run func(url) against a home's embedded server, started (or joined) by a helper process."""
    helper = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from dagster_project.core.db.pg import start_embedded\n"
                               "start_embedded(sys.argv[1]); print('up', flush=True); sys.stdin.read()", str(home)],
                              cwd=PROJECT_ROOT, env=_env(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert helper.stdout.readline().strip() == "up"
        return func(_refinery_url(home))
    finally:
        helper.stdin.close()
        helper.wait(60)


def _postmaster(home: Path) -> int | None:
    try:
        pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if psutil.pid_exists(pid) else None


def _server_stops(home: Path, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _postmaster(home) is None:
            return True
        time.sleep(0.2)
    return False


def _uid(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err, err[-3000:]


def _new_home() -> Path:
    """A home directly under the temp directory: under root, the server's user must cross
    every parent, and refinery changes no permission outside the home."""
    return Path(tempfile.mkdtemp(prefix="refinery-faults-"))


@pytest.fixture
def home():
    path = _new_home()
    yield path
    _server_stops(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(corpus) -> dict:
    """The index of one clean ingest of the corpus."""
    home = _new_home()
    code, summary, err = _finish(_ingest(home, corpus, "--collection", "peps"), timeout=300)
    assert code == 0, err[-3000:]
    assert summary["embedded"] > 3 * 1024, "too few texts to kill the embedding halfway"
    try:
        return _with_server(home, _fingerprint)
    finally:
        _server_stops(home)
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ 12.1: killed runs

def _worker(proc: subprocess.Popen) -> int:
    """The pid of the process running the job: `refinery ingest` runs it in a child of its own
    (cli.JOB_COMMANDS), which dies with it."""
    import psutil

    (child,) = psutil.Process(proc.pid).children()
    return child.pid


def test_two_ingests_killed_mid_embedding_then_a_third_finishes_exactly(corpus, reference, home):
    killed, said = [], []
    for _ in range(2):
        proc = _ingest(home, corpus, "--collection", "peps")
        said.append("".join(_until(proc, "texts embedded")))  # a batch is stored; the step holds its slot
        killed.append(_worker(proc))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _postmaster(home) is not None  # the dead processes are still listed as its users

    code, summary, err = _finish(_ingest(home, corpus, "--collection", "peps"))
    assert code == 0, err[-3000:]
    # Each run ends the run of the process killed before it, and frees its pool slot.
    for pid, stderr in zip(killed, (said[1], err)):
        assert f"refinery process that died (pid {pid}): marked failed, its pool slots freed" in stderr, stderr
    assert 0 < summary["embedded"] < reference["vectors"][0]  # what the killed runs stored was kept
    assert all(summary["collections"]["peps"]["checks"].values())
    # The last user is gone: the dead pids no longer keep the server alive.
    assert _server_stops(home), "the embedded server outlived its last live user"
    assert _with_server(home, _fingerprint) == reference


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def chunking_corpus(tmp_path_factory) -> Path:
    """300 PEPs: chunking runs on the process pool for several seconds."""
    if not PEPS.is_dir():
        pytest.skip(f"the PEP corpus is not at {PEPS}")
    root = tmp_path_factory.mktemp("chunking")
    (root / "peps").mkdir()
    for path in sorted(PEPS.glob("pep-*.rst"))[:300]:
        shutil.copy(path, root / "peps" / path.name)
    return write_manifest(root, {"peps": {"root": str(root / "peps"), "include": ["*.rst"]}})


def test_an_ingest_killed_mid_chunking_leaves_no_pool_process(chunking_corpus, home):
    proc = _ingest(home, chunking_corpus)
    try:
        _until(proc, "documents chunked")
        # The fork server, its workers and the resource tracker, found by their parent chain.
        pool = [p for p in psutil.Process(proc.pid).children(recursive=True)
                if "multiprocessing" in command_line(p)]
        assert sum("forkserver" in command_line(p) for p in pool) >= 2, "no pool worker to watch"
        proc.send_signal(signal.SIGKILL)  # `kill -9` on the pid a user sees: the job's child dies with it
    finally:
        proc.kill()
        proc.communicate()
    deadline = time.monotonic() + 5
    while (left := [p for p in pool if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in left:
        p.kill()
    _with_server(home, lambda url: None)  # the killed pid no longer holds the server: it stops after this
    assert not left, f"pool processes outlived the killed ingest: {[command_line(p)[:90] for p in left]}"


def _only_its_own_lines(err: str, last: str) -> None:
    """stderr holds the progress lines and the command's own lines, and `last` is the last: no
    library chatter (database retries, pool reconnections), nothing after the line."""
    said = [line for line in err.splitlines() if line.strip() and not line.startswith(("peps: ", "small: "))]
    # A backend of the killed embedded server may say so itself on the stderr it inherited (timing):
    # that is the event the command's last line reports, not library chatter.
    said = [line for line in said if "terminating connection due to unexpected postmaster exit" not in line]
    foreign = [line for line in said if not line.startswith("refinery: ")]
    assert not foreign, err[-3000:]
    assert said and said[-1].startswith(last), err[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_chunking_ends_with_the_one_line_alone(chunking_corpus, home, signum):
    # The embedded server stops as the command exits, while the canceled run's thread still writes.
    proc = _ingest(home, chunking_corpus)
    _until(proc, "documents chunked")
    proc.send_signal(signum)  # `kill -INT` / `kill -TERM` on the pid a user sees
    code, _, err = _finish(proc)
    assert code == 128 + signum, err[-3000:]
    _only_its_own_lines(err, f"refinery: stopped by {signum.name}: run ")
    assert err.rstrip().endswith("(what is stored is not redone)"), err[-3000:]


def test_a_waiting_ingest_says_what_it_waits_for_and_stops_on_sigterm(corpus, home):
    holder = _ingest(home, corpus, "--collection", "peps", EMBEDDING_POOL_LIMIT="1")
    holder_worker = None
    try:
        _until(holder, "texts embedded")
        holder_worker = _worker(holder)
        os.kill(holder_worker, signal.SIGSTOP)  # alive, holding the pool's only slot
        waiter = _ingest(home, corpus, "--collection", "small", EMBEDDING_POOL_LIMIT="1")
        lines = _until(waiter, "waiting for a slot", timeout=90)
        assert "waiting for a slot in pool embedding_api (limit 1), held by run" in lines[-1]
        assert f"pid {holder_worker}" in lines[-1]
        started = time.monotonic()
        waiter.send_signal(signal.SIGTERM)
        code, _, err = _finish(waiter, timeout=30)
        assert code == 128 + signal.SIGTERM and time.monotonic() - started < 15
        assert "refinery: stopped by SIGTERM: run" in err and "canceled and its pool slots freed" in err
        _no_traceback(err)
    finally:
        if holder_worker is not None:
            os.kill(holder_worker, signal.SIGCONT)
    code, summary, err = _finish(holder)
    assert code == 0, err[-3000:]
    # The canceled waiter holds nothing: `small` now ingests without waiting.
    code, summary, err = _finish(_ingest(home, corpus, "--collection", "small", EMBEDDING_POOL_LIMIT="1"))
    assert code == 0 and "waiting for a slot" not in err, err[-3000:]


# ------------------------------------------------------------------ connections and postmaster killed

def _terminate_step_connections(home: Path) -> int:
    url = _refinery_url(home)
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = 'refinery' AND pid <> pg_backend_pid()").fetchone()[0]


def test_terminated_connections_during_chunks_and_embeddings_then_an_exact_rerun(corpus, reference, home):
    for phase in ("documents chunked", "texts embedded"):
        proc = _ingest(home, corpus, "--collection", "peps")
        _until(proc, phase)
        assert _terminate_step_connections(home) >= 1
        code, summary, err = _finish(proc)
        assert code == 1, err[-3000:]
        failures = summary["collections"]["peps"]["failures"]
        assert failures and "terminating connection" in " ".join(failures), (failures, err[-2000:])
        _no_traceback(err)
    code, summary, err = _finish(_ingest(home, corpus, "--collection", "peps"))
    assert code == 0, err[-3000:]
    assert _server_stops(home)
    assert _with_server(home, _fingerprint) == reference


@pytest.mark.parametrize("phase", ["documents chunked", "texts embedded"])
def test_postmaster_killed_mid_run_gives_a_message_and_the_rerun_is_exact(corpus, reference, home, phase):
    """One line and nothing else (QA: killed while chunking, the live status publisher's warning
    came first), then an exact rerun."""
    proc = _ingest(home, corpus, "--collection", "peps")
    _until(proc, phase)
    os.kill(_postmaster(home), signal.SIGKILL)
    code, _, err = _finish(proc)
    assert code == 2
    assert "refinery: lost the database connection" in err and "run the same command again" in err, err[-3000:]
    _no_traceback(err)
    _only_its_own_lines(err, "refinery: lost the database connection")
    code, summary, err = _finish(_ingest(home, corpus, "--collection", "peps"))
    assert code == 0, err[-3000:]
    assert "refinery process that died" in err  # the killed run's record is ended too
    assert _server_stops(home)
    assert _with_server(home, _fingerprint) == reference


# ------------------------------------------------------------------ 12.8, 12.9: the embedded server

def test_a_stale_postmaster_pid_never_signals_its_process(home):
    _with_server(home, lambda url: None)  # initialized, then stopped
    assert _server_stops(home)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pgdata = home / "pgdata"
        (pgdata / "postmaster.pid").write_text(  # as a crash leaves it, the pid reused since
            f"{bystander.pid}\n{pgdata}\n{int(time.time())}\n5432\n{pgdata}\n\n  1 2\nready   \n")
        assert _with_server(home, lambda url: psycopg.connect(url).close()) is None
        assert _server_stops(home)
        assert bystander.poll() is None, "the process named by the stale postmaster.pid was signalled"
    finally:
        bystander.kill()


def test_a_long_home_keeps_the_socket_private_and_widens_no_parent(tmp_path):
    base = _new_home()
    base.chmod(0o711)
    outside = base / ("x" * 100)
    outside.mkdir(mode=0o711)
    outside.chmod(0o711)  # others may cross it, not list it
    home = outside / "home"

    def socket_dir(url: str) -> Path:
        with psycopg.connect(url) as conn:
            return Path(conn.execute("SHOW unix_socket_directories").fetchone()[0])

    sockets = _with_server(home, socket_dir)
    assert not str(sockets).startswith(str(home))  # too long for a socket: it lives elsewhere
    private = sockets.parent  # only the server's user may enter it: nobody else reaches the socket
    assert private.stat().st_mode & 0o777 == 0o700, f"{private} is open to other users"
    assert private.lstat().st_uid in (os.getuid(), _uid("pgserver"))
    assert outside.stat().st_mode & 0o777 == 0o711  # not widened to 755
    assert _server_stops(home)


# ------------------------------------------------------------------ 12.12: unreadable input

@pytest.mark.parametrize("content, message", [
    (b"questions:\n  - question: caf\xe9\n", "is not UTF-8 text"),
    (b'questions:\n  - {question: "a\\0b", documents: [x.md], collection: c}\n', "contains a NUL character"),
])
def test_an_unreadable_questions_file_gets_a_message(tmp_path, content, message):
    path = tmp_path / "questions.yaml"
    path.write_bytes(content)
    with pytest.raises(QuestionsError, match=message):
        load_questions(path, {("c", "x.md")})


LOAD_QUESTIONS_UNDER_1GB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from dagster_project.core.search.evaluation import QuestionsError, load_questions
try:
    load_questions(sys.argv[1], set())
except QuestionsError as exc:
    print(exc)
"""


def test_a_questions_file_whose_entry_is_an_alias_bomb_gets_a_short_message(tmp_path):
    """QA: 464 bytes whose first entry is a list of 9^8 strings through nested YAML aliases. The
    load shares the lists (instant); the error message once printed the entry whole and never
    came back. Loaded in a process limited to 1 GB of address space, with a time limit."""
    text = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for level in range(1, 10):
        text += f"l{level}: &l{level} [{','.join(['*' + ('a' if level == 1 else f'l{level - 1}')] * 9)}]\n"
    path = tmp_path / "questions.yaml"
    path.write_text(text + "questions: *l9\n")
    assert path.stat().st_size < 500
    result = subprocess.run([sys.executable, "-c", LOAD_QUESTIONS_UNDER_1GB, str(path)], capture_output=True,
                            text=True, timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout.strip()
    assert "question 1: each entry needs `question: <text>`" in said and len(said) < 400, said[:1000]
