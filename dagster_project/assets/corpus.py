"""`corpus_files`: the source folders, observed. Its data version per collection changes
exactly when the manifest entry or any selected file's path or bytes change."""

import hashlib

import dagster as dg

from ..core.corpus import Collection, scan_collection
from ..project import Project
from .tables import kind_tags


def collection_version(collection: Collection, max_file_bytes: int) -> str:
    digest = hashlib.sha256(collection.fingerprint().encode())
    for f in scan_collection(collection, max_file_bytes):
        digest.update(f.path.encode() + b"\0" + (f.content_hash or (f.problem or "").encode()) + b"\0")
    return digest.hexdigest()[:24]


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


def build_corpus_files(project: Project) -> dg.SourceAsset:
    @dg.observable_source_asset(
        name="corpus_files", partitions_def=project.partitions, group_name="ingestion",
        tags=kind_tags("python", "file"),
        description="Files selected by corpus.yaml, one partition per collection. Observed by the "
                    "automation sensor on CORPUS_OBSERVE_CRON.",
        # the automation sensor observes it at each tick of the cron
        automation_condition=dg.AutomationCondition.cron_tick_passed(project.settings.corpus_observe_cron),
    )
    def corpus_files(context) -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition({
            name: dg.DataVersion(collection_version(collection, project.settings.max_file_bytes))
            for name, collection in project.manifest.collections.items()
        })

    return corpus_files
