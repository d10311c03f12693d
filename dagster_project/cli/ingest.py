"""`refinery ingest`, `prune` and `status`: the ingestion job per collection, the collections the
manifest no longer names, and what each collection holds."""

from __future__ import annotations

import os

from .common import (
    all_passed,
    check_manifest_on_server,
    emit,
    job_collections,
    load_settings,
    prepare_databases,
    run_job,
)


def cmd_ingest(args) -> int:
    from ..core.db.store import VectorStore
    from ..project import Project

    settings = load_settings(args)
    project = Project.load(settings)
    names = job_collections(project, args.collection)
    urls = prepare_databases(settings)
    check_manifest_on_server(project, urls)
    if args.dry_run:
        from ..core.ingest.corpus import RootMissingError
        from ..core.ingest.pipeline import plan_collection

        store = VectorStore(urls.vector_store)
        plans = {}
        try:
            for n in names:
                try:
                    plans[n] = plan_collection(store, project.manifest.collection(n),
                                               max_file_bytes=settings.max_file_bytes,
                                               settings=project.chunk_settings_for(n), counter=project.token_counter,
                                               model_key=project.embedding_generation)
                except RootMissingError as exc:  # as a real run: that collection fails, the others plan
                    plans[n] = {"documents": dict.fromkeys(("new", "changed", "unchanged", "deleted"), 0),
                                "embedded": 0, "reused": 0, "errors": [], "warnings": [], "failures": [str(exc)]}
            outside = store.collections_outside(sorted(project.manifest.collections))
        finally:
            store.close()
        summary = _summarize({n: {"documents": p["documents"], "embedded": p["embedded"], "reused": p["reused"],
                                  "errors": p["errors"], "warnings": p["warnings"]} for n, p in plans.items()})
        summary.update(dry_run=True, collections=plans, not_in_manifest=outside)
        emit(summary, args.json, _ingest_table(summary, "would ingest"))
        return 1 if any(p.get("failures") for p in plans.values()) else 0
    return _run_ingest(project, names, args.json)


def _run_ingest(project, names: list[str], as_json: bool) -> int:
    from ..core.db.store import VectorStore
    from ..definitions import INGEST_JOB

    keys = [s.key for s in project.manifest.shards() if s.collection in names]
    runs = run_job(project, INGEST_JOB, keys)
    per_collection: dict[str, dict] = {}
    shard_runs: dict[str, list[dict]] = {}
    for key, run in runs.items():
        name = key.partition("/")[0]
        docs, emb = run["steps"].get("documents", {}), run["steps"].get("embeddings", {})
        shard = {
            "run_id": run["run_id"], "success": run["success"], "seconds": run["seconds"],
            "documents": {k: int(docs.get(k, 0)) for k in ("new", "changed", "unchanged", "deleted")},
            "chunks": {k: int(v) for k, v in run["steps"].get("chunks", {}).items()
                       if isinstance(v, int) and not k.startswith("collection_")},
            "embedded": int(emb.get("texts_embedded", 0)), "reused": int(emb.get("reused", 0)),
            "tokens_embedded": int(emb.get("tokens_embedded", 0)),
            "checks": run["checks"], "failures": run["failures"],
        }
        per_collection[name] = _add_shard(per_collection[name], shard) if name in per_collection else shard
        shard_runs.setdefault(name, []).append(run)
    for name, shards in shard_runs.items():
        _collection_totals(per_collection[name], shards)
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
    emit(summary, as_json, _ingest_table(summary, "ingested"))
    return 0 if all_passed(runs) else 1


def _add_shard(total: dict, shard: dict) -> dict:
    """A sharded collection's line: its shards' runs added up (checks pass when every shard's do)."""
    def add(a, b):
        if isinstance(a, dict):
            return {k: add(a.get(k, 0), b.get(k, 0)) for k in a.keys() | b.keys()}
        return a + b
    return {"run_id": f"{total['run_id']},{shard['run_id']}", "success": total["success"] and shard["success"],
            "seconds": round(total["seconds"] + shard["seconds"], 2),
            **{k: add(total[k], shard[k]) for k in ("documents", "chunks", "embedded", "reused", "tokens_embedded")},
            "checks": {k: total["checks"].get(k, True) and shard["checks"].get(k, True)
                       for k in total["checks"].keys() | shard["checks"].keys()},
            "failures": total["failures"] + shard["failures"]}


def _collection_totals(line: dict, runs: list[dict]) -> None:
    """The collection's line says what the collection holds after the command, sharded or not:
    the totals its last embeddings step recorded (the chunks step's are from before the vectors).
    A shard's materializations count that shard's rows and give its collection's totals as
    `collection_*`; the last shard's are final. `reused` of a sharded collection: its distinct
    texts, per model built, less those embedded now (per shard, a text two shards share would
    count twice)."""
    last = next((r["steps"]["embeddings"] for r in reversed(runs) if "embeddings" in r["steps"]), None)
    if last is None:
        return
    sharded = len(runs) > 1
    held = {k: last.get(f"collection_{k}" if sharded else f"total_{k}") for k in ("documents", "chunks", "vectors")}
    if all(isinstance(v, int) for v in held.values()):
        line["chunks"].update({f"total_{k}": v for k, v in held.items()}, **{"dagster/row_count": held["chunks"]})
    if sharded and "collection_texts" in last and all("embeddings" in r["steps"] for r in runs):
        models = 2 if last.get("candidate") else 1
        line["reused"] = max(0, models * int(last["collection_texts"]) - line["embedded"])


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


