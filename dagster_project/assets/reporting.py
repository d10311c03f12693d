"""Turns a core StepReport into what the UI shows (metadata) and the ingestion_runs log."""

from __future__ import annotations

import dagster as dg

from ..core.db.store import VectorStore
from ..core.ingest.corpus import Shard
from ..core.ingest.pipeline import StepReport

MAX_LISTED_ISSUES = 50


def record_and_describe(context: dg.AssetExecutionContext, store: VectorStore, report: StepReport,
                        shard: Shard | None = None, **extra) -> dict:
    store.record_step(
        run_id=context.run_id, collection=report.collection, step=report.step,
        seconds=report.seconds,
        documents=sum(report.counts.get(k, 0) for k in ("new", "changed")) if report.step == "documents"
        else report.counts.get("documents", 0),
        chunks=report.counts.get("chunks", 0), texts=report.texts_embedded,
        tokens=report.tokens_embedded, counts=report.counts,
        warnings=report.warnings + [f"{i.path}: {i.reason}" for i in report.issues],
    )
    for warning in report.warnings:
        context.log.warning(warning)
    metadata: dict = {k: dg.MetadataValue.int(int(v)) for k, v in report.counts.items()}
    metadata["seconds"] = dg.MetadataValue.float(round(report.seconds, 3))
    metadata["errors"] = dg.MetadataValue.int(len(report.errors))
    if report.step == "embeddings":
        metadata["texts_embedded"] = dg.MetadataValue.int(report.texts_embedded)
        metadata["tokens_embedded"] = dg.MetadataValue.int(report.tokens_embedded)
    if report.issues:
        rows = "\n".join(f"| {i.severity} | `{i.path}` | {i.reason} |" for i in report.issues[:MAX_LISTED_ISSUES])
        more = len(report.issues) - MAX_LISTED_ISSUES
        metadata["file_issues"] = dg.MetadataValue.md(
            "| severity | file | reason |\n|---|---|---|\n" + rows + (f"\n\n…and {more} more" if more > 0 else ""))
    if report.warnings:
        metadata["warnings"] = dg.MetadataValue.md("\n".join(f"- {w}" for w in report.warnings))
    metadata.update(collection_totals(store, report.collection, ROW_COUNT_OF[report.step], shard))
    metadata.update(extra)
    return metadata


# The rows each asset's dagster/row_count counts, from VectorStore.collection_totals.
ROW_COUNT_OF = {"documents": "documents", "chunks": "chunks", "embeddings": "vectors", "refined_documents": "refined"}


def collection_totals(store: VectorStore, collection: str, rows: str, shard: Shard | None = None) -> dict:
    """The partition as it stands after the run, beside what the run changed: a run with nothing
    to do still shows how much it holds. A partition is a collection or, for a sharded one, one
    shard: `dagster/row_count`, `total_*` and `embedding_coverage` count the partition's own rows
    (so they add up over a collection's shards, like any per-partition sum in Dagster), and a
    shard's materialization also says what its whole collection holds (`collection_*`)."""
    sharded = shard is not None and shard.count > 1

    def described(totals: dict, prefix: str) -> dict:
        return {**{f"{prefix}{k}": dg.MetadataValue.int(v) for k, v in totals.items() if k != "refined" or rows == "refined"},
                f"{prefix.replace('total_', '')}embedding_coverage": dg.MetadataValue.float(
                    round(totals["vectors"] / totals["chunks"], 4) if totals["chunks"] else 1.0)}

    own = store.collection_totals(collection, shard)
    metadata = {"dagster/row_count": dg.MetadataValue.int(own[rows]), "collection": dg.MetadataValue.text(collection),
                **described(own, "total_")}
    if sharded:
        metadata["shard"] = dg.MetadataValue.text(f"{shard.index} of {shard.count} ({shard.key})")
        metadata.update(described(store.collection_totals(collection), "collection_"))
    return metadata


def partition_check(context: dg.AssetExecutionContext, check_name: str, passed: bool, metadata: dict,
                    **kwargs) -> dg.AssetCheckResult:
    """A check result that names the partition (collection or day) it was computed on."""
    dimension = "day" if isinstance(context.assets_def.partitions_def, dg.TimeWindowPartitionsDefinition) \
        else "collection"
    return dg.AssetCheckResult(check_name=check_name, passed=passed,
                               metadata={dimension: context.partition_key, **metadata}, **kwargs)


def markdown_table(rows: list[dict], columns: list[str], limit: int = 50) -> dg.MetadataValue:
    """Rows as a Markdown table in the UI (the first `limit`)."""
    def cell(value) -> str:
        if isinstance(value, float):
            value = round(value, 4)
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n…and {len(rows) - limit} more")
    return dg.MetadataValue.md("\n".join(lines) if rows else "_none yet_")
