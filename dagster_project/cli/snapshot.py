"""`refinery snapshot`: one day's metric snapshot and its threshold checks, through Dagster."""

from __future__ import annotations

from datetime import date, datetime, timezone

from .common import CliError, emit, load_settings, prepare_databases, run_job


def cmd_snapshot(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.metrics.snapshots import read_snapshot
    from ..definitions import SNAPSHOT_JOB
    from ..project import Project

    settings = load_settings(args)
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
    urls = prepare_databases(settings)
    run = run_job(project, SNAPSHOT_JOB, [day.isoformat()])[day.isoformat()]
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
    emit(out, args.json, "\n".join(lines))
    critical = any(not c["passed"] and c["severity"] == "ERROR" for c in run["check_details"].values())
    return 0 if run["success"] and not critical else 1


def add_commands(sub) -> None:
    p = sub.add_parser("snapshot", help="materialize one day's metric snapshot and its threshold checks")
    p.add_argument("--day", help="YYYY-MM-DD, a UTC day (default: today)")
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_snapshot)