def cmd_prune(args) -> int:
    from ..core.db.store import VectorStore
    from ..project import Project

    settings = load_settings(args)
    project = Project.load(settings)
    urls = prepare_databases(settings)
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
    emit(out, args.json, "\n".join(lines))
    return 0


def cmd_status(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.ingest.corpus import root_problem
    from ..core.refine.pipeline import due_for_refinement
    from ..project import Project

    settings = load_settings(args)
    project = Project.load(settings)
    urls = prepare_databases(settings)
    store = VectorStore(urls.vector_store)
    try:
        active = store.active_model_key()
        collections = store.status(None if active is None else store.model_id_by_key(active))
        configured = store.resolve_model_key(project.embedding_generation)
        outside = store.collections_outside(sorted(project.manifest.collections))
        # Refined documents that `refinery refine` would redo, by its own rule (the configured chain).
        out_of_date = {}
        for name in project.manifest.collections:
            keys = store.refinement_keys(name)
            due = due_for_refinement(keys, settings.llm_models)
            out_of_date[name] = sum(1 for k in keys if k.current is not None and not k.awaiting_model
                                    and k.document_id in due)
    finally:
        store.close()
    empty = {"documents": 0, "chunks": 0, "vectors": 0, "refined": 0, "awaiting_model": 0, "quarantined": 0,
             "errors": [], "warnings": []}
    external = project.manifest.external_roots()
    out = {"collections": {n: {**collections.get(n, dict(empty)), "refined_out_of_date": out_of_date[n],
                               "root": str(c.root),
                               "root_problem": root_problem(c),
                               "root_outside_manifest_folder": n in external,
                               "follow_external_symlinks": c.follow_external_symlinks}
                           for n, c in sorted(project.manifest.collections.items())},
           "not_in_manifest": outside,
           "embedding_model": active,  # None until a model holds vectors: nothing is embedded yet
           "configured_model": configured,
           "candidate_model": configured if active is not None and configured != active else None}
    lines = [f"{'collection':<16} {'documents':>10} {'chunks':>8} {'vectors':>8} {'refined':>8} {'quarant.':>9} "
             f"{'errors':>7} {'warnings':>9}"]
    for n, c in out["collections"].items():
        lines.append(f"{n:<16} {c['documents']:>10} {c['chunks']:>8} {c['vectors']:>8} {c['refined']:>8} "
                     f"{c['quarantined']:>9} {len(c['errors']):>7} {len(c['warnings']):>9}")
        if c["root_problem"]:
            lines.append(f"  error   {c['root_problem']}")
        if c["refined_out_of_date"]:
            lines.append(f"  note: {c['refined_out_of_date']} of the {c['refined']} refined documents are out of date "
                         "(their document, LLM_MODEL, the prompt or the schema changed since, or a person rejected "
                         "the refinement): the next `refinery refine` redoes them")
        if c["awaiting_model"]:
            lines.append(f"  note: {c['awaiting_model']} more documents hold an extractive stand-in awaiting the model "
                         "(it could not be reached for them): the next `refinery refine` sends them")
        if c["root_outside_manifest_folder"]:
            lines.append(f"  note: root {c['root']} is outside the manifest's folder")
        if c["follow_external_symlinks"]:
            lines.append("  note: follow_external_symlinks is on: symlinks may publish files from outside the root")
        for e in c["errors"]:
            lines.append(f"  error   {e['path']}: {e['reason']}")
        for w in c["warnings"]:
            lines.append(f"  warning {w['path']}: {w['reason']}")
    lines += _not_in_manifest_lines(outside)
    if active is None:
        lines.append(f"no model holds vectors yet: the next ingest embeds with {configured} (EMBED_*) and makes it "
                     "the active model")
    else:
        lines.append(f"vectors of the active model {active}"
                     + (f"; candidate {out['candidate_model']} (refinery model status)" if out["candidate_model"] else ""))
    emit(out, args.json, "\n".join(lines))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("ingest", help="materialize documents, chunks and embeddings through Dagster")
    p.add_argument("--manifest", help="corpus.yaml (default: CORPUS_MANIFEST or the sample corpus)")
    p.add_argument("--collection", action="append", help="only this collection (repeat for several)")
    p.add_argument("--dry-run", action="store_true", help="say what would change; write and embed nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("prune", help="delete the collections stored in the database but absent from the manifest")
    p.add_argument("--manifest", help="corpus.yaml (default: CORPUS_MANIFEST or the sample corpus)")
    p.add_argument("--dry-run", action="store_true", help="list them and what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)
    p = sub.add_parser("status", help="documents, chunks, vectors and file errors per collection")
    p.add_argument("--manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
