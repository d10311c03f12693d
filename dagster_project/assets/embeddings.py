"""`embeddings`: vectors for chunk texts never embedded with the active model (and, during a
model change, with the candidate beside it), and the checks that prove the index matches the
corpus. `active_embedding_model`: the model search serves, switched only through its gates."""

import dagster as dg

from ..core.ingest.pipeline import sync_embeddings
from ..core.openai_batch import BatchPolicy
from ..core.progress import Progress
from ..core.search.model_change import ModelChangeError, evaluate_gates, models_to_build, switch_to_candidate
from ..pools import EMBEDDING_POOL
from ..project import Project
from ..resources.embedder import EmbedderResource
from ..resources.vector_store import PgVectorStore
from .corpus import ON_UPSTREAM_CHANGE
from .reporting import partition_check, record_and_describe
from .tables import OWNERS, table_metadata

CHECKS = {
    "every_live_chunk_has_vector": "Every chunk of the collection has a vector for the active model "
                                   "(and for the candidate, during a model change).",
    "no_orphans": "No vector whose text no chunk has, no chunk whose document is gone.",
    "no_duplicate_chunks": "Each document's chunks are one gapless sequence with unique ids.",
}
SWITCH_CHECKS = {
    "candidate_covers_every_live_chunk": "The candidate model has a vector for every live chunk of every "
                                         "collection (never skipped: search would lose chunks).",
    "candidate_retrieves_at_least_as_well": "The candidate's recall@5 and MRR@10 (hybrid search, golden "
                                            "questions) are at least the active model's (config force skips it).",
}


def build_embeddings(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="embeddings", partitions_def=project.ingest_partitions, deps=["chunks"],
        group_name="ingestion", code_version=project.embedding_generation, kinds={"pgvector", "postgres", "python"},
        owners=OWNERS, metadata=table_metadata("embeddings"), automation_condition=ON_UPSTREAM_CHANGE,
        check_specs=[dg.AssetCheckSpec(name, asset="embeddings", description=d, partitions_def=project.ingest_partitions)
                     for name, d in CHECKS.items()],
        pool=EMBEDDING_POOL,
        description="Table embeddings: one vector per (chunk text, model), HNSW-indexed per model. "
                    "Builds the active model's vectors and, when EMBED_* names another model, the "
                    "candidate's beside them.",
    )
    def embeddings(context: dg.AssetExecutionContext, vector_store: PgVectorStore,
                   embedder: EmbedderResource) -> dg.MaterializeResult:
        store = vector_store.store
        models = models_to_build(store, embedder.get(), embedder.get)
        _, shard = project.manifest.shard(context.partition_key)
        settings = project.settings
        report = sync_embeddings(store, shard.collection, *models,
                                 progress=Progress("texts embedded", context.log.info), shard=shard,
                                 batch=BatchPolicy(settings.embed_batch_min_texts, settings.llm_batch_poll_seconds,
                                                   settings.llm_batch_max_wait_seconds))
        states = {m.model.key: store.consistency(shard.collection, store.model_id(m.model),
                                                 project.chunker_version, shard) for m in models}
        active = states[models[0].model.key]  # first: the active model (search serves it)
        # Recorded with the step (the daily snapshots count the coverage in the store instead: a run
        # that dies before this step records nothing).
        report.counts.update(live_chunks=active.live_chunks, missing_vectors=active.missing_vectors)
        checks = [
            partition_check(context, "every_live_chunk_has_vector", all(s.missing_vectors == 0 for s in states.values()),
                            {"live_chunks": active.live_chunks, "missing_vectors": active.missing_vectors,
                             **{f"missing_vectors {key}": s.missing_vectors for key, s in states.items()},
                             "examples": ", ".join(ex for s in states.values()
                                                   for ex in s.examples["missing_vector_chunk_ids"])}),
            partition_check(context, "no_orphans", active.orphan_vectors == 0 and active.orphan_chunks == 0,
                            {"orphan_vectors": active.orphan_vectors, "orphan_chunks": active.orphan_chunks}),
            partition_check(context, "no_duplicate_chunks", active.duplicate_chunks == 0,
                            {"documents_with_duplicates": active.duplicate_chunks}),
        ]
        extra = {"model": models[0].model.key}
        if len(models) > 1:
            extra["candidate"] = models[1].model.key
        if shard.count > 1:
            # The whole collection's distinct texts: what `refinery ingest` says was reused for a
            # sharded collection (a text two shards share is embedded or reused once, not per shard).
            extra["collection_texts"] = store.text_counts(shard.collection, store.model_id(models[0].model))[0]
        metadata = record_and_describe(context, store, report, shard, **extra)
        return dg.MaterializeResult(metadata=metadata, check_results=checks)

    return embeddings


