"""Ends the fork server of the ingest pools, and every process it forks, soon after the process that
started them dies, whatever killed it (SIGKILL included). Imported only by the fork server
(FORKSERVER_PRELOAD)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

POLL_SECONDS = 0.5

# Why this is needed: the fork server hands its own "alive" pipe to each worker, so it lives as long as
# any worker does; a worker of a dead parent waits forever on a queue whose writer it holds itself (or
# on a full result pipe), and the resource tracker lives as long as any of them. Nothing ends the set.


def _in_fork_server() -> bool:
    return any("multiprocessing.forkserver import main" in arg for arg in getattr(sys, "orig_argv", ()))


def _watch_parent() -> None:
    # A thread on getppid(), not PR_SET_PDEATHSIG: that fires when the *thread* that started the fork
    # server ends, and Dagster starts it from a step's thread.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="refinery-parent-watch", daemon=True).start()


def _die_with_fork_server() -> None:
    # The fork server forks from its main thread, which lives as long as it does, so the kernel's
    # parent-death signal is exact here and needs no thread (one would not run while native code
    # holds the GIL).
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != _FORK_SERVER:  # it died before the line above
        os._exit(128 + signal.SIGKILL)


_FORK_SERVER = os.getpid()

if _in_fork_server() and sys.platform.startswith("linux"):
    _watch_parent()
    os.register_at_fork(after_in_child=_die_with_fork_server)
