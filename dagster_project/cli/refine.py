"""`refinery refine` and `llm-check`: the refine job per collection (or its cost estimate), and
whether each configured model answers."""

from __future__ import annotations

from .common import (
    CliError,
    all_passed,
    check_manifest_on_server,
    emit,
    job_collections,
    load_settings,
    prepare_databases,
    run_job,
)


def cmd_refine(args) -> int:
    from ..core.refine.llm import LLMConfigError
    from ..project import Project
    from ..resources.llm import build_chain

    settings = load_settings(args)
    project = Project.load(settings)
    names = job_collections(project, args.collection)
    try:
        chain = build_chain(settings)
    except LLMConfigError as exc:
        raise CliError(str(exc)) from None
    urls = prepare_databases(settings)
    check_manifest_on_server(project, urls)
    if args.dry_run:
        return _refine_dry_run(project, chain, names, urls, args.json)
    from ..definitions import REFINE_JOB

    runs = run_job(project, REFINE_JOB, names)
    per_collection = {}
    for name, run in runs.items():
        step = run["steps"].get("refined_documents", {})
        per_collection[name] = {
            "run_id": run["run_id"], "success": run["success"], "checks": run["checks"], "failures": run["failures"],
            **{k: step.get(k, 0) for k in ("refined", "skipped", "lightweight", "quarantined", "awaiting_model", "llm_calls",
                                            "failed_calls", "prompt_tokens", "completion_tokens", "cost_usd",
                                            "feedback_redos", "batched", "best_of", "candidates_discarded",
                                            "lost_calls", "lost_cost_usd")},
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
        "awaiting_model": sum(c["awaiting_model"] for c in per_collection.values()),
        "feedback_redos": sum(c["feedback_redos"] for c in per_collection.values()),
        "lost_calls": sum(c["lost_calls"] for c in per_collection.values()),
        "by_link": by_link,
        "cost_usd": round(sum(c["cost_usd"] for c in per_collection.values()), 6),
        "chain": chain.links, "collections": per_collection,
    }
    lines = [f"{'collection':<16} {'refined':>8} {'skipped':>8} {'light':>6} {'quarant.':>9} {'calls':>6} {'cost $':>10}"]
    for name, c in per_collection.items():
        lines.append(f"{name:<16} {c['refined']:>8} {c['skipped']:>8} {c['lightweight']:>6} {c['quarantined']:>9} "
                     f"{c['llm_calls']:>6} {c['cost_usd']:>10.4f}")
        lines.extend(f"  FAILED: {f}" for f in c["failures"])
        if c["lost_calls"]:
            lines.append(f"  {c['lost_calls']} LLM calls of an earlier refine that stopped before recording them are "
                         f"now in llm_calls as outcome 'lost' (~${c['lost_cost_usd']:.4f} of prompt tokens; "
                         "the provider may have billed them)")
        if c["awaiting_model"]:
            lines.append(f"  {c['awaiting_model']} documents await the model (it could not be reached for them; "
                         "the run's warnings say why): their extractive stand-ins are stored, a rerun sends them")
    lines.append(f"chain: {' -> '.join(chain.links)}; by link: {by_link}")
    emit(summary, args.json, "\n".join(lines))
    return 0 if all_passed(runs) else 1


def _refine_dry_run(project, chain, names, urls, as_json: bool) -> int:
    from ..core.db.store import VectorStore
    from ..core.openai_batch import BatchPolicy
    from ..core.refine.pipeline import estimate
    from ..resources.llm import prompt_token_counter

    store = VectorStore(urls.vector_store)
    try:
        plans = {n: estimate(store, n, chain, prompt_token_counter(project.settings),
                             budget=project.settings.refine_budget_tokens, thresholds=project.routing_thresholds,
                             feedback=project.feedback_policy, best_of=project.manifest.collection(n).best_of,
                             batch=BatchPolicy(project.settings.llm_batch_min_documents))
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
             f"{p['skipped']} up to date" + (f"; {p['via_batch']} through the Batch API at half price"
                                              if p["via_batch"] else "") for n, p in plans.items()]
    for model, usd in estimated.items():
        lines.append(f"  if all went to {model}: " + ("no price in LLM_PRICES_FILE" if usd is None else f"~${usd:.4f}"))
    for name, plan in plans.items():
        for model, b in plan["best_of"].items():
            rate = (f"default: {b['samples']} documents observed so far" if b["source"] == "default"
                    else f"discard rate {b['discard_rate']:.1%} ± {b['stddev']:.1%} over {b['samples']} documents")
            cost = ("no price in LLM_PRICES_FILE" if b["extra_usd"] is None
                    else f"~${b['extra_usd']:.4f} extra (~${b['extra_usd_without_n']:.4f} if the server lacks `n`)")
            lines.append(f"  {name} best-of on {model}: {b['candidates']} candidates (buffer {b['buffer']:.2f}; {rate}) "
                         f"for {b['documents']} documents: {b['extra_candidates']} extra candidates, {cost}")
    emit(summary, as_json, "\n".join(lines))
    return 0


def cmd_llm_check(args) -> int:
    from ..core.refine.llm import LLMConfigError
    from ..resources.llm import build_chain

    try:
        chain = build_chain(load_settings(args))
    except LLMConfigError as exc:
        raise CliError(str(exc)) from None
    if not chain.models:
        emit({"models": [], "chain": chain.links}, args.json,
               "no LLM_MODEL set: every document gets the extractive refinement")
        return 0
    results = chain.check()
    text = "\n".join(f"{'ok  ' if r['ok'] else 'FAIL'} {r['model']} ({r['latency_ms']:.0f} ms)"
                     + (f": {r['error']}" if r["error"] else "") for r in results)
    emit({"models": results, "chain": chain.links}, args.json, text)
    return 0 if all(r["ok"] for r in results) else 1


def add_commands(sub) -> None:
    p = sub.add_parser("refine", help="materialize refined_documents through Dagster")
    p.add_argument("--manifest")
    p.add_argument("--collection", action="append", help="only this collection (repeat for several)")
    p.add_argument("--dry-run", action="store_true", help="documents, tokens and estimated dollars; calls nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_refine)
    p = sub.add_parser("llm-check", help="does each configured model answer?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_llm_check)