class SwitchConfig(dg.Config):
    force: bool = False  # switch even if the candidate retrieves worse on the golden set (coverage is never skipped)


def build_active_embedding_model(project: Project) -> dg.AssetsDefinition:
    settings = project.settings

    # A multi-asset of one, for can_subset: with no candidate the gates yield no result (the UI
    # shows them skipped) rather than a pass. The coverage gate blocks: a model missing vectors is
    # never switched to.
    @dg.multi_asset(
        name="active_embedding_model", can_subset=True,
        specs=[dg.AssetSpec(
            "active_embedding_model", deps=[dg.AssetDep("embeddings", partition_mapping=dg.AllPartitionMapping())],
            group_name="search", kinds={"postgres", "python"}, owners=OWNERS,
            metadata=table_metadata("active_embedding_model"),
            description="Table active_embedding_model: the model search serves. Materializing it switches to "
                        "the candidate (the model EMBED_* names) in one transaction once both checks pass "
                        "(config force: true skips the retrieval check); the old vectors stay until "
                        "refinery model drop. With no candidate the checks are skipped, not passed.")],
        check_specs=[dg.AssetCheckSpec(name, asset="active_embedding_model", description=d,
                                       blocking=name == "candidate_covers_every_live_chunk")
                     for name, d in SWITCH_CHECKS.items()],
    )
    def active_embedding_model(context: dg.AssetExecutionContext, config: SwitchConfig, vector_store: PgVectorStore,
                               embedder: EmbedderResource):
        store = vector_store.store
        gates = evaluate_gates(store, embedder.get(), embedder.get, settings.golden_questions,
                               settings.text_search_config, manifest_collections=project.manifest.collections)
        if gates.candidate is None:
            # No result for the gates: the UI shows them skipped for this run, not passed.
            context.log.info(f"gates skipped: no candidate (EMBED_* names the active model, {gates.active})")
            yield dg.MaterializeResult(metadata={"active": gates.active or "none yet", "switched": False,
                                                 "gates": "skipped: no candidate (EMBED_* names the active model)"})
            return
        coverage = {"candidate": gates.candidate, "live_chunks": gates.live_chunks, "missing_vectors": gates.missing,
                    **{f"missing in {c}": n for c, n in gates.missing_by_collection.items()}}
        yield dg.AssetCheckResult(check_name="candidate_covers_every_live_chunk", passed=gates.covered,
                                  metadata=coverage)
        metrics = {f"{who} {m}": v for who, values in (("active", gates.active_metrics),
                                                       ("candidate", gates.candidate_metrics))
                   for m, v in (values or {}).items()}
        yield dg.AssetCheckResult(
            check_name="candidate_retrieves_at_least_as_well", passed=gates.metrics_ok,
            severity=dg.AssetCheckSeverity.WARN if config.force else dg.AssetCheckSeverity.ERROR,
            metadata={"active": gates.active, "candidate": gates.candidate, **metrics,
                      "verdict": gates.metrics_verdict() or "at least as good", "forced": config.force})
        try:
            previous = switch_to_candidate(store, gates, force=config.force)
        except ModelChangeError as exc:
            raise dg.Failure(description=str(exc)) from None
        context.log.info(f"search now serves {gates.candidate} (was {previous})")
        yield dg.MaterializeResult(metadata={"active": gates.candidate, "previous": previous or "none",
                                             "switched": True, "forced": config.force and not gates.metrics_ok})

    return active_embedding_model
