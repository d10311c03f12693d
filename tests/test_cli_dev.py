"""`refinery dev` stops cleanly on Ctrl-C: Dagster's webserver, daemon and code server exit
first, then the embedded PostgreSQL, so nothing loses its database connection on the way out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST, command_line
from tests.dev_server import STARTUP_TIMEOUT, free_port

STOP_TIMEOUT = 45
LOST_CONNECTION = ("server closed the connection unexpectedly", "terminating connection",
                   "connection refused", "OperationalError", "could not connect", "Traceback")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (Dagster's processes carry DAGSTER_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and entry.name.isdigit() and int(entry.name) != os.getpid():
            found.append(cmdline[:200])
    return found


def _launch_dev(env: dict, port: int, log) -> subprocess.Popen:
    """`refinery dev` with its output in `log`, in its own session like a shell's foreground job
    (Ctrl-C is SIGINT to that process group)."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "dev", "--port", str(port)],
                                env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_refinery_dev_stops_dagster_first_then_the_embedded_database(tmp_path, how):
    """Ctrl-C in a terminal (SIGINT to the foreground process group) or SIGTERM to `refinery`
    alone (a service manager, `kill`): either way everything stops, PostgreSQL last."""
    home, port = tmp_path / "home", free_port()
    env = dict(os.environ, REFINERY_HOME=str(home), EMBED_PROVIDER="hash", CORPUS_MANIFEST=str(SAMPLE_MANIFEST),
               AUTOMATION_SENSOR_DEFAULT="stopped", PYTHONWARNINGS="ignore")
    for name in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    log = tmp_path / "dev.log"
    dev = _launch_dev(env, port, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers(f"http://127.0.0.1:{port}/server_info"):
            if dev.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"refinery dev did not come up:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.5)
        time.sleep(2)  # the daemon and the code server are polling the database by now

        if how == "ctrl-c":
            os.killpg(dev.pid, signal.SIGINT)
        else:
            dev.send_signal(signal.SIGTERM)
        try:
            code = dev.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        time.sleep(1)  # anything left behind would now complain about its database
        output = log.read_text()
        left = _processes_under(home)
    finally:
        _kill_all(dev, home)
    assert code == 0, output[-3000:]
    assert not [s for s in LOST_CONNECTION if s.lower() in output.lower()], output[-3000:]
    assert left == []  # webserver, daemon, code server and PostgreSQL all gone
    assert not (home / "pgdata" / "postmaster.pid").exists()


def _kill_all(dev: subprocess.Popen, home: Path) -> None:
    """Whatever a failed stop left behind: the group, anything naming `home`, and PostgreSQL."""
    try:
        os.killpg(dev.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    dev.wait()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(home) in cmdline:  # PostgreSQL: SIGINT is its fast shutdown
                os.kill(int(entry.name), signal.SIGINT if "postgres" in cmdline.split()[0] else signal.SIGKILL)
        except (OSError, ProcessLookupError, IndexError):
            continue


def test_the_manifest_watcher_reloads_on_a_change_of_meaning_only(tmp_path, capsys):
    """Against a stand-in for the webserver's GraphQL endpoint: a comment changes nothing, an edit
    that breaks the manifest is reported once and reloads nothing (the last good one stays
    loaded), and an added collection reloads the code location once."""
    import json
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dagster_project.cli.dev import ManifestWatcher

    asked: list[dict] = []

    class GraphQL(BaseHTTPRequestHandler):
        def do_POST(self):
            asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"data": {"reloadRepositoryLocation": {"__typename": "WorkspaceLocationEntry"}}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), GraphQL)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        shutil.copytree(SAMPLE_MANIFEST.parent, tmp_path / "examples")
        manifest = tmp_path / "examples" / SAMPLE_MANIFEST.name
        good = manifest.read_text()
        watcher = ManifestWatcher(manifest, f"http://127.0.0.1:{server.server_port}/graphql")
        assert not watcher.check()
        manifest.write_text(good + "\n# a comment\n")
        assert not watcher.check() and asked == []
        manifest.write_text(good + "  broken: [\n")
        assert not watcher.check() and not watcher.check()
        assert capsys.readouterr().err.count("is not usable") == 1
        (tmp_path / "examples" / "more").mkdir()
        manifest.write_text(good + "  more:\n    root: more\n")
        down = ManifestWatcher(manifest, f"http://127.0.0.1:{free_port()}/graphql")  # webserver not up yet
        down.loaded = watcher.loaded
        assert not down.check() and not down.check()
        assert capsys.readouterr().err.count("could not reload the code location yet") == 1
        assert watcher.check() and not watcher.check()
        assert [a["variables"] for a in asked] == [{"name": "corpus_refinery"}]
    finally:
        server.shutdown()


@pytest.mark.parametrize("component, databases", [("webserver", "embedded"), ("daemon", "DATABASE_URL")])
def test_refinery_dev_fails_with_one_line_when_a_dagster_process_dies(tmp_path, request, component, databases):
    """A supervisor restarts on failure: a webserver or daemon killed with SIGKILL makes Dagster
    stop, and `refinery dev` then exits 1 with one line naming what died (dg dev itself exits 0).
    With DATABASE_URL set, the startup line does not speak of an embedded database."""
    import psutil

    home, port = tmp_path / "home", free_port()
    env = dict(os.environ, REFINERY_HOME=str(home), EMBED_PROVIDER="hash", CORPUS_MANIFEST=str(SAMPLE_MANIFEST),
               AUTOMATION_SENSOR_DEFAULT="stopped", PYTHONWARNINGS="ignore")
    for name in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    if databases == "DATABASE_URL":
        from tests.conftest import new_database

        server = request.getfixturevalue("pg_server")
        env.update(DATABASE_URL=new_database(server), DAGSTER_PG_URL=new_database(server, template="template1"))
    marks = {"webserver": "dagster_webserver", "daemon": "dagster._daemon run"}[component]
    log = tmp_path / "dev.log"
    dev = _launch_dev(env, port, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        victim = None
        while victim is None or not _answers(f"http://127.0.0.1:{port}/server_info"):
            if dev.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"refinery dev did not come up:\n{log.read_text()[-3000:]}", pytrace=False)
            victim = next((p for p in psutil.Process(dev.pid).children(recursive=True)
                           if marks in command_line(p)), None)
            time.sleep(0.5)
        time.sleep(2)
        victim.kill()
        try:
            code = dev.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        output = log.read_text()
    finally:
        _kill_all(dev, home)
    assert code == 1, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("refinery dev:")]
    assert said == [(f"refinery dev: the Dagster {component} (pid {victim.pid}) died unexpectedly, so Dagster "
                     "stopped; exit code 1 (restart refinery dev)")], output[-3000:]
    first = output.splitlines()[0]
    assert first.startswith(f"Dagster UI on http://127.0.0.1:{port}")
    assert ("embedded database" in first) == (databases == "embedded"), first
