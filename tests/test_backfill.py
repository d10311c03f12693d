"""Backfills after a version change, through Dagster: a new chunker version shows `chunks` (and
what follows it) unsynced with the reason, in every collection; the backfill over all
collections redoes only the out-of-date rows; a backfill that failed halfway, run again,
finishes without redoing a row that was finished."""

from __future__ import annotations

from collections import Counter

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory, StaleStatus
from dagster._core.loader import LoadingContextForTest

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest import pipeline as ingest

COLLECTIONS = ("product", "sales", "support")
INGESTION = ("documents", "chunks", "embeddings")


def definitions() -> dg.Definitions:
    from dagster_project.definitions import build_definitions
    from dagster_project.project import Project

    return build_definitions(Project.load())


def backfill(defs: dg.Definitions, instance: dg.DagsterInstance, partitions=COLLECTIONS) -> dict:
    """What a backfill of the `ingest` job over these collections launches: one run each."""
    job = defs.resolve_job_def("ingest")
    results = {}
    for partition in partitions:
        result = job.execute_in_process(partition_key=partition, instance=instance, raise_on_error=False)
        results[partition] = result
    return results


def counts(result, asset: str) -> dict:
    [materialization] = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in materialization.metadata.items()}


def status(defs, instance) -> dict:
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return {(asset, p): (resolver.get_status(dg.AssetKey(asset), p), resolver.get_stale_root_causes(dg.AssetKey(asset), p))
            for asset in INGESTION for p in COLLECTIONS}


def test_chunker_change_is_unsynced_and_a_resumed_backfill_redoes_nothing_twice(project_env):
    monkeypatch = project_env
    instance = dg.DagsterInstance.ephemeral()
    before = definitions()
    assert all(r.success for r in backfill(before, instance).values())
    assert {s for s, _ in status(before, instance).values()} == {StaleStatus.FRESH}

    # A chunker setting changes: a new chunker version, so the `chunks` code version changes.
    monkeypatch.setenv("CHUNK_MAX_TOKENS", "96")
    after = definitions()
    assert after.resolve_assets_def("chunks").code_versions_by_key[dg.AssetKey("chunks")] != \
        before.resolve_assets_def("chunks").code_versions_by_key[dg.AssetKey("chunks")]
    unsynced = status(after, instance)
    for p in COLLECTIONS:
        assert unsynced["documents", p][0] == StaleStatus.FRESH
        state, causes = unsynced["chunks", p]
        assert state == StaleStatus.STALE
        assert [(c.key.asset_key.to_user_string(), c.category, c.reason) for c in causes] == \
            [("chunks", StaleCauseCategory.CODE, "has a new code version")]

    # The backfill over every collection; `sales` fails on its third embedding call, after two
    # transactions of texts were stored.
    stored: list[str] = []
    real_embed = HashEmbedder.embed
    calls = Counter()
    failing = {"sales"}

    def embed(self, texts):
        calls["n"] += 1
        if failing and calls["n"] == 3:
            raise ConnectionError("embedding API unreachable (injected)")
        stored.extend(texts)
        return real_embed(self, texts)

    monkeypatch.setattr(HashEmbedder, "embed", embed)
    monkeypatch.setattr(ingest, "EMBED_TX_TEXTS", 8)
    first = backfill(after, instance, ["sales"])
    assert not first["sales"].success
    assert counts(first["sales"], "chunks")["documents"] > 0  # rechunked before the failure
    assert len(stored) == 16
    state, causes = status(after, instance)["embeddings", "sales"]  # what is left, and why
    assert state == StaleStatus.STALE
    assert [(c.key.asset_key.to_user_string(), c.category) for c in causes] == [("chunks", StaleCauseCategory.DATA)]
    failing.clear()
    rest = backfill(after, instance, ["product", "support"])
    assert all(r.success for r in rest.values())
    stored_by_first_attempt = list(stored)

    # Run the whole backfill again: finished collections do nothing, `sales` finishes its rows.
    stored.clear()
    again = backfill(after, instance)
    assert all(r.success for r in again.values())
    for p in ("product", "support"):
        assert counts(again[p], "chunks")["documents"] == 0
        assert counts(again[p], "embeddings")["texts_embedded"] == 0
    assert counts(again["sales"], "chunks")["documents"] == 0  # its chunks were finished
    sales_embedded = counts(again["sales"], "embeddings")
    assert sales_embedded["texts_embedded"] > 0
    assert not set(stored) & set(stored_by_first_attempt)  # no text embedded twice
    assert len(stored) == len(set(stored)) == sales_embedded["texts_embedded"]
    assert all(c.passed for r in again.values() for c in r.get_asset_check_evaluations())
    assert {s for s, _ in status(after, instance).values()} == {StaleStatus.FRESH}


def test_model_prompt_and_schema_make_the_refined_code_version(project_env):
    from dagster_project.core.refine.prompts import PROMPT_VERSION
    from dagster_project.core.refine.schema import SCHEMA_VERSION

    def version() -> str:
        return definitions().resolve_assets_def("refined_documents").code_versions_by_key[
            dg.AssetKey("refined_documents")]

    project_env.delenv("LLM_MODEL", raising=False)
    extractive = version()
    project_env.setenv("LLM_MODEL", "gpt-4o-mini")
    with_model = version()
    assert extractive == f"extractive+{PROMPT_VERSION}+{SCHEMA_VERSION}"
    assert with_model == f"gpt-4o-mini+{PROMPT_VERSION}+{SCHEMA_VERSION}"
