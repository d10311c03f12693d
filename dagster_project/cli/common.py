"""What every command shares: settings and databases made ready, output as text or JSON, the
errors a user can fix, and running a Dagster job in process with its progress and signals."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..core.db.migrations import MigrationError
from ..core.db.pg import (
    DatabaseSetupError,
    DatabaseUrls,
    _passwords,
    check_pgvector,
    check_reachable,
    export_urls,
    mask_url,
    resolve_database_urls,
)
from ..core.db.tenants import TenantError
from ..core.embed.base import EmbeddingError
from ..core.ingest.corpus import ManifestError
from ..core.metrics.monitoring import MonitoringError
from ..core.search.searcher import SearchError
from ..core.settings import PROJECT_ROOT, Settings

# The run's events are stored in the instance (and shown in the UI); the terminal gets a summary.
# Step failures come back in the summary as one line each, not as Dagster's tracebacks.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
USER_ERRORS = (ManifestError, DatabaseSetupError, MigrationError, EmbeddingError, MonitoringError, TenantError,
               SearchError)


class CliError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


class Interrupted(CliError):
    """SIGINT or SIGTERM during a run: the run was ended and its slots freed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def load_settings(args) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings.from_env(corpus_manifest=getattr(args, "manifest", None))
    except ValidationError as exc:
        raise CliError(f"bad setting: {setting_problems(exc)}") from None
    except ValueError as exc:
        raise CliError(f"bad setting: {exc}") from None


