"""Live status over PostgreSQL NOTIFY: a real LISTEN connection sees an ingest's and a refine's
progress as it happens, and a publisher whose connection is terminated or whose payload the
server refuses never fails the step."""

from __future__ import annotations

import json
import threading
import time

import psycopg

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest import pipeline
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import (
    ingest_collection,
    sync_chunks,
    sync_documents,
)
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.live_status import CHANNEL, LiveStatus
from dagster_project.core.refine.llm import LLMChain
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import SAMPLE_MANIFEST

STEPS = ["documents", "chunks", "embeddings"]


def listen(db_url: str) -> psycopg.Connection:
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def drain(conn: psycopg.Connection, until, timeout: float = 30.0) -> list[tuple[float, dict]]:
    """(arrival time, payload) of each message, until `until(messages)` holds or the timeout."""
    messages: list[tuple[float, dict]] = []
    deadline = time.monotonic() + timeout
    while not until(messages) and time.monotonic() < deadline:
        for notify in conn.notifies(timeout=0.2, stop_after=1):
            messages.append((time.monotonic(), json.loads(notify.payload)))
    return messages


def finished_steps(messages, collection) -> set[str]:
    return {m["step"] for _, m in messages if m["collection"] == collection and m["state"] != "running"}


def test_a_listener_sees_each_ingest_step_as_it_happens(store, db_url):
    collection = load_manifest(SAMPLE_MANIFEST).collections["product"]
    listener = listen(db_url)
    ended: dict[str, float] = {}

    def ingest():
        ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                          max_file_bytes=10**7)
        ended["at"] = time.monotonic()

    worker = threading.Thread(target=ingest)
    worker.start()
    messages = drain(listener, lambda ms: finished_steps(ms, "product") >= set(STEPS))
    worker.join()
    listener.close()

    payloads = [m for _, m in messages]
    assert [p["step"] for p in payloads if p["state"] == "done"] == STEPS  # in order, each once
    for step in STEPS:
        updates = [p for p in payloads if p["step"] == step]
        assert set(updates[0]) == {"collection", "step", "state", "done", "total", "rate", "elapsed_s"}
        assert all(p["collection"] == "product" and p["total"] > 0 for p in updates), updates
        assert [p["done"] for p in updates] == sorted(p["done"] for p in updates)
        assert updates[-1]["state"] == "done" and updates[-1]["done"] == updates[-1]["total"]
        assert updates[-1]["rate"] > 0
    # As it happens: the first step's progress arrived before the ingest was over.
    first_running = next(at for at, m in messages if m["state"] == "running")
    assert first_running < ended["at"]


def test_refine_progress_is_published(store, db_url):
    ingest_collection(store, load_manifest(SAMPLE_MANIFEST).collections["support"], embedder=HashEmbedder(),
                      chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    listener = listen(db_url)
    refine_collection(store, "support", LLMChain(models=[], base_url=None, api_key=None, prices={}),
                      wordpiece_counter(), budget=8000, thresholds=RoutingThresholds())
    messages = drain(listener, lambda ms: finished_steps(ms, "support") == {"refined_documents"})
    listener.close()
    last = messages[-1][1]
    assert (last["step"], last["state"], last["done"], last["total"]) == ("refined_documents", "done", 5, 5)


def test_a_terminated_publisher_connection_does_not_fail_the_ingest(store, db_url, monkeypatch):
    """The publisher's session is killed (pg_terminate_backend) in the middle of the chunks step:
    the step ends normally, with every row, and its final state still reaches the listener."""
    collection = load_manifest(SAMPLE_MANIFEST).collections["product"]
    listener = listen(db_url)
    killed = []

    def kill_publisher(done, total):
        if killed:
            return
        with psycopg.connect(db_url, autocommit=True) as admin:
            killed.extend(admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'refinery-live-status' AND datname = current_database()").fetchall())

    sync_documents(store, collection, max_file_bytes=10**7)
    # A documents step has just run: its publisher closed its session at the end; the chunks step's
    # opens at its first update, and is killed at the next one.
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) >= 2:
            kill_publisher(done, total)

    monkeypatch.setattr(pipeline, "CHUNK_TX_DOCUMENTS", 1)  # one update per document
    report = sync_chunks(store, "product", ChunkSettings(), HashEmbedder().token_counter, progress=progress)
    assert killed, "the publisher's session was never seen"
    assert report.counts["documents"] == 6 and report.counts["chunks"] > 0
    with store.reading() as conn:
        assert conn.execute("SELECT count(DISTINCT document_id) FROM chunks").fetchone()[0] == 6
    messages = drain(listener, lambda ms: finished_steps(ms, "product") >= {"chunks"})
    listener.close()
    final = [m for _, m in messages if m["step"] == "chunks" and m["state"] == "done"]
    assert final and final[0]["done"] == final[0]["total"] == 6


def test_a_refused_payload_or_an_unreachable_server_is_dropped_not_raised(db_url):
    too_long = LiveStatus(db_url, "x" * 9000, "documents")  # NOTIFY payloads stop at 8000 bytes
    too_long(1, 2)
    too_long.finish("done")
    assert (too_long.sent, too_long.failed) == (0, 2)

    started = time.monotonic()
    nowhere = LiveStatus("postgresql://refinery:secret@127.0.0.1:9/refinery", "product", "chunks")
    nowhere(1, 2)
    nowhere(2, 2)  # within the retry pause: not even tried
    assert (nowhere.sent, nowhere.failed) == (0, 1)
    assert time.monotonic() - started < 5
