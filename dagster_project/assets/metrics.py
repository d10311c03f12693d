"""`metric_snapshots`: one partition per UTC day holding that day's metrics, and one check per
metric in monitoring.yaml (WARN past the warning level, ERROR past the critical one), each with
the day against the previous seven days that exist, drawn as a trend."""

from datetime import date, timedelta

import dagster as dg

from ..core.db.store import VectorStore
from ..core.metrics.charts import trend_bars
from ..core.metrics.monitoring import CRITICAL, NO_DATA, OK, Threshold
from ..core.metrics.snapshots import (
    METRICS,
    Snapshot,
    measure_retrieval,
    metric_series,
    take_snapshot,
)
from ..project import Project
from ..resources.embedder import EmbedderResource
from ..resources.vector_store import PgVectorStore
from .reporting import markdown_table, partition_check
from .tables import OWNERS, table_metadata

METRICS_VERSION = "metrics-v2"  # bump when a metric's definition changes: every day is stale
TREND_DAYS = 8  # the day and the seven before it


def check_name(metric: str) -> str:
    return f"{metric}_within_thresholds"


def build_metric_snapshots(project: Project) -> dg.AssetsDefinition:
    thresholds = project.thresholds
    settings = project.settings

    @dg.asset(
        name="metric_snapshots", partitions_def=project.daily_partitions, group_name="monitoring",
        code_version=METRICS_VERSION, kinds={"postgres", "python"}, owners=OWNERS,
        metadata=table_metadata("metric_snapshots"),
        deps=["feedback_views",
              dg.AssetDep("embeddings", partition_mapping=dg.AllPartitionMapping()),
              dg.AssetDep("refined_documents", partition_mapping=dg.AllPartitionMapping())],
        check_specs=[dg.AssetCheckSpec(check_name(t.metric), asset="metric_snapshots",
                                       partitions_def=project.daily_partitions,
                                       description=f"{METRICS[t.metric]}: {t.describe()}")
                     for t in thresholds.values()],
        description="Table metric_snapshots (day, metric, dimensions, value, kind): the day's documents, "
                    "chunks, vectors, texts and tokens embedded, LLM tokens and dollars, "
                    "refine outcomes, bypass rate, feedback, ingest errors (from the logs, as of the day's "
                    "end: a backfill gives the same numbers), and embedding coverage (counted in the store), "
                    "retrieval recall@5, MRR@10 and search latency (measured live on the day).",
    )
    def metric_snapshots(context: dg.AssetExecutionContext, vector_store: PgVectorStore,
                         embedder: EmbedderResource) -> dg.MaterializeResult:
        store = vector_store.store
        day = date.fromisoformat(context.partition_key)
        snapshot = take_snapshot(store, day, measure_live=lambda: measure_retrieval(
            store, embedder.get(store.active_model_key()), settings.golden_questions, settings.text_search_config))
        context.log.info(f"{day}: {len(snapshot.values)} values; live metrics {snapshot.live}")
        totals = [v for v in snapshot.values if not v.dimensions]
        # Numbers per metric: the asset's Plots (by partition) draw each metric by day.
        metadata = {v.metric: dg.MetadataValue.float(v.value) for v in totals}
        metadata["dagster/row_count"] = dg.MetadataValue.int(len(snapshot.values))
        metadata["live_metrics"] = dg.MetadataValue.text(snapshot.live)
        metadata["snapshot"] = markdown_table(
            [{"metric": v.metric, "dimensions": ", ".join(f"{k}={d}" for k, d in v.dimensions.items()),
              "value": v.value, "kind": v.kind} for v in snapshot.values],
            ["metric", "dimensions", "value", "kind"], limit=200)
        return dg.MaterializeResult(metadata=metadata, check_results=[
            threshold_check(context, store, snapshot, t, project.metrics_start_date) for t in thresholds.values()])

    return metric_snapshots


def threshold_check(context: dg.AssetExecutionContext, store: VectorStore, snapshot: Snapshot,
                    threshold: Threshold, first_day: date) -> dg.AssetCheckResult:
    value = snapshot.value(threshold.metric)
    status = threshold.status(value)
    # The day and the ones before it, back to the first metric day: no days before the project.
    first = max(snapshot.day - timedelta(days=TREND_DAYS - 1), first_day)
    series = metric_series(store, threshold.metric, first, snapshot.day)
    days = [first + timedelta(days=i) for i in range((snapshot.day - first).days + 1)]
    bars = trend_bars({d: series.get(d) for d in days}, threshold)
    metadata = {
        # Text, not a number: the UI plots a check's numbers by run time, and a metric is by day
        # (the trend below, and the asset's Plots by partition).
        "value": dg.MetadataValue.text(f"{value:g}" if value is not None else "no data"),
        "status": dg.MetadataValue.text(status),
        "thresholds": dg.MetadataValue.text(threshold.describe()),
        # A table, not Markdown or an image: the UI shows it inline in the check's page.
        "trend": dg.MetadataValue.table(
            records=[dg.TableRecord({"day": d.isoformat(), "value": series.get(d),
                                     "status": threshold.status(series.get(d)), "trend": bars[d]})
                     for d in reversed(days)],
            schema=dg.TableSchema(columns=[dg.TableColumn("day", "string"), dg.TableColumn("value", "float"),
                                           dg.TableColumn("status", "string"), dg.TableColumn("trend", "string")])),
    }
    return partition_check(
        context, check_name(threshold.metric), status in (OK, NO_DATA),
        severity=dg.AssetCheckSeverity.ERROR if status == CRITICAL else dg.AssetCheckSeverity.WARN,
        metadata=metadata)
