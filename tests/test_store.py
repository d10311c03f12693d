"""Migrations, roles, search filters and the consistency checks, on a real PostgreSQL."""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest

from dagster_project.core.db.migrations import MigrationError, migrate
from dagster_project.core.db.store import VectorStore
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from tests.conftest import SAMPLE_MANIFEST, new_database

# ------------------------------------------------------------------ migrations

def test_migrations_apply_in_order_once(pg_server):
    url = new_database(pg_server, template="template1")
    applied = migrate(url)
    assert applied == sorted(applied) and applied[0].startswith("0001_")
    assert migrate(url) == []
    with psycopg.connect(url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"documents", "chunks", "embeddings", "ingestion_runs", "ingest_errors", "schema_migrations"} <= tables


def test_edited_migration_is_refused_with_a_clear_message(pg_server, tmp_path):
    url = new_database(pg_server, template="template1")
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    migrate(url, sql_dir)
    (sql_dir / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")
    with pytest.raises(MigrationError, match="0001_first.sql was edited.*new, higher-numbered file"):
        migrate(url, sql_dir)


def test_failed_migration_rolls_back_alone(pg_server, tmp_path):
    url = new_database(pg_server, template="template1")
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (sql_dir / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match=r"migration 0002_bad.sql failed and was rolled back: .*no_such_function"):
        migrate(url, sql_dir)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('ok') IS NOT NULL, to_regclass('half') IS NULL").fetchone() == (True, True)
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [1]


def test_deleted_or_out_of_order_migrations_are_refused(pg_server, tmp_path):
    url = new_database(pg_server, template="template1")
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    for name in ("0001_a.sql", "0003_c.sql"):
        (sql_dir / name).write_text(f"CREATE TABLE t_{name[5]} (id int);")
    migrate(url, sql_dir)
    (sql_dir / "0002_b.sql").write_text("CREATE TABLE t_b (id int);")  # written after 0003 was applied
    with pytest.raises(MigrationError, match=r"0002_b.sql is numbered before the last applied one \(0003_c.sql\)"):
        migrate(url, sql_dir)
    (sql_dir / "0002_b.sql").unlink()
    (sql_dir / "0001_a.sql").unlink()
    with pytest.raises(MigrationError, match=r"applied migration 0001_a.sql is missing"):
        migrate(url, sql_dir)
    with psycopg.connect(url) as conn:  # nothing ran
        assert conn.execute("SELECT to_regclass('t_b') IS NULL").fetchone() == (True,)


def test_concurrent_migrators_serialize(pg_server):
    url = new_database(pg_server, template="template1")
    results, errors = [], []

    def run():
        try:
            results.append(migrate(url))
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results)[-1] > 0 and sum(1 for r in results if r) == 1


# ------------------------------------------------------------------ roles

def test_search_role_cannot_write(store):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with store.reading() as conn:
            conn.execute("DELETE FROM documents")


# ------------------------------------------------------------------ search

@pytest.fixture
def sample_index(store):
    embedder = HashEmbedder()
    manifest = load_manifest(SAMPLE_MANIFEST)
    for collection in manifest.collections.values():
        ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(),
                          max_file_bytes=10**7)
    return store, embedder


def _search(store, embedder, text, k=5, **filters):
    model_id = store.model_id(embedder.model)
    return store.search(model_id, embedder.model.dims, embedder.embed([text]).vectors[0], k=k, filters=filters)


def test_search_finds_the_page_and_reports_heading_path(sample_index):
    store, embedder = sample_index
    hits = _search(*sample_index, "conflict copy yellow border keep both", k=3)
    assert hits[0].path == "sync-and-offline.md"
    assert hits[0].heading_path[0] == "Sync and offline mode"
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("filters", [{"collection": "sales"}, {"doc_type": "runbook"}, {"status": "draft"},
                                     {"category": "support", "doc_type": "faq"}])
def test_selective_filters_still_return_k_hits(sample_index, filters):
    store, embedder = sample_index
    with store.reading() as conn:
        where = " AND ".join(f"d.{k} = %s" for k in filters)
        available = conn.execute(f"SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id WHERE {where}",
                                 list(filters.values())).fetchone()[0]
    assert available > 0
    k = min(10, available)
    hits = _search(store, embedder, "how do I recover my account or pay an invoice", k=k, **filters)
    assert len(hits) == k
    with store.reading() as conn:
        for hit in hits:
            row = conn.execute("SELECT collection, category, doc_type, status FROM documents WHERE path = %s",
                               (hit.path,)).fetchone()
            assert all(row[("collection", "category", "doc_type", "status").index(col)] == val
                       for col, val in filters.items())


