"""`embeddings`: vectors for chunk texts never embedded with the active model, and the checks
that prove the index matches the corpus."""

import dagster as dg

from ..core.ingest import sync_embeddings
from ..core.progress import Progress
from ..pools import EMBEDDING_POOL
from ..project import Project
from ..resources.embedder import EmbedderResource
from ..resources.vector_store import PgVectorStore
from .corpus import ON_UPSTREAM_CHANGE
from .reporting import record_and_describe

CHECKS = {
    "every_live_chunk_has_vector": "Every chunk of the collection has a vector for the active model.",
    "no_orphans": "No vector whose text no chunk has, no chunk whose document is gone.",
    "no_duplicate_chunks": "Each document's chunks are one gapless sequence with unique ids.",
}


def build_embeddings(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="embeddings", partitions_def=project.partitions, deps=["chunks"],
        group_name="ingestion", code_version=project.embedding_generation, kinds={"pgvector"},
        automation_condition=ON_UPSTREAM_CHANGE,
        check_specs=[dg.AssetCheckSpec(name, asset="embeddings", description=d) for name, d in CHECKS.items()],
        pool=EMBEDDING_POOL,
        description="Table `embeddings`: one vector per (chunk text, model), HNSW-indexed per model.",
    )
    def embeddings(context: dg.AssetExecutionContext, vector_store: PgVectorStore,
                   embedder: EmbedderResource) -> dg.MaterializeResult:
        store, model = vector_store.store, embedder.get()

        report = sync_embeddings(store, context.partition_key, model,
                                 progress=Progress("texts embedded", context.log.info))
        state = store.consistency(context.partition_key, store.model_id(model.model), project.chunker_version)
        # Recorded with the step: the embedding coverage of the daily metric snapshots.
        report.counts.update(live_chunks=state.live_chunks, missing_vectors=state.missing_vectors)
        checks = [
            dg.AssetCheckResult(check_name="every_live_chunk_has_vector", passed=state.missing_vectors == 0,
                                metadata={"live_chunks": state.live_chunks, "missing_vectors": state.missing_vectors,
                                          "examples": ", ".join(state.examples["missing_vector_chunk_ids"])}),
            dg.AssetCheckResult(check_name="no_orphans",
                                passed=state.orphan_vectors == 0 and state.orphan_chunks == 0,
                                metadata={"orphan_vectors": state.orphan_vectors, "orphan_chunks": state.orphan_chunks}),
            dg.AssetCheckResult(check_name="no_duplicate_chunks", passed=state.duplicate_chunks == 0,
                                metadata={"documents_with_duplicates": state.duplicate_chunks}),
        ]
        metadata = record_and_describe(context, store, report, model=model.model.key)
        return dg.MaterializeResult(metadata=metadata, check_results=checks)

    return embeddings
