"""The `refinery` command: ingest through Dagster, search, status, the database URL, the UI, tenants and
the search API."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: the supervisor of a job command needs none of them (the child
    # imports them all again).
    from . import (
        db,
        dev,
        feedback,
        ingest,
        model,
        refine,
        search,
        serve,
        snapshot,
        tenant,
    )

    parser = argparse.ArgumentParser(prog="refinery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (ingest, refine, search, feedback, snapshot, model, db, dev, tenant, serve):
        group.add_commands(sub)
    return parser


# Commands that run Dagster jobs in process. Dagster's helper processes of a run (the tails of its
# captured logs and their watchers) join this process's group, so a terminal's Ctrl-C would reach
# each of them and each would print a traceback. These commands run in a child in its own session
# instead, and this process passes Ctrl-C (or SIGTERM) to that child alone: the child cancels its
# run (_execute_watched), its helpers stop with it, and it prints the one line of main().
JOB_COMMANDS = ("ingest", "refine", "snapshot")
SUPERVISED = "REFINERY_SUPERVISED"


def refinery_command(*argv: str) -> list[str]:
    """The command line of a `refinery` child process. `-P`: `python -m` would put the current
    folder first on sys.path, so run from a folder that holds another `dagster_project/` (an old
    clone, a worktree) the child and its parse workers imported that copy: the index flipped
    between parser versions by the folder it was run from (QA). The flag passes on to the workers."""
    return [sys.executable, "-P", "-m", "dagster_project.cli", *argv]


def _run_supervised(argv: list[str]) -> int:
    import signal

    child: list[subprocess.Popen] = []

    def forward(signum, _frame) -> None:
        if child:
            try:
                os.kill(child[0].pid, signum)
            except ProcessLookupError:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        child.append(subprocess.Popen(refinery_command(*argv),
                                      env={**os.environ, SUPERVISED: str(os.getpid())}, start_new_session=True))
        while True:
            try:
                return child[0].wait()
            except KeyboardInterrupt:  # a signal between the handler swap and Popen
                forward(signal.SIGINT, None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _die_with_supervisor(supervisor: int) -> None:
    """A supervised command dies with its supervisor (killed, it is killed too, as before)."""
    import signal

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it died before that
        os._exit(128 + signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The supervisor of a job command imports nothing beyond the standard library and parses
    # nothing: the child does both (and reports a bad argument), so they are paid once.
    if argv[:1] and argv[0] in JOB_COMMANDS and not os.environ.get(SUPERVISED):
        return _run_supervised(argv)
    from .common import USER_ERRORS, CliError, Interrupted, lost_database

    args = build_parser().parse_args(argv)
    if args.command in JOB_COMMANDS:
        _die_with_supervisor(int(os.environ[SUPERVISED]))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command in JOB_COMMANDS:
        from .quiet import drop_reconnect_chatter

        drop_reconnect_chatter()
    try:
        return args.func(args)
    except (Interrupted, KeyboardInterrupt) as exc:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn this line into a traceback
        what = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(f"refinery: {what}; {_kept_after_interrupt(args.command)}; run `refinery {args.command}` again "
              "to finish the job (what is stored is not redone)", file=sys.stderr)
        _last_line_said(args.command)
        return getattr(exc, "exit_code", 130)
    except (CliError, *USER_ERRORS) as exc:
        print(f"refinery: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except Exception as exc:
        reason = lost_database(exc)
        if reason is None:
            raise
        print(f"refinery: lost the database connection ({reason}). Nothing stored is lost: once the server "
              "is back (the embedded one starts again by itself), run the same command again.", file=sys.stderr)
        _last_line_said(args.command)
        return 2


def _last_line_said(command: str) -> None:
    if command in JOB_COMMANDS:
        from .quiet import fall_silent

        fall_silent()


def _kept_after_interrupt(command: str) -> str:
    """What the stores hold now, for the line a Ctrl-C prints: every batch committed before it is kept."""
    url = os.environ.get("DATABASE_URL")
    if command not in ("ingest", "refine") or not url:
        return "everything already stored is kept"
    from ..core.db.store import VectorStore

    try:
        store = VectorStore(url)
        try:
            active = store.active_model_key()
            totals = store.status(None if active is None else store.model_id_by_key(active))
        finally:
            store.close()
    except Exception:  # the line must come out even if the database went away with the interrupt
        return "everything already stored is kept"
    if command == "refine":
        return f"kept {sum(c['refined'] for c in totals.values())} refined documents"
    return (f"kept {sum(c['documents'] for c in totals.values())} documents, "
            f"{sum(c['chunks'] for c in totals.values())} chunks and "
            f"{sum(c['vectors'] for c in totals.values())} vectors")