def setting_problems(exc) -> str:
    """A settings ValidationError on one line: each problem with its variable, without pydantic's
    echo of the input (which would print the start of DATABASE_URL or OPENAI_API_KEY)."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        variable = "_".join(str(part) for part in error["loc"][:1]).upper()
        problems.append(f"{variable}: {message}" if variable and variable not in message else message)
    return "; ".join(problems)


def prepare_databases(settings: Settings) -> DatabaseUrls:
    """Databases up (embedded unless DATABASE_URL; Dagster's on DAGSTER_PG_URL when set), their
    URLs and the manifest in the environment, and DAGSTER_HOME holding the project's dagster.yaml."""
    urls = resolve_database_urls(settings)
    if not urls.embedded:
        check_reachable(urls.vector_store, "vector store (DATABASE_URL)")
        check_pgvector(urls.vector_store)  # the embedded server ships it
    if settings.dagster_pg_url is not None and urls.dagster != urls.vector_store:
        check_reachable(urls.dagster, "Dagster storage (DAGSTER_PG_URL)")
    export_urls(urls)
    os.environ["CORPUS_MANIFEST"] = str(Path(settings.corpus_manifest).resolve())
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str((settings.refinery_home / "dagster_home").resolve())
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() or (home / "dagster.yaml").read_bytes() != (PROJECT_ROOT / "dagster.yaml").read_bytes():
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    return urls


def job_collections(project, wanted: list[str] | None) -> list[str]:
    """The collections a job command runs on: those named by --collection (repeatable), in the
    order given, else every collection of the manifest."""
    if not wanted:
        return sorted(project.manifest.collections)
    return list(dict.fromkeys(project.manifest.collection(name).name for name in wanted))


def check_manifest_on_server(project, urls: DatabaseUrls) -> None:
    """What only the database can tell about the manifest (its collections' text search
    configurations), checked by the job commands, dry runs too, before anything is written."""
    from ..core.db.store import VectorStore
    from ..core.ingest.corpus import check_text_search_configs

    store = VectorStore(urls.vector_store)
    try:
        check_text_search_configs(project.manifest, sorted(project.manifest.collections),
                                  project.settings.text_search_config, store)
    except ManifestError:
        raise
    except ValueError as exc:
        raise CliError(f"bad setting: {exc}") from None
    finally:
        store.close()


class Once(argparse.Action):
    """An option that takes one value: given twice, it is refused instead of the last one silently winning."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} was given twice: this command takes one")
        setattr(namespace, self.dest, values)


def emit(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


# Control characters, line and paragraph separators, and bidi overrides: in a file name or a title
# they would break a line of text output or make it lie (a newline starts a fake result).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` for one line of text output, with the characters that would break it escaped as in a
    Python string (\\n, \\x1b, \\u202e); --json keeps the text as it is."""
    return _UNPRINTABLE.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def run_job(project, job_name: str, names: list[str | None], run_config: dict | None = None) -> dict[str, dict]:
    """Run a job once per partition (collection or day; None for an unpartitioned job) against
    the instance the UI reads, with the pool limits from the settings and the steps' progress on
    stderr."""

    from ..core.progress import ProgressDisplay, watching
    from ..definitions import build_definitions
    from ..pools import apply_pool_limits, dead_run_line, release_dead_runs

    job = build_definitions(project).resolve_job_def(job_name)
    runs: dict[str, dict] = {}
    display = ProgressDisplay(sys.stderr)
    with dagster_instance() as instance, watching(display):
        apply_pool_limits(instance, project.settings)
        for dead in release_dead_runs(instance):
            print(f"refinery: {dead_run_line(dead, 'a refinery process')}, its pool slots freed", file=sys.stderr,
                  flush=True)
        for name in names:
            display.label = name or ""
            started = time.perf_counter()
            try:
                result = _execute_watched(instance, job, name, {**QUIET_RUN, **(run_config or {})}, display)
            finally:
                display.close()
            runs[name] = {
                "run_id": result.run_id, "success": result.success,
                "seconds": round(time.perf_counter() - started, 2),
                "steps": {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                          for e in result.get_asset_materialization_events()},
                "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()},
                "check_details": {e.check_name: {"passed": e.passed, "severity": e.severity.value,
                                                 **{k: v.value for k, v in e.metadata.items()
                                                    if k in ("value", "status", "thresholds")}}
                                  for e in result.get_asset_check_evaluations()},
                "failures": [_failure_message(ev) for ev in result.all_events if ev.is_step_failure],
            }
    return runs


def _execute_watched(instance, job, partition_key: str | None, run_config: dict, display):
    """`execute_in_process` in a worker thread, so that this (main) thread keeps the signals:
    Dagster's in-process executor captures SIGINT/SIGTERM and never looks at them while a step
    waits for a pool slot. Meanwhile, says on stderr what the run waits for; on a signal, ends
    the run as canceled, frees its slots and raises Interrupted (the worker is a daemon thread:
    its open transactions roll back when the process exits)."""
    import signal
    import threading

    from dagster._core.utils import make_new_run_id

    from ..core.stopping import STOPPING
    from ..pools import process_tags, waiting_for

    run_id, outcome, received = make_new_run_id(), {}, []
    STOPPING.clear()

    def work() -> None:
        try:
            outcome["result"] = job.execute_in_process(partition_key=partition_key, instance=instance,
                                                       raise_on_error=False, run_config=run_config,
                                                       run_id=run_id, tags=process_tags())
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    def stopping(signum, _frame) -> None:
        received.append(signum)
        STOPPING.set()  # at once: the refine step sends no new request (core/stopping.py)

    previous = {s: signal.signal(s, stopping) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = threading.Thread(target=work, name=f"run-{run_id[:8]}", daemon=True)
        worker.start()
        said, pools = None, job.graph.pools  # a job without pools never waits for a slot
        while worker.is_alive() and not received:
            worker.join(1.0)
            if worker.is_alive() and not received and pools:
                line = quietly(waiting_for, instance, run_id, pools)
                if line and line != said:
                    display.close()
                    print(f"refinery: {line}", file=sys.stderr, flush=True)
                said = line or said
        if received:
            name = signal.Signals(received[0]).name
            quietly(_cancel_run, instance, run_id, f"stopped by {name}")
            raise Interrupted(f"stopped by {name}: run {run_id[:8]} canceled and its pool slots freed",
                              128 + received[0])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _cancel_run(instance, run_id: str, reason: str) -> None:
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceled(run, message=f"{reason} (refinery pid {os.getpid()})")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def quietly(func, *args):
    """A best-effort call while a run is going (a look at the pools, canceling on a signal): a
    database error must not hide the run's own outcome."""
    try:
        return func(*args)
    except Exception as exc:
        logging.getLogger(__name__).debug("%s failed: %s", func.__name__, exc)
        return None


@contextmanager
def dagster_instance():
    """The instance ($DAGSTER_HOME), or a CliError naming its storage when it cannot be reached."""
    import dagster as dg

    try:
        instance = dg.DagsterInstance.get()
    except Exception as exc:
        reason = lost_database(exc)
        if reason is None:
            raise
        raise CliError(f"cannot reach the Dagster storage (DAGSTER_PG_URL) at "
                       f"{mask_url(os.environ.get('DAGSTER_PG_URL', '?'))}: {reason}. "
                       "Check that the server runs and the URL is right.") from None
    with instance:
        yield instance


def lost_database(exc: BaseException | None) -> str | None:
    """The first line of a connection error anywhere in the exception's chain (psycopg, or
    psycopg2 under SQLAlchemy and Dagster), passwords masked; None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper: the driver's error
        module, name = type(exc).__module__.split(".")[0], type(exc).__name__
        if module in ("psycopg", "psycopg2") and name in ("OperationalError", "InterfaceError", "AdminShutdown",
                                                           "ConnectionFailure", "ConnectionException",
                                                           "CrashShutdown", "CannotConnectNow"):
            reason = (str(exc).strip().splitlines() or [name])[0]
            for url in (os.environ.get("DATABASE_URL"), os.environ.get("DAGSTER_PG_URL")):
                for secret in _passwords(url) if url else []:
                    reason = reason.replace(secret, "***")
            return reason
        exc = exc.__cause__ or exc.__context__
    return None


def _failure_message(event) -> str:
    """A step's failure as its author wrote it (a dg.Failure's description), else Dagster's message."""
    error = getattr(event.event_specific_data, "error", None)
    user = getattr(event.event_specific_data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description
    while error is not None and error.cause is not None:  # Dagster's wrapper: the step's own error
        error = error.cause
    return error.message.strip() if error is not None and error.message else event.message


def all_passed(runs: dict[str, dict]) -> bool:
    return all(r["success"] and all(r["checks"].values()) for r in runs.values())
