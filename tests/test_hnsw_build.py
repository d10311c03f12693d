"""The first HNSW build gets the maintenance_work_mem its graph needs: past it, pgvector goes on
inserting into the index on disk, many times slower (625 s against 221 s for 300k vectors). On a
real server configured with 1 MB, checked through pgvector's own "no longer fits" notice."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from dagster_project.core.db import embeddings as embedding_tables
from dagster_project.core.db.store import VectorStore
from dagster_project.core.embed.base import EmbeddingModel
from dagster_project.core.ingest.hashing import content_hash

ROWS, DIMS = 3000, 384
NOT_FITTING = "no longer fits into maintenance_work_mem"


@pytest.fixture
def loaded(db_url):
    """ROWS vectors of one model, on a database whose maintenance_work_mem is 1 MB."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET maintenance_work_mem = \'1MB\'')
    store = VectorStore(db_url)
    model_id = store.ensure_model(EmbeddingModel("test", "memory", DIMS))
    vectors = np.random.default_rng(0).normal(size=(ROWS, DIMS)).astype(np.float32)
    store.write_embeddings(model_id, [content_hash(str(i)) for i in range(ROWS)], vectors)
    yield store, model_id
    store.close()


def build_notices(db_url: str, megabytes: float) -> list[str]:
    notices: list[str] = []
    with psycopg.connect(db_url) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute(f"SET LOCAL maintenance_work_mem = '{int(megabytes * 1024)}kB'")
        conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        conn.execute(f"CREATE INDEX probe ON embeddings USING hnsw ((embedding::vector({DIMS})) vector_cosine_ops)")
        conn.rollback()
    return notices


def test_the_estimate_covers_what_pgvector_holds_per_vector(loaded, db_url, monkeypatch):
    monkeypatch.setattr(embedding_tables, "HNSW_BUILD_MEMORY_FLOOR_MB", 1)
    estimate = embedding_tables.hnsw_build_memory_mb(ROWS, DIMS)
    assert not any(NOT_FITTING in n for n in build_notices(db_url, estimate))
    assert any(NOT_FITTING in n for n in build_notices(db_url, estimate * 0.7))  # the probe sees it when it happens


def test_the_first_build_sizes_its_memory_from_the_rows(loaded, monkeypatch):
    store, model_id = loaded
    monkeypatch.setattr(embedding_tables, "HNSW_BUILD_MEMORY_FLOOR_MB", 1)
    warnings: list[str] = []
    assert store.ensure_index(model_id, DIMS, warnings)
    assert warnings == []


def test_a_build_beyond_the_cap_says_so(loaded, monkeypatch):
    store, model_id = loaded
    monkeypatch.setattr(embedding_tables, "HNSW_BUILD_MEMORY_FLOOR_MB", 1)
    monkeypatch.setattr(embedding_tables, "HNSW_BUILD_MEMORY_CAP_MB", 1)
    warnings: list[str] = []
    assert store.ensure_index(model_id, DIMS, warnings)
    assert len(warnings) == 1 and NOT_FITTING in warnings[0] and "maintenance_work_mem" in warnings[0]
