"""`refinery feedback add | list | summary`: people's judgements of refined documents."""

from __future__ import annotations

from datetime import timezone

from .common import CliError, Once, emit, load_settings, prepare_databases


def cmd_feedback_add(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.feedback.events import (
        Feedback,
        FeedbackError,
        check,
        list_feedback,
        parse_rating,
        parse_tags,
        record_feedback,
        resolve_document,
    )
    from ..project import Project

    settings = load_settings(args)
    project = Project.load(settings)
    if args.collection:
        project.manifest.collection(args.collection)  # names the known ones if unknown
    try:
        feedback = Feedback(rating=parse_rating(args.rating), score=args.score, tags=parse_tags(args.tags),
                            comment=(args.reason or "").strip() or None, author=args.author or _user())
        check(feedback)  # before any database starts
    except FeedbackError as exc:
        raise CliError(str(exc)) from None
    urls = prepare_databases(settings)
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
    emit(event, args.json, text)
    return 0


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment: the event is anonymous
        return None


def cmd_feedback_list(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.feedback.events import SOURCES, FeedbackError, list_feedback, resolve_document
    from ..project import Project

    settings = load_settings(args)
    project = Project.load(settings)
    if args.collection:
        project.manifest.collection(args.collection)
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, not {args.limit}")
    if args.source is not None and args.source not in SOURCES:
        raise CliError(f"--source must be one of {', '.join(SOURCES)}, not {args.source!r}")
    urls = prepare_databases(settings)
    store = VectorStore(urls.vector_store)
    try:
        collection, path = args.collection, None
        if args.document:
            roots = {name: c.root for name, c in project.manifest.collections.items()}
            collection, path = resolve_document(store, args.document, args.collection, roots, with_feedback_log=True)
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
    emit(events, args.json, "\n".join(lines) if events else "no feedback yet")
    return 0


def cmd_feedback_summary(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.feedback.events import feedback_summary, refiner_stats

    urls = prepare_databases(load_settings(args))
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
    emit({"summary": summary, "refiner_stats": stats}, args.json, "\n".join(lines))
    return 0


def add_commands(sub) -> None:
    feedback = sub.add_parser("feedback", help="judge refined documents; list and summarize the judgements")
    feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
    p = feedback_sub.add_parser("add", help="record a judgement of a document's current refinement")
    p.add_argument("--document", required=True,
                   help="the document: its path in the collection, collection/path, or the file on disk")
    p.add_argument("--rating", required=True, help="+1 (good) or -1 (bad)")
    p.add_argument("--reason", help="what is right or wrong with it (a -1 reason goes into the next prompt)")
    p.add_argument("--tags", nargs="+", metavar="TAG", help="lower-case labels, e.g. wrong-facts missing-steps")
    p.add_argument("--score", type=int, help="optionally, 1-5 (1-3 with -1, 3-5 with +1)")
    p.add_argument("--collection", action=Once, help="the document's collection, when its path is in several")
    p.add_argument("--author", help="who judges (default: the current user name)")
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feedback_add)
    p = feedback_sub.add_parser("list", help="feedback events, newest first")
    p.add_argument("--document", help="only this document")
    p.add_argument("--collection", action=Once)
    p.add_argument("--source", help="user, validator or auto")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feedback_list)
    p = feedback_sub.add_parser("summary", help="approval per model and prompt version; the refiner's totals")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_feedback_summary)
