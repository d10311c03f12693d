"""`corpus_files`: the source folders, observed. Its data version per collection changes
exactly when the manifest entry or any selected file's path or bytes change."""

import hashlib

import dagster as dg

from ..core.corpus import Collection, scan_collection
from ..project import Project


def collection_version(collection: Collection, max_file_bytes: int) -> str:
    digest = hashlib.sha256(collection.fingerprint().encode())
    for f in scan_collection(collection, max_file_bytes):
        digest.update(f.path.encode() + b"\0" + (f.content_hash or (f.problem or "").encode()) + b"\0")
    return digest.hexdigest()[:24]


def build_corpus_files(project: Project) -> dg.SourceAsset:
    @dg.observable_source_asset(
        name="corpus_files", partitions_def=project.partitions, group_name="ingestion",
        description="Files selected by corpus.yaml, one partition per collection.",
    )
    def corpus_files(context) -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition({
            name: dg.DataVersion(collection_version(collection, project.settings.max_file_bytes))
            for name, collection in project.manifest.collections.items()
        })

    return corpus_files
