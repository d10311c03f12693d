"""`chunks`: heading-aware, token-budgeted chunks of documents whose text or chunker changed."""

import dagster as dg

from ..core.ingest import sync_chunks
from ..core.progress import Progress
from ..project import Project
from ..resources.vector_store import PgVectorStore
from .corpus import ON_UPSTREAM_CHANGE
from .reporting import record_and_describe


def build_chunks(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="chunks", partitions_def=project.partitions, deps=["documents"],
        group_name="ingestion", code_version=project.chunker_version, kinds={"postgres"},
        automation_condition=ON_UPSTREAM_CHANGE,
        check_specs=[dg.AssetCheckSpec("chunks_match_documents", asset="chunks",
                                       description="Every document is chunked from its current text with the current chunker."),
                     dg.AssetCheckSpec("text_index_matches_chunks", asset="chunks",
                                       description="The BM25 postings and term frequencies hold exactly the chunks' lexemes.")],
        description="Table `chunks`: each chunk carries its heading path and token count.",
    )
    def chunks(context: dg.AssetExecutionContext, vector_store: PgVectorStore) -> dg.MaterializeResult:
        store = vector_store.store
        report = sync_chunks(store, context.partition_key, project.chunk_settings, project.token_counter,
                             progress=Progress("documents chunked", context.log.info))
        stale = store.stale_documents(context.partition_key, project.chunker_version)
        text_index = store.text_index_counts(context.partition_key)
        return dg.MaterializeResult(
            metadata=record_and_describe(context, store, report, chunker_version=project.chunker_version),
            check_results=[
                dg.AssetCheckResult(check_name="chunks_match_documents", passed=stale == 0,
                                    metadata={"stale_documents": stale}),
                dg.AssetCheckResult(check_name="text_index_matches_chunks",
                                    passed=len(set(text_index.values())) == 1, metadata=text_index),
            ],
        )

    return chunks
