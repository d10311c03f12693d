"""Exact incrementality on a real PostgreSQL, counted at a fake OpenAI server over real HTTP:
only texts never embedded with the model are sent, deletes and renames propagate at once."""

from __future__ import annotations

import shutil

import pytest

from dagster_project.core.embed.openai_embedder import OpenAIEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.hashing import content_hash
from dagster_project.core.ingest.pipeline import ingest_collection
from tests.conftest import SAMPLE_MANIFEST, write_manifest

SETTINGS = ChunkSettings(max_tokens=128, overlap_tokens=16)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "kb"
    shutil.copytree(SAMPLE_MANIFEST.parent / "knowledge_base" / "product", root)
    manifest = write_manifest(tmp_path, {"kb": {"root": "kb", "include": ["**/*.md"]}})
    return root, manifest


@pytest.fixture
def embedder(fake_openai):
    return OpenAIEmbedder(model="fake-embed", dims=64, api_key="sk-test-key-0000", base_url=fake_openai.base_url)


def run(store, manifest, embedder, fake):
    before = len(fake.embedding_inputs)
    collection = load_manifest(manifest).collection("kb")
    reports = ingest_collection(store, collection, embedder=embedder, chunk_settings=SETTINGS,
                                max_file_bytes=10_000_000)
    sent = [text for request in fake.embedding_inputs[before:] for text in request]
    assert reports["embeddings"].texts_embedded == len(sent)
    return reports, sent


def chunk_hashes(store) -> set[bytes]:
    with store.reading() as conn:
        return {bytes(r[0]) for r in conn.execute("SELECT content_hash FROM chunks")}


def search_paths(store, embedder, text: str, k: int = 50) -> set[str]:
    model_id = store.model_id(embedder.model)
    vector = embedder.embed([text]).vectors[0]
    return {hit.path for hit in store.search(model_id, embedder.model.dims, vector, k=k)}


def test_first_run_embeds_each_distinct_text_once_and_rerun_embeds_nothing(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["new"] == 6
    assert len(sent) == len(set(sent)) == len(chunk_hashes(store)) > 30

    reports, sent = run(store, manifest, embedder, fake_openai)
    assert sent == []
    assert reports["documents"].counts == reports["documents"].counts | {"new": 0, "changed": 0, "unchanged": 6, "deleted": 0}
    assert reports["chunks"].counts["documents"] == 0
    assert reports["embeddings"].counts["reused"] == len(chunk_hashes(store))


def test_insert_paragraph_at_top_embeds_only_the_new_text(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    before = chunk_hashes(store)
    page = root / "sync-and-offline.md"
    text = page.read_text()
    head, body = text.split("\n# ", 1)  # after the front matter, before the first heading
    paragraph = "Tidewater notice: from May the sync engine keeps a journal of every offline edit for audit."
    page.write_text(head + "\n" + "# " + body.replace("\n\n", "\n\n" + paragraph + "\n\n", 1))

    reports, sent = run(store, manifest, embedder, fake_openai)
    after = chunk_hashes(store)
    assert reports["documents"].counts["changed"] == 1
    assert reports["chunks"].counts["documents"] == 1
    # Exactly the chunk texts that did not exist before were sent, and that is very few.
    assert {content_hash(t) for t in sent} == after - before
    assert 1 <= len(sent) <= 2
    assert any(paragraph in t for t in sent)


def postings_written(store) -> dict:
    """Each chunk's id -> the transactions that wrote its row and its BM25 postings."""
    with store.reading() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT c.id, c.xmin::text, array_agg(DISTINCT p.xmin::text ORDER BY p.xmin::text) "
            "FROM chunks c JOIN chunk_terms p ON p.chunk_id = c.id GROUP BY c.id, c.xmin")}


