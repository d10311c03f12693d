"""The one Definitions object of the Corpus Refinery code location."""

from __future__ import annotations

import warnings

import dagster as dg

from .assets.chunks import build_chunks
from .assets.corpus import build_corpus_files
from .assets.documents import build_documents
from .assets.embeddings import build_embeddings
from .project import Project
from .resources.embedder import EmbedderResource
from .resources.vector_store import PgVectorStore

INGEST_JOB = "ingest"
# corpus_files is an observable source asset, which Dagster still marks beta.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_definitions(project: Project | None = None) -> dg.Definitions:
    project = project or Project.load()
    ingestion = [build_documents(project), build_chunks(project), build_embeddings(project)]
    return dg.Definitions(
        assets=[build_corpus_files(project), *ingestion],
        jobs=[dg.define_asset_job(INGEST_JOB, selection=dg.AssetSelection.assets(*ingestion),
                                  partitions_def=project.partitions,
                                  description="Documents, chunks and embeddings of one collection.")],
        resources={"vector_store": PgVectorStore(), "embedder": EmbedderResource()},
    )


defs = build_definitions()
