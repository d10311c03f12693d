"""`refinery model status | switch | drop`: changing the embedding model without downtime."""

from __future__ import annotations

from ..core.settings import Settings
from .common import CliError, emit, load_settings, prepare_databases, run_job


def _configured_embedder(settings: Settings, store):
    from ..core.embed.factory import build_embedder
    from ..core.ingest.pipeline import adopt_stored_size

    embedder = build_embedder(settings)
    adopt_stored_size(store, embedder)
    return embedder


def cmd_model_status(args) -> int:
    from functools import partial

    from ..core.db.store import VectorStore
    from ..core.embed.factory import build_embedder
    from ..core.ingest.corpus import load_manifest
    from ..core.search.model_change import evaluate_gates, model_status

    settings = load_settings(args)
    urls = prepare_databases(settings)
    store = VectorStore(urls.vector_store)
    try:
        configured = _configured_embedder(settings, store)
        models = model_status(store, configured.model.key)
        gates = evaluate_gates(store, configured, partial(build_embedder, settings), settings.golden_questions,
                               settings.text_search_config, manifest_collections=load_manifest(settings.corpus_manifest).collections)
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
    emit(out, args.json, "\n".join(lines))
    return 0


def cmd_model_switch(args) -> int:
    from ..definitions import SWITCH_JOB
    from ..project import Project

    settings = load_settings(args)
    project = Project.load(settings)
    prepare_databases(settings)
    run = run_job(project, SWITCH_JOB, [None],
                   {"ops": {"active_embedding_model": {"config": {"force": args.force}}}})[None]
    step = run["steps"].get("active_embedding_model", {})
    out = {"run_id": run["run_id"], "success": run["success"], "switched": bool(step.get("switched")),
           "active": step.get("active"), "previous": step.get("previous"), "forced": bool(step.get("forced")),
           "checks": run["check_details"], "failures": run["failures"]}
    if not run["success"]:
        emit(out, args.json, "\n".join(f"refused: {f}" for f in run["failures"]))
        return 1
    text = (f"search now serves {out['active']} (was {out['previous']})"
            + ("; the golden-set gate was forced" if out["forced"] else "")
            + f"\nthe old vectors stay until: refinery model drop {out['previous']}" if out["switched"]
            else f"nothing to switch: {out['active']} is active and EMBED_* names it")
    emit(out, args.json, text)
    return 0


def cmd_model_drop(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.search.model_change import ModelChangeError, drop_model

    settings = load_settings(args)
    urls = prepare_databases(settings)
    store = VectorStore(urls.vector_store)
    try:
        configured = _configured_embedder(settings, store).model.key
        deleted = drop_model(store, args.model, configured)
    except ModelChangeError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    emit({"model": args.model, "vectors_deleted": deleted}, args.json,
           f"dropped {deleted} vectors and the HNSW index of {args.model}")
    return 0


def add_commands(sub) -> None:
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