def test_rechunked_document_keeps_its_unchanged_chunks_and_their_postings(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    before = postings_written(store)
    page = root / "sync-and-offline.md"
    paragraph = "From May the sync engine keeps a journal of every offline edit for audit."
    page.write_text(page.read_text().replace("## How sync works", f"## Tidewater notice\n\n{paragraph}\n\n## How sync works"))

    reports, _ = run(store, manifest, embedder, fake_openai)
    after = postings_written(store)
    counts = reports["chunks"].counts
    kept = before.keys() & after.keys()
    assert counts["rows_written"] == len(after.keys() - kept) <= 2
    assert counts["rows_deleted"] == len(before.keys() - kept) <= 2
    assert counts["rows_moved"] >= 1  # the chunks after the new paragraph moved down (sql/0024)
    # A kept chunk's postings are the ones written the first time: none was deleted and inserted again.
    assert all(after[i][1] == before[i][1] for i in kept)
    with store.reading() as conn:
        ordinals = [r[0] for r in conn.execute(
            "SELECT c.ordinal FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE d.path = 'sync-and-offline.md' ORDER BY c.ordinal")]
        found = conn.execute("SELECT count(*) FROM chunks WHERE text LIKE %s", (f"%{paragraph}%",)).fetchone()[0]
    assert ordinals == list(range(len(ordinals))) and found == 1


def test_version_change_that_changes_no_chunk_writes_no_chunk_row(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    before = postings_written(store)
    with store.writing() as conn:  # as a new parser or chunker version finds them
        conn.execute("UPDATE documents SET chunker_version = 'chunker-v0'")

    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["chunks"].counts["documents"] == 6 and sent == []
    assert reports["chunks"].counts["rows_written"] == reports["chunks"].counts["rows_deleted"] == 0
    assert postings_written(store) == before


def test_steps_that_write_or_delete_many_chunk_rows_vacuum_them(store, corpus, embedder, fake_openai, monkeypatch):
    from dagster_project.core.db import chunks as chunk_tables

    monkeypatch.setattr(chunk_tables, "VACUUM_MIN_ROWS", 10)  # the sample corpus is small
    root, manifest = corpus

    def vacuums() -> set[int]:
        with store.reading() as conn:
            return {r[0] for r in conn.execute("SELECT vacuum_count FROM pg_stat_user_tables "
                                               "WHERE relname IN ('chunks', 'chunk_terms', 'chunk_term_df')")}

    reports, _ = run(store, manifest, embedder, fake_openai)  # a first load: every row new
    assert reports["chunks"].counts["vacuumed"] == 1 and vacuums() == {1}
    with store.reading() as conn:  # index-only scans of the postings skip the heap
        assert conn.execute("SELECT relallvisible FROM pg_class WHERE relname = 'chunk_terms'").fetchone()[0] > 0

    page = root / "search.md"
    page.write_text(page.read_text().replace("200 results", "250 results"))
    reports, _ = run(store, manifest, embedder, fake_openai)  # one chunk of many: autovacuum's business
    assert "vacuumed" not in reports["chunks"].counts and vacuums() == {1}

    for name in ("sync-and-offline.md", "search.md", "getting-started.md"):  # the documents step deletes their chunks
        (root / name).unlink()
    reports, _ = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["vacuumed"] == 1 and vacuums() == {2}

    assert store.prune_collections(["other"])["kb"]["chunks"] > 10  # so does `refinery prune`
    assert vacuums() == {3}


def test_edit_one_file_embeds_only_its_changed_chunks(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    before = chunk_hashes(store)
    page = root / "search.md"
    page.write_text(page.read_text().replace("200 results", "250 results"))

    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["changed"] == 1
    assert {content_hash(t) for t in sent} == chunk_hashes(store) - before
    assert len(sent) == 1 and "250 results" in sent[0]
    # The old text's vector is gone with it: nothing points at nothing.
    assert store.consistency("kb", store.model_id(embedder.model), SETTINGS.version(embedder.token_counter)).orphan_vectors == 0


def test_deleted_file_leaves_search_in_the_same_run(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    assert "security-and-data-residency.md" in search_paths(store, embedder, "customer-managed keys backups regions")
    (root / "security-and-data-residency.md").unlink()

    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["deleted"] == 1
    assert reports["documents"].counts["chunks_removed"] > 0
    assert sent == []
    assert "security-and-data-residency.md" not in search_paths(store, embedder, "customer-managed keys backups regions")
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM documents WHERE path LIKE 'security%'").fetchone()[0] == 0
        assert conn.execute(
            "SELECT count(*) FROM embeddings e WHERE NOT EXISTS "
            "(SELECT 1 FROM chunks c WHERE c.content_hash = e.content_hash)").fetchone()[0] == 0


def test_rename_moves_the_document_without_embedding_anything(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    (root / "search.md").rename(root / "finding-things.md")

    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["new"] == 1 and reports["documents"].counts["deleted"] == 1
    assert sent == []  # same text, same vectors
    paths = search_paths(store, embedder, "search operators saved searches")
    assert "finding-things.md" in paths and "search.md" not in paths


def test_model_change_embeds_everything_again_beside_the_old_vectors(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    _, first = run(store, manifest, embedder, fake_openai)
    other = OpenAIEmbedder(model="fake-embed-2", dims=32, api_key="sk-test-key-0000", base_url=fake_openai.base_url)
    _, second = run(store, manifest, other, fake_openai)
    assert sorted(second) == sorted(first)
    with store.reading() as conn:
        assert conn.execute("SELECT count(DISTINCT model_id) FROM embeddings").fetchone()[0] == 2


def test_failed_embedding_call_keeps_stored_rows_and_rerun_finishes(store, corpus, embedder, fake_openai, monkeypatch):
    from dagster_project.core.embed.base import EmbeddingError
    from dagster_project.core.ingest import pipeline as ingest_module

    root, manifest = corpus
    monkeypatch.setattr(ingest_module, "EMBED_TX_TEXTS", 10)  # several transactions
    failing = OpenAIEmbedder(model="fake-embed", dims=64, api_key="sk-test-key-0000",
                             base_url=fake_openai.base_url, max_retries=0)
    calls = {"n": 0}
    original = failing.embed

    def flaky(texts):
        calls["n"] += 1
        if calls["n"] == 3:  # the third request fails after two stored batches
            fake_openai.fail_next(500)
        return original(texts)

    monkeypatch.setattr(failing, "embed", flaky)
    collection = load_manifest(manifest).collection("kb")
    with pytest.raises(EmbeddingError):
        ingest_collection(store, collection, embedder=failing, chunk_settings=SETTINGS, max_file_bytes=10**7)
    with store.reading() as conn:
        stored = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    assert stored == 20  # the two finished batches were kept

    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["embeddings"].counts["reused"] == 20
    state = store.consistency("kb", store.model_id(embedder.model), SETTINGS.version(embedder.token_counter))
    assert state.missing_vectors == 0


def test_emptied_file_leaves_search(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    assert "security-and-data-residency.md" in search_paths(store, embedder, "customer-managed keys backups regions")
    (root / "security-and-data-residency.md").write_text("")
    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["changed"] == 1 and sent == []
    assert "security-and-data-residency.md" not in search_paths(store, embedder, "customer-managed keys backups regions")


def test_front_matter_embed_mode_is_case_insensitive_and_unknown_values_never_widen(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    page = root / "search.md"
    page.write_text(page.read_text().replace("---\n", "---\nembed_mode: Skip\n", 1))
    (root / "sync-and-offline.md").write_text(
        (root / "sync-and-offline.md").read_text().replace("---\n", "---\nembed_mode: everything\n", 1))
    run(store, manifest, embedder, fake_openai)
    with store.reading() as conn:
        modes = dict(conn.execute("SELECT path, embed_mode FROM documents"))
        chunks = dict(conn.execute("SELECT d.path, count(c.id) FROM documents d LEFT JOIN chunks c "
                                   "ON c.document_id = d.id GROUP BY d.path"))
    assert modes["search.md"] == "skip" and chunks["search.md"] == 0
    assert modes["sync-and-offline.md"] == "metadata_only" and chunks["sync-and-offline.md"] == 1


def test_manifest_defaults_change_reaches_unchanged_files(store, corpus, embedder, fake_openai, tmp_path):
    from tests.conftest import write_manifest

    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    write_manifest(tmp_path, {"kb": {"root": "kb", "include": ["**/*.md"],
                                     "defaults": {"category": "internal", "embed_mode": "skip"}}})
    reports, sent = run(store, manifest, embedder, fake_openai)
    # Front matter may still override per file; everything else takes the new defaults.
    assert reports["documents"].counts["changed"] == 6 and sent == []
    with store.reading() as conn:
        rows = conn.execute("SELECT category, embed_mode, (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) "
                            "FROM documents d").fetchall()
    assert all(category == "internal" and mode == "skip" and n == 0 for category, mode, n in rows), rows


def test_collection_removed_from_the_manifest_is_pruned(store, corpus, embedder, fake_openai):
    root, manifest = corpus
    run(store, manifest, embedder, fake_openai)
    assert store.prune_collections(["kb"]) == {}
    with store.reading() as conn:
        chunks, vectors = conn.execute("SELECT count(*), (SELECT count(*) FROM embeddings) FROM chunks").fetchone()
    expected = {"kb": {"documents": 6, "chunks": chunks, "vectors": vectors, "refined": 0, "file_issues": 0}}
    assert store.collections_outside(["other"]) == expected
    assert store.prune_collections(["other"]) == expected
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 0
    assert search_paths(store, embedder, "sync offline conflict copies") == set()


def test_model_of_unknown_size_costs_no_request_once_stored(store, corpus, fake_openai):
    """An OpenAI-compatible model the client does not know (e.g. on Ollama): its size is
    learned once, then read back from the store, so a no-change rerun sends nothing."""
    root, manifest = corpus
    unknown = lambda: OpenAIEmbedder(model="nomic-embed-text", api_key="sk-test-key-0000",  # noqa: E731
                                     base_url=fake_openai.base_url)
    ingest_collection(store, load_manifest(manifest).collection("kb"), embedder=unknown(),
                      chunk_settings=SETTINGS, max_file_bytes=10**7)  # learns the size (one probe)
    before = fake_openai.request_count
    reports, sent = run(store, manifest, unknown(), fake_openai)
    assert fake_openai.request_count == before and sent == []
    assert store.resolve_model_key("openai:nomic-embed-text:auto") == "openai:nomic-embed-text:64"
