"""`refinery search` and `eval`: the best chunks for a question, and retrieval figures on a golden
questions file."""

from __future__ import annotations

from ..core.db.tenants import check_tenant_name
from ..core.search.hybrid import SEARCH_MODES
from ..core.settings import Settings
from .common import CliError, emit, load_settings, prepare_databases


def _searcher(settings: Settings, store, mode: str, k: int, filters: dict | None = None,
              tenant: str | None = None):
    """query -> hits in the given mode, with the active embedding model (loaded only if a vector
    leg runs); with a tenant, as its read role (its collections only)."""
    from ..core.search.searcher import Searcher

    searcher = Searcher(settings, store, vectors=mode != "text")
    return lambda query: searcher.search(query, mode=mode, k=k, filters=filters, tenant=tenant)


def cmd_search(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.search.searcher import hit_record
    from ..project import Project

    settings = load_settings(args)
    if not args.query.strip():
        raise CliError("the query is empty: say what you are looking for")
    if args.k < 1:
        raise CliError(f"--k must be at least 1, not {args.k}")
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
        hits = _searcher(settings, store, args.mode, args.k, filters, args.tenant)(args.query)
    finally:
        store.close()
    rows = [hit_record(h) for h in hits]
    text = "\n\n".join(f"{i + 1}. [{h['score']:.3f}] {h['collection']}/{h['path']}"
                       f"{' (' + h['locator'] + ')' if h['locator'] else ''} > {' > '.join(h['heading_path'])}"
                       f" ({', '.join(f'{leg} #{rank}' for leg, rank in h['legs'].items())})\n"
                       f"   {h['text'][:240].replace(chr(10), ' ')}" for i, h in enumerate(rows)) or "no results"
    emit(rows, args.json, text)
    return 0


def cmd_eval(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.search.evaluation import (
        QuestionsError,
        distinct_documents,
        evaluate,
        load_questions,
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
    emit(results if args.mode == "all" else results[args.mode], args.json, "\n".join(lines))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("search", help="the chunks that best answer a question")
    p.add_argument("query")
    p.add_argument("--manifest")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--collection")
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
