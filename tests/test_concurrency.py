"""Concurrent runs: on one collection they take turns and leave exact state; the first index
build of a model survives two loads at once."""

from __future__ import annotations

import threading

import numpy as np

from dagster_project.core.chunking import ChunkSettings
from dagster_project.core.corpus import load_manifest
from dagster_project.core.embedders import EmbeddingModel, HashEmbedder
from dagster_project.core.ingest import ingest_collection
from dagster_project.core.store import VectorStore
from tests.conftest import SAMPLE_MANIFEST


def run_threads(targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(fn):
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - reported by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_runs_on_one_collection_take_turns_and_leave_exact_state(db_url):
    collection = load_manifest(SAMPLE_MANIFEST).collection("support")
    stores = [VectorStore(db_url), VectorStore(db_url)]
    embedder = HashEmbedder()
    try:
        reports = []
        errors = run_threads([lambda s=s: reports.append(ingest_collection(
            s, collection, embedder=embedder, chunk_settings=ChunkSettings(), max_file_bytes=10**7)) for s in stores])
        assert errors == []
        state = stores[0].consistency("support", stores[0].model_id(embedder.model),
                                      ChunkSettings().version(embedder.token_counter))
        assert (state.missing_vectors, state.orphan_vectors, state.duplicate_chunks, state.stale_documents) == (0, 0, 0, 0)
        with stores[0].reading() as conn:
            assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 5
            texts = conn.execute("SELECT count(DISTINCT content_hash) FROM chunks").fetchone()[0]
    finally:
        for s in stores:
            s.close()
    # Each step ran twice: whichever went second found the other's work done, never half of it.
    assert sorted(r["documents"].counts["new"] for r in reports) == [0, 5]
    assert sorted(r["chunks"].counts["documents"] for r in reports) == [0, 5]
    assert sum(r["embeddings"].texts_embedded for r in reports) == texts


def test_two_first_index_builds_at_once_both_succeed(db_url):
    from dagster_project.core.hashing import content_hash

    store = VectorStore(db_url)
    try:
        model_id = store.ensure_model(EmbeddingModel("test", "race", 16))
        vectors = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
        store.write_embeddings(model_id, [content_hash(str(i)) for i in range(3000)], vectors)
        built = []
        errors = run_threads([lambda: built.append(store.ensure_index(model_id, 16)) for _ in range(3)])
        assert errors == [] and sorted(built) == [False, False, True]
    finally:
        store.close()
