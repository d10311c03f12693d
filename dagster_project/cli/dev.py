"""`refinery dev`: the embedded PostgreSQL and the Dagster UI on this code location, stopped
together."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..core.settings import PROJECT_ROOT
from .common import CliError, load_settings, prepare_databases

# Seconds the processes of `dg dev` get to stop after it exits, then after SIGTERM, before
# what is left is killed.
DEV_STOP_GRACE = (60.0, 15.0)
MANIFEST_POLL_SECONDS = 5.0
LOCATION_NAME = "corpus_refinery"  # workspace.yaml
RELOAD_LOCATION = """mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename ... on PythonError { message } } }"""
LOCATION_STATE = """{ workspaceOrError { ... on Workspace { locationEntries { name
    locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
# The code location is checked this often; unreachable twice in a row, it is reloaded.
LOCATION_CHECK_SECONDS = 15.0


def cmd_dev(args) -> int:
    import dagster as dg

    from ..pools import apply_pool_limits, dead_run_line, release_dead_runs

    settings = load_settings(args)
    urls = prepare_databases(settings)
    with dg.DagsterInstance.get() as instance:
        apply_pool_limits(instance, settings)
        # Runs a killed `refinery dev` left STARTED (their worker died with it) would hold their
        # collection's place in the queue for good.
        for dead in release_dead_runs(instance):
            print(f"refinery dev: {dead_run_line(dead)}", file=sys.stderr, flush=True)
    # `dg dev` (Dagster's current tooling; `dagster dev` is superseded) on the same workspace.
    command = [_dg_executable(), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
               "-h", args.host, "-p", str(args.port)]
    stops = "it and the embedded database" if urls.embedded else "it (the databases are your servers')"
    print(f"Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops {stops})", flush=True)
    watcher = ManifestWatcher(Path(settings.corpus_manifest), f"http://{args.host}:{args.port}/graphql")
    threading.Thread(target=watcher.watch_code_server, name="code-server-watcher", daemon=True).start()
    threading.Thread(target=watcher.run, name="manifest-watcher", daemon=True).start()
    return _run_until_stopped(command, cwd=os.environ["DAGSTER_HOME"])


class ManifestWatcher:
    """Reloads the code location when corpus.yaml changes what it says: the collections (the
    partitions) and their settings are read when the code location loads, so without a reload a
    collection added while `refinery dev` runs would never be built, and runs would use the
    settings loaded then. An edit that leaves the manifest unusable is reported and waits for the
    next one; the loaded code location keeps running meanwhile. A problem is printed once, not
    every poll. Also reloads it when its code server died (watch_code_server)."""

    def __init__(self, manifest: Path, graphql_url: str) -> None:
        self.manifest, self.graphql_url = manifest, graphql_url
        self.reported: str | None = None  # the last problem printed, not repeated every poll
        self.loaded = self._read()

    def _read(self) -> str | None:
        from ..core.ingest.corpus import ManifestError, load_manifest

        try:
            return load_manifest(self.manifest).model_dump_json()
        except (ManifestError, OSError) as exc:
            self._report(f"{self.manifest.name} is not usable, the code location keeps the last good one: {exc}")
            return None

    def _report(self, message: str) -> None:
        if message != self.reported:
            self.reported = message
            print(f"refinery dev: {message}", file=sys.stderr, flush=True)

    def check(self) -> bool:
        """Reload if the manifest now says something else; True if a reload was asked for."""
        current = self._read()
        if current is None or current == self.loaded:
            return False
        try:
            self._reload()
        except (OSError, ValueError, KeyError, TypeError) as exc:  # not up yet, or stopping: next time
            self._report(f"could not reload the code location yet (tried again every {MANIFEST_POLL_SECONDS:.0f} s): "
                         f"{type(exc).__name__}: {exc}")
            return False
        self.loaded, self.reported = current, None
        print(f"refinery dev: {self.manifest.name} changed: code location reloaded", file=sys.stderr, flush=True)
        return True

    def watch_code_server(self) -> None:
        unreachable = 0
        while True:
            time.sleep(LOCATION_CHECK_SECONDS)
            unreachable = unreachable + 1 if self.code_server_unreachable() else 0
            if unreachable >= 2:
                unreachable = 0
                self.restart_code_server()

    def code_server_unreachable(self) -> bool:
        """Whether the code location's server is gone (killed, out of memory). `dg dev` starts a
        new one only on a reload, so until then no run starts and no sensor or schedule ticks,
        the automation and the dead-run sensor included (QA). A load error of the code itself is
        not this: reloading would not mend it."""
        try:
            entries = self._graphql(LOCATION_STATE, {})["workspaceOrError"].get("locationEntries") or []
        except (OSError, ValueError, KeyError, TypeError):  # the webserver is not up, or stopping
            return False
        return any(e["name"] == LOCATION_NAME and (e["locationOrLoadError"] or {}).get("__typename") == "PythonError"
                   and "DagsterUserCodeUnreachableError" in e["locationOrLoadError"].get("message", "") for e in entries)

    def restart_code_server(self) -> None:
        try:
            self._reload()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._report(f"the code server is unreachable and could not be restarted yet: {type(exc).__name__}: {exc}")
            return
        print("refinery dev: the code server was unreachable (it died): started a new one; runs its death left in "
              "progress are marked failed within a minute", file=sys.stderr, flush=True)

    def _reload(self) -> None:
        result = self._graphql(RELOAD_LOCATION, {"name": LOCATION_NAME})["reloadRepositoryLocation"]
        if result["__typename"] != "WorkspaceLocationEntry":
            raise ValueError(f"{result['__typename']} {result.get('message', '')}".strip())

    def _graphql(self, query: str, variables: dict) -> dict:
        import json
        import urllib.request

        request = urllib.request.Request(self.graphql_url, headers={"Content-Type": "application/json"},
                                         data=json.dumps({"query": query, "variables": variables}).encode())
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["data"]

    def run(self) -> None:
        while True:
            time.sleep(MANIFEST_POLL_SECONDS)
            self.check()


def _dg_executable() -> str:
    """The `dg` of this interpreter's environment (dagster-dg-cli), else the one on PATH."""
    beside = Path(sys.executable).with_name("dg")
    found = str(beside) if beside.exists() else shutil.which("dg")
    if found is None:
        raise CliError("`dg` (the dagster-dg-cli package) is not installed: pip install -e .")
    return found


def _run_until_stopped(command: list[str], cwd: str) -> int:
    """Run `command` in its own process group and stop it on Ctrl-C or SIGTERM: SIGINT goes to
    the whole group (dg dev, its webserver, daemon and code server), a further signal or the
    grace period escalates, and this returns only once every process of the group is gone.
    This process keeps the embedded PostgreSQL alive, so it stops last, never under Dagster."""
    import signal

    stopping: list[int] = []
    proc: subprocess.Popen | None = None

    def forward(signum, _frame) -> None:
        stopping.append(signum)
        if proc is not None:  # Ctrl-C once: SIGINT; twice: SIGTERM; more: SIGKILL
            _signal_group(proc.pid, (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[min(len(stopping), 3) - 1])

    # Handlers before the child starts: a handled signal is reset to its default in the child,
    # so `dg dev` takes Ctrl-C even where this process was started with SIGINT ignored.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Run from DAGSTER_HOME: a dagster.yaml in the working directory makes Dagster warn that
        # it is ignored (the copy in DAGSTER_HOME is the one used).
        proc = subprocess.Popen(command, cwd=cwd, process_group=0)
        if stopping:  # a signal came while it started
            _signal_group(proc.pid, signal.SIGINT)
        died = _watch_components(proc, stopping)
        code = proc.wait()
        # However it ended, its webserver, daemon and code server may still be stopping.
        for grace, escalation in zip(DEV_STOP_GRACE, (signal.SIGTERM, signal.SIGKILL)):
            if _wait_group_gone(proc.pid, grace):
                break
            _signal_group(proc.pid, escalation)
        _wait_group_gone(proc.pid, 5.0)
        if stopping:
            return 0
        if died or code != 0:
            # dg dev exits 0 after one of its processes died: a supervisor must see a failure.
            what = died or (f"dg dev (killed by signal {-code})" if code < 0 else f"dg dev (exit code {code})")
            print(f"refinery dev: {what} died unexpectedly, so Dagster stopped; exit code 1 (restart refinery dev)",
                  file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# The processes of `dg dev` whose death stops Dagster, by what their command line runs.
COMPONENTS = {"the Dagster webserver": ("dagster_webserver", "dagster-webserver"),
              "the Dagster daemon": ("dagster._daemon run", "dagster-daemon run")}
WATCH_SECONDS = 0.5  # a scan of the process table takes a few ms


def _watch_components(proc: subprocess.Popen, stopping: list[int]) -> str | None:
    """Wait for `proc` to exit; returns the component that vanished first while no stop was asked
    for (e.g. "the Dagster webserver (pid 123)"), else None. Once one dies, dg dev stops the
    others: on Linux a pidfd per component tells which went first, the moment it goes (without
    one, a poll every WATCH_SECONDS)."""
    import select

    import psutil

    watched: dict[int, str] = {}  # pid -> component
    handles: dict[int, int] = {}  # pidfd -> pid
    died = None
    try:
        while proc.poll() is None:
            if len(watched) < len(COMPONENTS):  # not all up yet
                for pid, name in _new_components(proc.pid, watched).items():
                    watched[pid] = name
                    try:
                        handles[os.pidfd_open(pid)] = pid
                    except (AttributeError, OSError):  # not Linux, or already gone
                        pass
            if handles:
                ready = select.select(list(handles), [], [], WATCH_SECONDS)[0]
                gone = [handles.pop(fd) for fd in ready]
                for fd in ready:
                    os.close(fd)
            else:
                time.sleep(WATCH_SECONDS)
                gone = []
            polled = set(watched) - set(handles.values()) - set(gone)  # those without a pidfd
            gone += [pid for pid in polled if not psutil.pid_exists(pid)]
            if gone and died is None and not stopping:
                died = f"{watched[gone[0]]} (pid {gone[0]})"
            for pid in gone:
                watched.pop(pid, None)
    finally:
        for fd in handles:
            os.close(fd)
    return died


def _new_components(root: int, known: dict[int, str]) -> dict[int, str]:
    """The webserver and daemon processes under `root` not `known` yet (pid -> name). Every other
    child is read again next time: one read between its fork and its exec shows its parent's
    command line."""
    import psutil

    found = {}
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        if child.pid in known:
            continue
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        name = next((n for n, marks in COMPONENTS.items() if any(m in command for m in marks)), None)
        if name is not None:
            found[child.pid] = name
    return found


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def add_commands(sub) -> None:
    p = sub.add_parser("dev", help="embedded PostgreSQL + the Dagster UI on this code location")
    p.add_argument("--manifest")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_dev)
