"""The one Definitions object of the Corpus Refinery code location."""

from __future__ import annotations

import importlib
import warnings
from datetime import timedelta

import dagster as dg

from .assets.chunks import build_chunks
from .assets.corpus import build_corpus_files
from .assets.documents import build_documents
from .assets.embeddings import build_active_embedding_model, build_embeddings
from .assets.feedback import build_feedback_events, build_feedback_views
from .assets.metrics import build_metric_snapshots
from .assets.refined import build_refined_documents
from .project import Project
from .resources.embedder import EmbedderResource
from .resources.llm import LLMResource
from .resources.vector_store import PgVectorStore

# RUN_EXECUTOR -> (package, executor): the run's steps on Celery or Kubernetes workers.
EXECUTORS = {"celery": ("dagster_celery", "celery_executor"),
             "celery_k8s": ("dagster_celery_k8s", "celery_k8s_job_executor"),
             "k8s_job": ("dagster_k8s", "k8s_job_executor")}
INGEST_JOB = "ingest"
REFINE_JOB = "refine"
SNAPSHOT_JOB = "snapshot"
SWITCH_JOB = "switch_embedding_model"
# corpus_files is an observable source asset, which Dagster still marks beta; partitioned asset
# checks (a check's result per collection or day) are a preview.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def run_executor(name: str) -> dg.ExecutorDefinition | None:
    """The executor RUN_EXECUTOR names; None for Dagster's default (multiprocess)."""
    if name not in EXECUTORS:
        return None
    package, attribute = EXECUTORS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ImportError(f"RUN_EXECUTOR={name} needs the {package.replace('_', '-')} package "
                          f"(pip install '.[{name.split('_')[0]}]'), or unset RUN_EXECUTOR") from None
    executor = getattr(module, attribute)
    if name == "celery":  # runs the sensor and schedules launch carry no run config: the broker comes from here
        executor = executor.configured({"broker": {"env": "CELERY_BROKER_URL"}}, name="celery")
    return executor


def build_definitions(project: Project | None = None) -> dg.Definitions:
    project = project or Project.load()
    ingestion = [build_documents(project), build_chunks(project), build_embeddings(project)]
    refined = build_refined_documents(project)
    active_model = build_active_embedding_model(project)
    snapshots = build_metric_snapshots(project)
    snapshot_job = dg.define_asset_job(SNAPSHOT_JOB, selection=dg.AssetSelection.assets(snapshots),
                                       partitions_def=project.daily_partitions,
                                       description="The metric snapshot of one UTC day and its threshold checks.")

    # Just after midnight, yesterday's snapshot: its live metrics are measured on a state that is
    # still the day's. Off until switched on in the UI.
    @dg.schedule(name="daily_metric_snapshot", cron_schedule="15 0 * * *", job=snapshot_job, execution_timezone="UTC",
                 description="At 00:15 UTC, the metric snapshot of the day before and its threshold checks. "
                             "Off until switched on.")
    def daily_metric_snapshot(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        day = (context.scheduled_execution_time.date() - timedelta(days=1)).isoformat()
        return dg.RunRequest(run_key=day, partition_key=day)

    ingest_job = dg.define_asset_job(INGEST_JOB, selection=dg.AssetSelection.assets(*ingestion),
                                     partitions_def=project.ingest_partitions,
                                     description="Documents, chunks and embeddings of one collection (or one "
                                                 "shard of a collection with `shards: N`).")

    # Every collection, whatever the automation saw: cheap when nothing changed (nothing is
    # parsed, chunked or embedded again). Off until switched on in the UI.
    @dg.schedule(name="reingest_all_collections", cron_schedule=project.settings.reingest_cron, job=ingest_job,
                 execution_timezone="UTC",
                 description=f"On REINGEST_CRON ({project.settings.reingest_cron}, UTC), one ingest run per "
                             "collection; with nothing changed it parses and embeds nothing. Off until switched on.")
    def reingest_all_collections(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(run_key=f"{tick}:{name}", partition_key=name)
                for name in project.ingest_partitions.get_partition_keys()]

    # On by default (AUTOMATION_SENSOR_DEFAULT): observes corpus_files on CORPUS_OBSERVE_CRON and
    # materializes what changed.
    automation = dg.AutomationConditionSensorDefinition(
        "refinery_automation", target=dg.AssetSelection.all(include_sources=True),
        default_status=dg.DefaultSensorStatus(project.settings.automation_sensor_default.upper()),
        minimum_interval_seconds=project.settings.automation_interval_seconds,
        description="Observes the corpus folders and updates the assets of the collections that changed.")

    @dg.sensor(name="refinery_dead_runs", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Ends the runs whose run worker died on this machine (killed, out of memory): left "
                           "STARTED, they held their collection's place in the run queue for good.")
    def dead_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        from .pools import release_dead_runs

        dead = release_dead_runs(context.instance)
        return dg.SkipReason(f"{len(dead)} run(s) of dead workers marked failed: "
                             + ", ".join(run.run_id[:8] for run in dead) if dead else "no run of a dead worker")

    return dg.Definitions(
        assets=[build_corpus_files(project), *ingestion, active_model, build_feedback_events(project), refined,
                build_feedback_views(project), snapshots],
        schedules=[daily_metric_snapshot, reingest_all_collections],
        sensors=[automation, dead_runs],
        jobs=[
            ingest_job,
            dg.define_asset_job(REFINE_JOB, selection=dg.AssetSelection.assets(refined),
                                partitions_def=project.partitions,
                                description="Refined JSON for the documents of one collection."),
            snapshot_job,
            dg.define_asset_job(SWITCH_JOB, selection=dg.AssetSelection.assets(active_model),
                                description="Switch search to the candidate embedding model (EMBED_*) once it "
                                            "covers every live chunk and retrieves at least as well."),
        ],
        resources={"vector_store": PgVectorStore(), "embedder": EmbedderResource(), "llm": LLMResource()},
        executor=run_executor(project.settings.run_executor),
    )


defs = build_definitions()
