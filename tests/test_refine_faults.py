"""Refine under faults, on a real PostgreSQL with the fake OpenAI server over real HTTP: the
step's database sessions are terminated mid-run (pg_terminate_backend from another connection)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain
from dagster_project.core.refine.pipeline import RefineInterrupted, refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import write_manifest
from tests.fakes.openai_server import refinement_answer

DOCUMENTS = 80
CONCURRENCY = 4
KILL_AT = 30  # the chat request during which the step's sessions are terminated
EVERYTHING_TO_THE_MODEL = RoutingThresholds(min_words=0, min_quality=0.0)


@pytest.fixture
def notes(store, tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    for i in range(DOCUMENTS):
        (root / f"note-{i:03}.md").write_text(
            f"# Note {i}\n\n" + " ".join(f"Paragraph {i} about topic {j} and its details." for j in range(30)) + "\n")
    collection = load_manifest(write_manifest(tmp_path, {"notes": {"root": str(root), "include": ["*.md"]}})) \
        .collections["notes"]
    ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(), max_file_bytes=10**6)
    return store


def chain(fake) -> LLMChain:
    return LLMChain(models=["primary-model"], base_url=fake.base_url, api_key="sk-test-faults", prices={},
                    max_retries=0, timeout=10, concurrency=CONCURRENCY)


def refine(store, llm):
    return refine_collection(store, "notes", llm, wordpiece_counter(), budget=8000,
                             thresholds=EVERYTHING_TO_THE_MODEL, run_id="fault-run")


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def test_terminated_sessions_stop_the_model_calls_keep_what_was_stored_and_a_rerun_finishes(
        notes, db_url, fake_openai):
    fake_openai.delay = 0.2  # a slot turns over slower than the step notices a failed write
    seen = {"chat": 0, "stored_at_kill": None}
    lock = threading.Lock()

    def responder(body):
        with lock:
            seen["chat"] += 1
            kill = seen["chat"] == KILL_AT
        if kill:
            with psycopg.connect(db_url, autocommit=True) as admin:
                seen["stored_at_kill"] = admin.execute("SELECT count(*) FROM refined_documents").fetchone()[0]
                killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
                assert killed >= 1
        return refinement_answer(body)

    fake_openai.chat_responder = responder
    with pytest.raises(Exception) as failure:
        refine(notes, chain(fake_openai))
    calls_after_kill = len(fake_openai.chat_requests) - KILL_AT
    print(f"calls after the kill: {calls_after_kill}; stored at the kill: {seen['stored_at_kill']}")
    # Only what was in flight (or already prepared to go) when the first write failed.
    assert calls_after_kill <= 2 * CONCURRENCY, calls_after_kill
    assert failure.type is RefineInterrupted, failure.value
    message = str(failure.value)
    assert "results could not be stored" in message and "run the refine again" in message

    # Results are written as they come: most of those paid for before the kill were stored,
    # and nothing stored is lost.
    stored = count(db_url, "SELECT count(*) FROM refined_documents")
    assert seen["stored_at_kill"] >= KILL_AT - 2 * CONCURRENCY
    assert stored >= seen["stored_at_kill"]
    assert count(db_url, "SELECT count(DISTINCT document_id) FROM llm_calls") == stored

    # The rerun sends only the documents not stored, and ends exact.
    fake_openai.chat_responder = refinement_answer
    before = len(fake_openai.chat_requests)
    again = refine(notes, chain(fake_openai))
    assert again.skipped == stored and again.refined == DOCUMENTS - stored
    assert len(fake_openai.chat_requests) - before == DOCUMENTS - stored
    assert count(db_url, "SELECT count(*) FROM refined_documents") == DOCUMENTS
    assert count(db_url, "SELECT count(*) FROM llm_calls WHERE outcome = 'ok'") == DOCUMENTS
    assert count(db_url, "SELECT count(DISTINCT document_id) FROM llm_calls") == DOCUMENTS
