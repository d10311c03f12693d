"""`corpus_files`: the source folders, observed. Its data version per collection changes
exactly when the manifest entry or any selected file's path or bytes change."""

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG  # what observe() writes; no public name

from ..core.ingest.corpus import RootMissingError
from ..core.ingest.pipeline import observed_version
from ..project import Project
from .tables import kind_tags


# `documents` follows the folders: a collection whose files' data version changed (not merely
# re-observed), a code version change (parser), or a new collection. Once requested, a change is
# handled: a failed run is not retried until the next change.
# `since_last_handled` starts afresh at a deployment's first evaluation, so what is missing then
# is asked for by its own branch.
MISSING_AT_START = (dg.AutomationCondition.missing() & dg.AutomationCondition.initial_evaluation()
                    ).with_label("missing when the automation started")
ON_SOURCE_CHANGE = ((
    (dg.AutomationCondition.newly_missing()
     | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed())
     | dg.AutomationCondition.code_version_changed()).since_last_handled()
    | MISSING_AT_START
) & ~dg.AutomationCondition.any_deps_in_progress() & ~dg.AutomationCondition.in_progress()).with_label(
    "the collection's files, manifest entry or parser changed")
# Downstream assets follow their parents' materializations, and their own code version. A source
# never observed (feedback_events before any feedback) does not block them.
ON_UPSTREAM_CHANGE = (
    dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
    | (dg.AutomationCondition.code_version_changed().since_last_handled() & ~dg.AutomationCondition.in_progress())
    | MISSING_AT_START
).with_label("an upstream partition was updated, or this asset's code version changed")


def observe_on(cron: str) -> dg.AutomationCondition:
    """A source's observation: the automation sensor (whose target includes the sources) launches
    one observation run per collection at each tick of `cron`, unless one is still queued or
    running (runs of a collection wait for each other, so a slow ingest must not pile them up)."""
    return (dg.AutomationCondition.cron_tick_passed(cron) & ~dg.AutomationCondition.in_progress()).with_label(
        f"observe on cron {cron}")


def record_observed_version(context: dg.AssetExecutionContext, source: str, version: str) -> None:
    """A step records the data version of the source it read (`documents`: corpus_files;
    `refined_documents`: feedback_events) as an observation of that source: the next observation
    finds it unchanged, so the automation does not redo what a run (its own first build,
    `refinery ingest`, the UI) just did. Call it before returning the materialization."""
    context.instance.report_runless_asset_event(dg.AssetObservation(
        asset_key=source, partition=context.partition_key, tags={DATA_VERSION_TAG: version}))
    # Dagster read the inputs' versions when the step started; the materialization's provenance
    # must name this observation, or the asset shows "upstream data changed" after its own run.
    context.op_execution_context._step_execution_context.fetch_external_input_asset_version_info()


def observed_collections(context, project: Project) -> list[str]:
    """The partitions an observation covers: its run's (the automation sensor observes one
    collection or shard per run), or every one (Observe in the UI without a partition)."""
    return [context.partition_key] if context.has_partition_key else [s.key for s in project.manifest.shards()]


def report_missing_root(context, partition: str, problem: str) -> None:
    """A collection whose root is missing is observed with its last data version, the problem in
    the observation's metadata: nothing can be read and nothing may be deleted, so nothing runs
    (a run would fail, and Dagster keeps a partition observed in a failed run "Failed" after later
    observations succeed). The observation run succeeds, so its other collections go on."""
    context.log.error(problem)
    latest = context.instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("corpus_files"), asset_partitions=[partition]), limit=1).records
    version = latest[0].asset_observation.data_version if latest else None
    if version is not None:  # else a new collection: the automation builds it, and its documents step says why
        context.log_event(dg.AssetObservation(asset_key="corpus_files", partition=partition,
                                              tags={DATA_VERSION_TAG: version}, metadata={"problem": problem}))


def build_corpus_files(project: Project) -> dg.SourceAsset:
    @dg.observable_source_asset(
        name="corpus_files", partitions_def=project.ingest_partitions, group_name="ingestion",
        tags=kind_tags("python", "file"),
        description="Files selected by corpus.yaml, one partition per collection. Observed by the "
                    "automation sensor on CORPUS_OBSERVE_CRON.",
        automation_condition=observe_on(project.settings.corpus_observe_cron),
        required_resource_keys={"vector_store"},
    )
    def corpus_files(context) -> dg.DataVersionsByPartition:
        shards = [project.manifest.shard(key) for key in observed_collections(context, project)]
        store = context.resources.vector_store.store
        versions = {}
        for c, s in shards:
            try:
                versions[s.key] = dg.DataVersion(
                    observed_version(store, c, max_file_bytes=project.settings.max_file_bytes, shard=s))
            except RootMissingError as exc:
                report_missing_root(context, s.key, str(exc))
        return dg.DataVersionsByPartition(versions)

    return corpus_files
