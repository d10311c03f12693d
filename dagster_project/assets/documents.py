"""`documents`: one row per source file, parsed; only new or changed files are parsed."""

import dagster as dg

from ..core.ingest.corpus import RootMissingError, check_text_search_configs
from ..core.ingest.parsing import PARSER_VERSION
from ..core.ingest.templating import TEMPLATING_VERSION
from ..core.ingest.pipeline import sync_documents
from ..core.refine.redaction import PRICING_VERSION
from ..core.progress import Progress
from ..project import Project
from ..resources.vector_store import PgVectorStore
from .corpus import ON_SOURCE_CHANGE, record_observed_version
from .reporting import record_and_describe
from .tables import OWNERS, table_metadata


def build_documents(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="documents", partitions_def=project.ingest_partitions, deps=["corpus_files"],
        group_name="ingestion", kinds={"postgres", "python"},
        code_version=f"{PARSER_VERSION}+{TEMPLATING_VERSION}+pricing{PRICING_VERSION}",
        owners=OWNERS, metadata=table_metadata("documents"), automation_condition=ON_SOURCE_CHANGE,
        description="Table documents: parsed files with metadata. A vanished file's document and "
                    "chunks are deleted in one transaction (search stops returning it at once); vectors "
                    "no chunk uses are dropped by the embeddings step of the same run.",
    )
    def documents(context: dg.AssetExecutionContext, vector_store: PgVectorStore) -> dg.MaterializeResult:
        collection, shard = project.manifest.shard(context.partition_key)
        # Runs launched from the UI or by automation skip the CLI's checks: a bad configuration
        # fails here, before any document is written.
        check_text_search_configs(project.manifest, [collection.name], project.settings.text_search_config,
                                  vector_store.store)
        # A collection missing from the manifest is left alone (a manifest slip must not delete
        # data): `refinery prune` removes it, and status and ingest point at it.
        outside = vector_store.store.collections_outside(sorted(project.manifest.collections))
        for name, counts in outside.items():
            context.log.warning(f"collection {name!r} is in the database ({counts['documents']} documents) but not in "
                                f"the manifest: `refinery prune` removes it")
        try:
            report = sync_documents(vector_store.store, collection, max_file_bytes=project.settings.max_file_bytes,
                                    progress=Progress("files parsed", context.log.info), shard=shard,
                                    parse_time_limit=project.settings.parse_time_limit_seconds)
        except RootMissingError as exc:
            raise dg.Failure(description=str(exc)) from None
        for issue in report.issues:
            log = context.log.error if issue.severity == "error" else context.log.warning
            log(f"{issue.path}: {issue.reason}")
        record_observed_version(context, "corpus_files", report.source_version)
        return dg.MaterializeResult(metadata=record_and_describe(
            context, vector_store.store, report, shard, collections_not_in_manifest=dg.MetadataValue.json(outside)))

    return documents
