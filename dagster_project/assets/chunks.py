"""`chunks`: heading-aware, token-budgeted chunks of documents whose text or chunker changed."""

import dagster as dg

from ..core.ingest.pipeline import sync_chunks
from ..core.progress import Progress
from ..project import Project
from ..resources.vector_store import PgVectorStore
from .corpus import ON_UPSTREAM_CHANGE
from .reporting import partition_check, record_and_describe
from .tables import OWNERS, table_metadata


def build_chunks(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="chunks", partitions_def=project.ingest_partitions, deps=["documents"],
        group_name="ingestion", code_version=project.chunker_version, kinds={"postgres", "python"},
        owners=OWNERS, metadata=table_metadata("chunks"), automation_condition=ON_UPSTREAM_CHANGE,
        check_specs=[dg.AssetCheckSpec("chunks_match_documents", asset="chunks", partitions_def=project.ingest_partitions,
                                       description="Every document of the collection is chunked from its current "
                                                   "text with the current chunker."),
                     dg.AssetCheckSpec("text_index_matches_chunks", asset="chunks", partitions_def=project.ingest_partitions,
                                       description="The collection's BM25 postings and term frequencies hold exactly "
                                                   "its chunks' lexemes.")],
        description="Table chunks: heading-aware, token-budgeted chunks of each document, with their heading "
                    "path and token count.",
    )
    def chunks(context: dg.AssetExecutionContext, vector_store: PgVectorStore) -> dg.MaterializeResult:
        store = vector_store.store
        _, shard = project.manifest.shard(context.partition_key)
        settings = project.chunk_settings_for(shard.collection)
        report = sync_chunks(store, shard.collection, settings, project.token_counter,
                             progress=Progress("documents chunked", context.log.info), shard=shard)
        stale = store.stale_documents(shard.collection, settings.version(project.token_counter), shard)
        text_index = store.text_index_counts(shard.collection)  # BM25 statistics are the collection's
        return dg.MaterializeResult(
            metadata=record_and_describe(context, store, report, shard, chunker_version=project.chunker_version),
            check_results=[
                partition_check(context, "chunks_match_documents", stale == 0, {"stale_documents": stale}),
                partition_check(context, "text_index_matches_chunks", len(set(text_index.values())) == 1, text_index),
            ],
        )

    return chunks
