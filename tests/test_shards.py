"""A collection split into shards: its shards ingested in parallel give exactly the index one
shard gives (documents, chunks, vectors, BM25 postings and statistics, file issues), through
edits, deletes and files whose rename moves them to the other shard; unsharded collections keep
their partition keys."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest

from dagster_project.core.db.store import VectorStore
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import ManifestError, Shard, load_manifest, shard_of
from dagster_project.core.ingest.pipeline import sync_chunks, sync_documents, sync_embeddings
from tests.conftest import SAMPLE_MANIFEST, new_database, write_manifest

SETTINGS = ChunkSettings(max_tokens=96, overlap_tokens=16)
TABLES = {
    "documents": "SELECT id, path, content_hash, title, blocks, chunked_hash FROM documents ORDER BY id",
    "chunks": "SELECT id, document_id, ordinal, text, context, token_count, content_hash, tsv FROM chunks ORDER BY id",
    "vectors": "SELECT content_hash, embedding::text FROM embeddings ORDER BY content_hash",
    "postings": "SELECT chunk_id, term, weight FROM chunk_terms ORDER BY chunk_id, term",
    "bm25 df": "SELECT term, collection, df FROM chunk_term_df WHERE df > 0 ORDER BY term, collection",
    "file issues": "SELECT collection, path, severity, reason FROM ingest_errors ORDER BY path, reason",
}


def ingest(store: VectorStore, collection, shard: Shard, settings: ChunkSettings = SETTINGS) -> None:
    sync_documents(store, collection, max_file_bytes=10_000_000, shard=shard)
    sync_chunks(store, collection.name, settings, HashEmbedder().token_counter, shard=shard)
    sync_embeddings(store, collection.name, HashEmbedder(), shard=shard)


def ingest_in_parallel(url: str, manifest, settings: ChunkSettings = SETTINGS) -> None:
    collection = load_manifest(manifest).collection("kb")
    shards = [Shard("kb", i, collection.shards) for i in range(collection.shards)]
    stores = [VectorStore(url) for _ in shards]
    try:
        with ThreadPoolExecutor(len(shards)) as pool:
            for done in [pool.submit(ingest, s, collection, shard, settings) for s, shard in zip(stores, shards)]:
                done.result()
    finally:
        for s in stores:
            s.close()


def snapshot(url: str) -> dict[str, list]:
    store = VectorStore(url)
    try:
        with store.reading() as conn:
            return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        store.close()


@pytest.fixture
def corpora(tmp_path):
    """The same files under a one-shard and a two-shard manifest."""
    root = tmp_path / "kb"
    shutil.copytree(SAMPLE_MANIFEST.parent / "knowledge_base", root)
    (root / "broken.md").write_bytes(b"\xff\xfe\x00\x01 binary")
    manifests = {}
    for shards in (1, 2):
        folder = tmp_path / f"m{shards}"
        folder.mkdir()
        manifests[shards] = write_manifest(folder, {"kb": {"root": str(root), "shards": shards}})
    return root, manifests


def test_two_shards_in_parallel_build_exactly_the_index_of_one(pg_server, corpora):
    root, manifests = corpora
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert {shard_of(p, 2) for p in files} == {0, 1}  # both shards have work
    one, two = new_database(pg_server), new_database(pg_server)

    def compare():
        ingest_in_parallel(one, manifests[1])
        ingest_in_parallel(two, manifests[2])
        expected, got = snapshot(one), snapshot(two)
        for table in TABLES:
            assert got[table] == expected[table], table
        return expected

    first = compare()
    assert len(first["documents"]) == len(files) - 1 and first["vectors"] and first["postings"]
    assert [i[1] for i in first["file issues"]] == ["broken.md"]

    # An edit, a delete, and a rename that moves a file to the other shard.
    edited, deleted, *rest = [p for p in files if p.endswith(".md") and p != "broken.md"]
    (root / edited).write_text((root / edited).read_text() + "\n\n## Added\n\nA paragraph about shards.\n")
    (root / deleted).unlink()
    moved = rest[0]
    target = next(f"{moved[:-3]}-{i}.md" for i in range(100) if shard_of(f"{moved[:-3]}-{i}.md", 2) != shard_of(moved, 2))
    (root / moved).rename(root / target)
    (root / "broken.md").unlink()
    after = compare()
    paths = {row[1] for row in after["documents"]}
    assert target in paths and moved not in paths and deleted not in paths
    assert after["file issues"] == []


def test_shards_are_partitions_and_unsharded_collections_keep_their_keys(db_url, corpora, tmp_path, monkeypatch):
    from dagster_project.core.settings import Settings
    from dagster_project.definitions import INGEST_JOB, REFINE_JOB, build_definitions
    from dagster_project.project import Project

    root, _ = corpora
    manifest = write_manifest(tmp_path, {"kb": {"root": str(root), "shards": 2}, "small": {"root": str(root)}})
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("EMBED_PROVIDER", "hash")
    project = Project.load(Settings.from_env(corpus_manifest=str(manifest)))
    assert project.ingest_partitions.get_partition_keys() == ["kb/0", "kb/1", "small"]
    assert project.partitions.get_partition_keys() == ["kb", "small"]  # refinement stays per collection
    with pytest.raises(ManifestError, match="has 2 shard"):
        project.manifest.shard("kb")
    defs = build_definitions(project)
    assert defs.resolve_job_def(REFINE_JOB).partitions_def.get_partition_keys() == ["kb", "small"]
    job = defs.resolve_job_def(INGEST_JOB)
    materialized = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for key in ("kb/0", "kb/1"):
            result = job.execute_in_process(partition_key=key, instance=instance)
            assert result.success
            assert all(e.passed for e in result.get_asset_check_evaluations()), key
            materialized[key] = {e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
                                 for e in result.get_asset_materialization_events()}
    store = VectorStore(db_url)
    try:
        assert len(store.document_versions("kb")) == sum(1 for p in root.rglob("*") if p.is_file()) - 1  # broken.md
        model_id = store.model_id_by_key(store.active_model_key())
        assert store.consistency("kb", model_id, project.chunker_version).missing_vectors == 0
        held = store.collection_totals("kb")
    finally:
        store.close()
    # Each shard's materializations count its own rows, which add up to the collection's; the
    # collection's totals (after the shard's run: the last shard's are final) are collection_*.
    for asset, rows in (("documents", "documents"), ("chunks", "chunks"), ("embeddings", "vectors")):
        shards = [materialized[key][asset] for key in ("kb/0", "kb/1")]
        assert all(0 < m["dagster/row_count"] == m[f"total_{rows}"] < held[rows] for m in shards), asset
        assert sum(m["dagster/row_count"] for m in shards) == held[rows], asset
        assert shards[-1][f"collection_{rows}"] == held[rows] and shards[-1]["shard"] == "1 of 2 (kb/1)", asset
    last = materialized["kb/1"]["embeddings"]
    assert {k: last[f"collection_{k}"] for k in ("documents", "chunks", "vectors")} \
        == {k: held[k] for k in ("documents", "chunks", "vectors")}
    assert last["collection_embedding_coverage"] == 1.0

    unsharded = Project.load(Settings.from_env(corpus_manifest=str(write_manifest(tmp_path, {"kb": {"root": str(root)}}))))
    assert unsharded.ingest_partitions is unsharded.partitions
    assert unsharded.ingest_partitions.get_partition_keys() == ["kb"]


def test_cli_ingest_json_of_a_sharded_collection_gives_the_collection_totals(pg_server, tmp_path):
    """`refinery ingest --json` on a collection of three shards says what the collection holds,
    exactly as on one shard: its totals are not multiplied by the shard count, and a text two
    shards share is reused (or embedded) once. Each shard's materialization counts its own rows
    (dagster/row_count, total_*), and names the collection's under collection_*."""
    import json
    import os

    import psycopg

    from tests.conftest import refinery

    root = tmp_path / "kb"
    shutil.copytree(SAMPLE_MANIFEST.parent / "knowledge_base" / "product", root)
    # The same file under names in different shards: its chunk texts are shared by two shards.
    source = (root / "search.md").read_text()
    copies = {}
    for i in range(200):
        name = f"copy-{i}.md"
        copies.setdefault(shard_of(name, 3), name)
        if len(copies) == 3:
            break
    for name in copies.values():
        (root / name).write_text(source)
    assert len({shard_of(p.name, 3) for p in root.iterdir()}) == 3
    manifests = {}
    for n in (1, 3):
        (tmp_path / f"m{n}").mkdir()
        manifests[n] = write_manifest(tmp_path / f"m{n}", {"kb": {"root": str(root), "shards": n}})

    def env_for(url: str, name: str) -> dict:
        return {**os.environ, "DATABASE_URL": url, "DAGSTER_PG_URL": new_database(pg_server, template="template1"),
                "DAGSTER_HOME": str(tmp_path / f"dagster-{name}"), "REFINERY_HOME": str(tmp_path / f"home-{name}"),
                "EMBED_PROVIDER": "hash"}

    def ingest_json(env, shards: int) -> dict:
        done = refinery(env, "ingest", "--json", "--manifest", str(manifests[shards]))
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)["collections"]["kb"]

    def totals(line: dict) -> dict:
        return {"embedded": line["embedded"], "reused": line["reused"], "documents": line["documents"],
                **{k: line["chunks"][k] for k in ("total_documents", "total_chunks", "total_vectors",
                                                   "dagster/row_count")}}

    one_url, three_url = new_database(pg_server), new_database(pg_server)
    one, three = env_for(one_url, "one"), env_for(three_url, "three")
    unsharded = ingest_json(one, 1)
    sharded = ingest_json(three, 3)
    with psycopg.connect(one_url) as conn:
        documents, chunks, texts = conn.execute(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks), "
            "(SELECT count(DISTINCT content_hash) FROM chunks)").fetchone()
    assert totals(sharded) == totals(unsharded)
    # What the collection holds after the command (not before its vectors, as the chunks step saw it).
    assert totals(unsharded) == {"embedded": texts, "reused": 0, "documents": {"new": documents, "changed": 0,
                                                                               "unchanged": 0, "deleted": 0},
                                 "total_documents": documents, "total_chunks": chunks, "total_vectors": chunks,
                                 "dagster/row_count": chunks}

    # Nothing changed: every text is reused once, the totals are the collection's.
    again_one, again_three = ingest_json(one, 1), ingest_json(three, 3)
    assert totals(again_three) == totals(again_one)
    assert again_three["reused"] == texts and again_three["embedded"] == 0
    # The unsharded collection split into shards: nothing re-embedded, the same totals.
    split = ingest_json(one, 3)
    assert totals(split) == totals(again_one)


def test_shards_that_each_write_a_few_chunk_rows_vacuum_once_together_they_wrote_many(pg_server, corpora, monkeypatch):
    from dagster_project.core.db import chunks as chunk_tables

    root, manifests = corpora
    collection = load_manifest(manifests[2]).collection("kb")
    shards = [Shard("kb", i, 2) for i in range(2)]

    def chunks_steps(url: str) -> list[dict]:
        store = VectorStore(url)
        try:
            counts = []
            for shard in shards:
                sync_documents(store, collection, max_file_bytes=10_000_000, shard=shard)
                counts.append(sync_chunks(store, "kb", SETTINGS, HashEmbedder().token_counter, shard=shard).counts)
            return counts
        finally:
            store.close()

    monkeypatch.setattr(chunk_tables, "VACUUM_MIN_ROWS", 10**9)
    written = [c["rows_written"] for c in chunks_steps(new_database(pg_server))]
    # Neither shard alone reaches the floor; both together do: the second shard's step vacuums.
    monkeypatch.setattr(chunk_tables, "VACUUM_MIN_ROWS", max(written) + 1)
    assert sum(written) >= max(written) + 1
    assert ["vacuumed" in c for c in chunks_steps(new_database(pg_server))] == [False, True]