def test_filtered_search_through_the_hnsw_index_with_iterative_scan(sample_index, db_url, monkeypatch):
    """As on a big corpus, where the planner picks the index: the filter is applied while the
    index is scanned, and the scan goes on until k rows pass."""
    from dagster_project.core.search import hybrid as search_module

    store, embedder = sample_index
    from urllib.parse import urlsplit

    dbname = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(db_url, autocommit=True) as conn:  # what a large table makes the planner do
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(f'ALTER DATABASE "{dbname}" SET {setting} = off')
    monkeypatch.setattr(search_module, "EXACT_SEARCH_MAX_ROWS", 0)
    forced = VectorStore(db_url)
    try:
        model_id = forced.model_id(embedder.model)
        query = embedder.embed(["recover a locked account"]).vectors[0]
        where, params = forced._search_filters({"collection": "sales"})
        with forced.reading() as conn:
            conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            sql = forced.search_sql(384, where, exact=False, model_id=model_id, k=10)
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, {**params, "q": query}))
        assert f"embeddings_hnsw_{model_id}" in plan
        hits = forced.search(model_id, 384, query, k=10, filters={"collection": "sales"})
        assert len(hits) == 10 and {h.collection for h in hits} == {"sales"}
    finally:
        forced.close()


def test_unknown_filter_is_refused(sample_index):
    with pytest.raises(ValueError, match="unknown filter 'author'"):
        _search(*sample_index, "x", author="me")


def test_search_uses_the_model_hnsw_index(sample_index):
    store, embedder = sample_index
    model_id = store.model_id(embedder.model)
    assert store.has_index(model_id)
    with store.reading() as conn:
        # On a table this small a sort is cheaper; forbid it to see the index match the expression.
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            conn.execute(f"SET LOCAL {setting} = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT 1 FROM embeddings e WHERE e.model_id = %s "
            "ORDER BY (embedding::vector(384)) <=> %s::vector(384) LIMIT 5",
            (model_id, np.zeros(384, dtype=np.float32) + 0.1)))
    assert f"embeddings_hnsw_{model_id}" in plan


def test_repeated_searches_reuse_one_generic_plan(sample_index, db_url):
    """A search is planned once per connection, not once per query: the statement carries the
    model as a literal, so the generic plan can use the model's partial HNSW index and the
    planner keeps it (measured: 1.2 ms of planning per hybrid search on the PEP corpus)."""
    from urllib.parse import urlsplit

    _, embedder = sample_index
    dbname = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(db_url, autocommit=True) as conn:  # make the index the only good plan
        for setting in ("enable_seqscan", "enable_sort"):
            conn.execute(f'ALTER DATABASE "{dbname}" SET {setting} = off')
    single = VectorStore(db_url, max_connections=1)
    try:
        model_id = single.model_id(embedder.model)
        sql = single.search_sql(384, [], False, "hybrid", model_id=model_id, k=5)
        for name, number in (("q", 1), ("text", 2), ("cfg", 3)):
            sql = sql.replace(f"%({name})s", f"${number}")
        with single.reading() as conn:
            generic_plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN (GENERIC_PLAN) {sql}"))
        assert f"embeddings_hnsw_{model_id}" in generic_plan
        for text in ["locked account", "refund policy", "export a report", "offline sync"] * 3:
            hits = single.search(model_id, 384, embedder.embed([text]).vectors[0], k=5, mode="hybrid",
                                 query_text=text)
            assert hits
        with single.reading() as conn:
            generic, custom = conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE 'WITH hits AS%%'").fetchone()
    finally:
        single.close()
    assert generic >= 6 and custom <= 5


# ------------------------------------------------------------------ consistency checks

def test_checks_catch_an_orphan_vector_a_missing_vector_and_duplicates(sample_index):
    store, embedder = sample_index
    model_id = store.model_id(embedder.model)
    version = ChunkSettings().version(embedder.token_counter)
    clean = store.consistency("product", model_id, version)
    assert (clean.missing_vectors, clean.orphan_vectors, clean.orphan_chunks, clean.duplicate_chunks,
            clean.stale_documents) == (0, 0, 0, 0, 0)
    with store.writing() as conn:
        conn.execute("INSERT INTO embeddings (model_id, content_hash, embedding) VALUES (%s, %s, %s)",
                     (model_id, b"\x00" * 32, np.ones(384, dtype=np.float32)))
        victim = conn.execute("SELECT content_hash FROM chunks WHERE collection = 'product' LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM embeddings WHERE content_hash = %s", (victim,))
        conn.execute(
            "INSERT INTO chunks (id, document_id, collection, ordinal, heading_path, text, token_count, content_hash) "
            "SELECT gen_random_uuid(), document_id, collection, ordinal + 1000, heading_path, text, token_count, "
            "content_hash FROM chunks WHERE collection = 'product' LIMIT 1")
    broken = store.consistency("product", model_id, version)
    assert broken.orphan_vectors == 1
    assert broken.missing_vectors >= 1
    assert broken.duplicate_chunks == 1


def test_the_texts_to_embed_stream_closes_quietly_when_its_server_connection_died(sample_index, db_url):
    # A step that loses the server mid-stream reports one clear error; the stream's cleanup must not
    # raise again (in a generator finalized later, that is a traceback on the user's terminal).
    store, embedder = sample_index
    other = store.ensure_model(HashEmbedder(dims=64).model)  # a model with every text still to embed
    stream = store.texts_to_embed("product", other, 1)
    assert len(next(stream)) == 1
    with psycopg.connect(db_url, autocommit=True) as conn:
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE query LIKE '%%texts_to_embed%%' AND pid <> pg_backend_pid()").fetchone()[0]
    assert killed == 1
    stream.close()  # raised OperationalError before
