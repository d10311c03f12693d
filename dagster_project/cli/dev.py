"""`refinery dev`: the embedded PostgreSQL and the Dagster UI on this code location, stopped
together."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..core.settings import PROJECT_ROOT
from .common import CliError, load_settings, prepare_databases

# Seconds the processes of `dg dev` get to stop after it exits, then after SIGTERM, before
# what is left is killed.
DEV_STOP_GRACE = (60.0, 15.0)


def cmd_dev(args) -> int:
    import dagster as dg

    from ..pools import apply_pool_limits

    settings = load_settings(args)
    prepare_databases(settings)
    with dg.DagsterInstance.get() as instance:
        apply_pool_limits(instance, settings)
    # `dg dev` (Dagster's current tooling; `dagster dev` is superseded) on the same workspace.
    command = [_dg_executable(), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
               "-h", args.host, "-p", str(args.port)]
    print(f"Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops it and the embedded database)", flush=True)
    return _run_until_stopped(command, cwd=os.environ["DAGSTER_HOME"])


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
        code = proc.wait()
        # However it ended, its webserver, daemon and code server may still be stopping.
        for grace, escalation in zip(DEV_STOP_GRACE, (signal.SIGTERM, signal.SIGKILL)):
            if _wait_group_gone(proc.pid, grace):
                break
            _signal_group(proc.pid, escalation)
        _wait_group_gone(proc.pid, 5.0)
        return 0 if stopping else code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
