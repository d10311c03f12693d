"""Text search over Chinese, Japanese and Korean documents: words inside unspaced sentences are
found (CJK runs indexed as character bigrams, sql/0013), a collection sets its own text search
configuration, and an English collection beside it keeps its stemming."""

from __future__ import annotations

import shutil
import uuid

import psycopg
import pytest

from dagster_project.core.db.migrations import migrate
from dagster_project.core.db.store import VectorStore
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection, sync_chunks
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.settings import SQL_DIR
from tests.conftest import new_database, write_manifest

CJK = {
    "tokyo.md": "# 東京の天気\n\n東京都の天気は明日から晴れになる見込みです。気温は二十度まで上がります。\n",
    "beijing.md": "# 北京旅游\n\n我们明年春天计划去北京参观故宫和长城，还想品尝烤鸭。\n",
    "seoul.md": "# 서울 안내\n\n서울의 지하철은 깨끗하고 빠르며 공항까지 연결됩니다.\n",
    "osaka.md": "# 大阪の食べ物\n\n大阪ではたこ焼きとお好み焼きが有名で、道頓堀に店が多いです。毎年の大阪マラソン (running) も人気です。\n",
}
ENGLISH = {"runners.md": "# Training\n\nThe runners were running intervals every morning before work.\n"}


@pytest.fixture
def indexed(store, tmp_path):
    for folder, files in (("cjk", CJK), ("en", ENGLISH)):
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text, encoding="utf-8")
    manifest = load_manifest(write_manifest(tmp_path, {
        "cjk": {"root": "cjk", "text_search_config": "simple"}, "en": {"root": "en"}}))
    for name, collection in manifest.collections.items():
        settings = ChunkSettings(text_search_config=collection.text_search_config or "english")
        ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=settings, max_file_bytes=10**6)
    return store


def text_hits(store, query: str) -> list[str]:
    return [h.path for h in store.search(None, 0, None, k=3, mode="text", query_text=query)]


@pytest.mark.parametrize(("query", "path"), [
    ("天気", "tokyo.md"),  # a word in the middle of an unspaced Japanese sentence
    ("明日の天気は晴れ", "tokyo.md"),  # a whole phrase, split the same way as the chunks
    ("故宫", "beijing.md"),
    ("长城和烤鸭", "beijing.md"),
    ("지하철", "seoul.md"),  # Korean: a word with its particle attached in the text (지하철은)
    ("たこ焼き", "osaka.md"),
])
def test_cjk_words_inside_sentences_are_found(indexed, query, path):
    assert text_hits(indexed, query)[:1] == [path]


def test_each_collection_keeps_its_configuration_and_english_keeps_stemming(indexed):
    with indexed.reading() as conn:
        configs = dict(conn.execute("SELECT DISTINCT collection, ts_config::text FROM chunks").fetchall())
    assert configs == {"cjk": "simple", "en": "english"}
    assert text_hits(indexed, "run") == ["runners.md"]  # stemmed: running -> run
    assert text_hits(indexed, "明日") == ["tokyo.md"] and text_hits(indexed, "the") == []
    # The query is read in each collection's configuration: unstemmed, "running" is found in the
    # `simple` collection too.
    assert set(text_hits(indexed, "running")) == {"runners.md", "osaka.md"}


def test_cjk_chunks_indexed_before_the_migration_become_searchable_on_the_next_run(pg_server, tmp_path):
    """sql/0013 on a database that already holds CJK chunks: their postings (whole runs) are
    dropped and the collection marked, and the next chunks step rebuilds them as bigrams."""
    before = tmp_path / "sql"
    before.mkdir()
    for path in SQL_DIR.glob("*.sql"):
        if path.name < "0013":
            shutil.copy(path, before / path.name)
    url = new_database(pg_server, "template0")
    migrate(url, before)
    settings, counter = ChunkSettings(), wordpiece_counter()
    document, chunk = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO documents (id, collection, path, content_hash, size_bytes, format, title, embed_mode, "
                     "blocks, chunked_hash, chunker_version) VALUES (%s, 'old', 'tokyo.md', '\\x01', 1, 'markdown', "
                     "'東京', 'full', '[]', '\\x01', %s)", (document, settings.version(counter)))
        conn.execute("INSERT INTO chunks (id, document_id, collection, ordinal, heading_path, text, token_count, "
                     "content_hash, ts_config) VALUES (%s, %s, 'old', 0, '{}', '東京都の天気は明日から晴れ', 9, '\\x02', "
                     "'simple')", (chunk, document))
    migrate(url)
    store = VectorStore(url)
    try:
        assert store.text_index_pending("old")
        sync_chunks(store, "old", settings, counter)
        assert text_hits(store, "天気") == ["tokyo.md"] and not store.text_index_pending("old")
    finally:
        store.close()
