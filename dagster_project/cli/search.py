"""`refinery search` and `eval`: the best documents (with their best passages) or chunks for a
question, and retrieval figures on a golden questions file."""

from __future__ import annotations

from ..core.db.tenants import check_tenant_name
from ..core.search.hybrid import SEARCH_MODES
from ..core.settings import Settings
from .common import CliError, Once, emit, load_settings, prepare_databases, printable


def _searcher(settings: Settings, store, mode: str, k: int, filters: dict | None = None,
              tenant: str | None = None, passages: int | None = None):
    """query -> the k best documents with up to `passages` chunks each, or (None) the k best chunks,
    with the active embedding model (loaded only if a vector leg runs); with a tenant, as its read
    role (its collections only)."""
    from ..core.search.searcher import Searcher

    searcher = Searcher(settings, store, vectors=mode != "text")
    return lambda query: searcher.search(query, mode=mode, k=k, filters=filters, tenant=tenant, passages=passages)


def cmd_search(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.search.searcher import hit_record
    from ..project import Project

    settings = load_settings(args)
    if not args.query.strip():
        raise CliError("the query is empty: say what you are looking for")
    if args.k < 1:
        raise CliError(f"--k must be at least 1, not {args.k}")
    if args.passages < 1:
        raise CliError(f"--passages must be at least 1, not {args.passages}")
    if args.collection:
        Project.load(settings).manifest.collection(args.collection)  # names the known ones if unknown
    if args.tenant is not None:
        check_tenant_name(args.tenant)
    urls = prepare_databases(settings)
    store = VectorStore(urls.vector_store)
    try:
        if args.tenant is not None and not store.tenant_exists(args.tenant):
            raise CliError(f"no tenant {args.tenant!r} yet: create its read role with `refinery tenant add {args.tenant}`")
        filters = {"collection": args.collection, "category": args.category,
                   "doc_type": args.doc_type, "status": args.status}
        found = _searcher(settings, store, args.mode, args.k, filters, args.tenant,
                          None if args.chunks else args.passages)(args.query)
    finally:
        store.close()

    def show(h, indent: str) -> str:
        where = printable(" > ".join(h.heading_path) + (f" ({h.locator})" if h.locator else ""))
        return (f"{indent}> {where} [{h.score:.3f}]"
                f" ({', '.join(f'{leg} #{rank}' for leg, rank in h.legs.items())})\n"
                f"{indent}  {printable(' '.join(h.text[:240].split()))}")

    rows = [hit_record(h) for h in found]
    if args.chunks:
        text = "\n\n".join(f"{i + 1}. {printable(f'{h.collection}/{h.path}')}\n{show(h, '   ')}"
                           for i, h in enumerate(found))
    else:
        text = "\n\n".join(f"{i + 1}. [{d.score:.3f}] {printable(f'{d.collection}/{d.path}: {d.title}')}\n"
                           + "\n".join(show(h, "   ") for h in d.passages) for i, d in enumerate(found))
    if text and len(found) < args.k:  # say it: a short list is not a display slip
        text += (f"\n\n{len(found)} of the {args.k} asked for: no further "
                 f"{'chunk' if args.chunks else 'document'} matches")
    emit(rows, args.json, text or "no results")
    return 0


def cmd_eval(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.search.evaluation import (
        QuestionsError,
        evaluate,
        load_questions,
        shortened,
    )

    settings = load_settings(args)
    urls = prepare_databases(settings)
    store = VectorStore(urls.vector_store)
    try:
        try:
            questions = load_questions(args.questions, store.document_keys())
        except QuestionsError as exc:
            raise CliError(str(exc)) from None
        results = {}
        for mode in (args.mode,) if args.mode != "all" else ("text", "vector", "hybrid"):
            search = _searcher(settings, store, mode, k=args.k, passages=1)
            try:
                results[mode] = evaluate(questions, lambda q, search=search: [(d.collection, d.path) for d in search(q)])
            except QuestionsError as exc:
                raise CliError(f"{args.questions}, {exc}") from None
    finally:
        store.close()
    lines = [f"{'mode':<8} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10} {'MRR@10':>7} {'nDCG@10':>8}"]
    for mode, r in results.items():
        lines.append(f"{mode:<8} {r['recall@1']:>9.3f} {r['recall@5']:>9.3f} {r['recall@10']:>10.3f} "
                     f"{r['mrr@10']:>7.3f} {r['ndcg@10']:>8.3f}")
    for mode, r in results.items():
        for miss in r["missed_top5"]:
            lines.append(f"  {mode} missed: {shortened(miss['question'])} (expected {', '.join(miss['expected'])})")
    emit(results if args.mode == "all" else results[args.mode], args.json, "\n".join(lines))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("search", help="the documents (with their best passages) that best answer a question")
    p.add_argument("query")
    p.add_argument("--manifest")
    p.add_argument("--k", type=int, default=5, help="documents (with --chunks: chunks) returned")
    p.add_argument("--passages", type=int, default=3, help="best chunks shown per document")
    p.add_argument("--chunks", action="store_true", help="the k best chunks instead, several per document possible")
    p.add_argument("--collection", action=Once)
    p.add_argument("--category")
    p.add_argument("--doc-type")
    p.add_argument("--status")
    p.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    p.add_argument("--tenant", help="search as this tenant's read role: its collections only (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("eval", help="recall@1/5/10, MRR@10 and nDCG@10 on a golden questions file")
    p.add_argument("--questions", required=True, help="YAML: questions: [{question, documents, collection}]")
    p.add_argument("--mode", choices=[*SEARCH_MODES, "all"], default="hybrid")
    p.add_argument("--k", type=int, default=10, help="documents retrieved per question")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
