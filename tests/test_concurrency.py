"""Concurrent runs: on one collection they take turns and leave exact state; on different
collections they proceed in parallel, up to the embedding pool's limit; the first index build of
a model survives two loads at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime

import dagster as dg
import numpy as np
import psycopg
import pytest

from dagster_project.core.db.store import VectorStore
from dagster_project.core.embed.base import EmbeddingModel
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST, new_database


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
    from dagster_project.core.ingest.hashing import content_hash

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


# ------------------------------------------------------------------ through Dagster
# Real runs: `refinery ingest` processes, each a Dagster run on one Postgres-backed instance, so
# pool slots are claimed as in a deployment. The test holds a SHARE lock on `embedding_models`: the first write of
# every embeddings step (ensure_model) waits on it inside the step, so the test can see from
# pg_locks which steps are in flight at the same moment, and then let them all finish.

STEP_LOCKS = """
    SELECT l.granted, count(*) FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.objid::bigint = (hashtext('refinery-step:' || %s)::bigint & 4294967295)
    GROUP BY l.granted"""
EMBEDDINGS_STEPS_IN_FLIGHT = """
    SELECT count(*) FROM pg_locks WHERE relation = 'embedding_models'::regclass AND NOT granted"""
WAIT_SECONDS = 90


@pytest.fixture
def dagster_runs(pg_server, db_url, tmp_path):
    """`refinery ingest --collection C` in its own process (Dagster's per-run logging setup is not
    safe for two runs in one process), against a fresh Postgres-backed instance and the hash
    embedder; returns (start, env): start(collection, **env overrides) -> Popen."""
    env = dict(os.environ, DATABASE_URL=db_url, EMBED_PROVIDER="hash", CORPUS_MANIFEST=str(SAMPLE_MANIFEST),
               REFINERY_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "dagster_home"),
               DAGSTER_PG_URL=new_database(pg_server, template="template1"))
    (tmp_path / "dagster_home").mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster_home")  # as `refinery` does
    processes: list[subprocess.Popen] = []

    def start(collection: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "ingest", "--collection", collection,
                                    "--json"], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        processes.append(process)
        return process

    yield start, env
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def finish(processes: list[subprocess.Popen]) -> list[dict]:
    """Each run's JSON report, once it has succeeded."""
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=WAIT_SECONDS)
        assert process.returncode == 0, err[-3000:]
        reports.append(json.loads(out))
    return reports


@contextmanager
def dagster_instance(env: dict):
    from unittest import mock

    from dagster_project.core.db.pg import dagster_storage_url

    with mock.patch.dict(os.environ, {"DAGSTER_PG_URL": dagster_storage_url(env["DAGSTER_PG_URL"])}), \
            dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        yield instance


def wait_for(condition, what: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            ended = [p.communicate()[1][-2000:] for p in processes if p.poll() is not None]
            pytest.fail(f"never saw that {what}; runs that ended: {ended}", pytrace=False)
        time.sleep(0.05)


def step_locks(conn, collection: str) -> dict[bool, int]:
    return dict(conn.execute(STEP_LOCKS, (collection,)).fetchall())


def step_windows(db_url: str, step: str) -> list[tuple[str, datetime, datetime]]:
    """(collection, start, end) of each recorded step: `seconds` is measured inside the step lock."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT collection, finished_at - make_interval(secs => seconds), finished_at FROM ingestion_runs "
            "WHERE step = %s ORDER BY finished_at", (step,)).fetchall()


def overlap(a, b) -> bool:
    return a[1] < b[2] and b[1] < a[2]


@pytest.mark.parametrize("pool_limit", [2, 1])
def test_runs_on_two_collections_embed_in_parallel_up_to_the_pool_limit(db_url, dagster_runs, pool_limit):
    from dagster_project.pools import EMBEDDING_POOL, pool_usage

    start, env = dagster_runs
    env["EMBEDDING_POOL_LIMIT"] = str(pool_limit)  # `refinery` sets the pool's limit in the instance
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url, autocommit=True) as watcher:
        holder.execute("LOCK TABLE embedding_models IN SHARE MODE")
        processes = [start("support"), start("product")]
        in_flight = lambda: watcher.execute(EMBEDDINGS_STEPS_IN_FLIGHT).fetchone()[0]  # noqa: E731
        if pool_limit == 2:
            # Both embeddings steps are inside their step (each holding its collection's lock) at once.
            wait_for(lambda: in_flight() == 2 and step_locks(watcher, "support").get(True) == 1
                     and step_locks(watcher, "product").get(True) == 1, "both embeddings steps are in flight", processes)
        else:
            # One is in flight; the other waits for the pool's only slot, outside its step.
            with dagster_instance(env) as instance:
                wait_for(lambda: in_flight() == 1 and pool_usage(instance)[EMBEDDING_POOL]["waiting"] == 1,
                         "one embeddings step runs and the other waits for the pool", processes)
                time.sleep(1.0)
                assert in_flight() == 1 and pool_usage(instance)[EMBEDDING_POOL] == {
                    "limit": 1, "running": 1, "waiting": 1}
        holder.rollback()
        finish(processes)
    (a, b) = step_windows(db_url, "embeddings")
    assert {a[0], b[0]} == {"support", "product"}
    assert overlap(a, b) is (pool_limit == 2)


def test_two_dagster_runs_on_one_collection_serialize_and_leave_the_state_of_one(db_url, dagster_runs):
    start, _ = dagster_runs
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url, autocommit=True) as watcher:
        holder.execute("LOCK TABLE embedding_models IN SHARE MODE")
        processes = [start("support"), start("support")]
        # One run's embeddings step holds the collection; the other run waits for it.
        wait_for(lambda: watcher.execute(EMBEDDINGS_STEPS_IN_FLIGHT).fetchone()[0] == 1
                 and step_locks(watcher, "support") == {True: 1, False: 1},
                 "one run holds the collection and the other waits for it", processes)
        holder.rollback()
        reports = finish(processes)
    assert [r["collections"]["support"]["success"] for r in reports] == [True, True]

    store = VectorStore(db_url)
    try:
        embedder = HashEmbedder()
        state = store.consistency("support", store.model_id(embedder.model),
                                  ChunkSettings().version(embedder.token_counter))
        with store.reading() as conn:
            documents = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks, texts = conn.execute("SELECT count(*), count(DISTINCT content_hash) FROM chunks").fetchone()
            vectors = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
            steps = conn.execute("SELECT step, counts FROM ingestion_runs ORDER BY id").fetchall()
    finally:
        store.close()
    assert (state.missing_vectors, state.orphan_vectors, state.duplicate_chunks, state.stale_documents) == (0, 0, 0, 0)
    assert documents == 5 and vectors == texts and chunks == state.live_chunks
    # Whichever run went second found the first's work done: it added nothing.
    assert sorted(c["new"] for s, c in steps if s == "documents") == [0, 5]
    assert sorted(c["chunks"] for s, c in steps if s == "chunks") == [0, chunks]
    assert sorted(c["embedded"] for s, c in steps if s == "embeddings") == [0, texts]
