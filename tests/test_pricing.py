"""Pricing-sensitive text never reaches a model with its numbers: the flag is decided once at
ingest (manifest, front matter or detection) and read by the feedback examples, the prompts and
the embedder; what the fake OpenAI server received over HTTP is what is checked."""

from __future__ import annotations

import json
import os
import re

import pytest

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.embed.openai_embedder import OpenAIEmbedder
from dagster_project.core.feedback.events import Feedback, record_feedback
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import (
    ingest_collection,
    sync_chunks,
    sync_embeddings,
)
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.openai_batch import BatchPolicy
from dagster_project.core.refine.llm import LLMChain, Price
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import new_database, refinery, write_manifest
from tests.fakes.openai_server import refinement_answer

FILL = " ".join([("Synchronisation keeps every device current while conflicts are resolved by the newest edit,"
                  " and offline edits wait in a local queue until the connection returns.")] * 6)
PRICE_LIST = "# Price list\n\nBasic $7731, Plus $8832, Max $9943.\n"
EXTRACTIVE_ONLY = LLMChain(models=[], base_url=None, api_key=None, prices={})


def make_collection(tmp_path, files: dict[str, str], pricing_sensitive: bool):
    root = tmp_path / "price"
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    manifest = write_manifest(tmp_path, {"price": {"root": "price", "defaults": {"pricing_sensitive": pricing_sensitive}}})
    return load_manifest(manifest).collection("price")


def refine(store, llm):
    return refine_collection(store, "price", llm, wordpiece_counter(), budget=8000,
                             thresholds=RoutingThresholds(), run_id="test-pricing")


def sensitivity(store) -> dict[str, bool]:
    with store.reading() as conn:
        return dict(conn.execute("SELECT path, pricing_sensitive FROM documents WHERE collection = 'price'").fetchall())


def test_an_example_from_a_detected_price_list_is_redacted_in_another_documents_prompt(store, tmp_path, fake_openai):
    # QA item 1: the manifest says not sensitive; the price list is only detected from its text.
    collection = make_collection(tmp_path, {"short.md": PRICE_LIST, "normal.md": f"# Sync guide\n\n{FILL}\n"},
                                 pricing_sensitive=False)
    ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    assert sensitivity(store) == {"short.md": True, "normal.md": False}  # decided once, at ingest
    assert refine(store, EXTRACTIVE_ONLY).refined == 2
    record_feedback(store, Feedback(rating=1, collection="price", path="short.md", score=5))
    record_feedback(store, Feedback(rating=-1, collection="price", path="normal.md", comment="too vague"))

    fake_openai.chat_responder = refinement_answer
    llm = LLMChain(models=["gpt-4o-mini"], base_url=fake_openai.base_url, api_key="sk-test-pricing",
                   prices={"gpt-4o-mini": Price(1.0, 2.0)}, max_retries=0, timeout=10)
    assert refine(store, llm).feedback_redos == 1
    [prompt] = fake_openai.chat_requests
    user = prompt["messages"][1]["content"]
    review = user[user.index("<review>"):user.index("<document>")]
    assert "<example>" in review and "[AMOUNT]" in review
    for price in ("7731", "8832", "9943"):
        assert price not in json.dumps(prompt)


@pytest.fixture
def embedder(fake_openai):
    return OpenAIEmbedder(model="fake-embed", dims=64, api_key="sk-test-pricing", base_url=fake_openai.base_url)


PLANS = ("# Plans\n\nPro plan 4711 seats included, billed monthly.\n\n| Plan | Price |\n|---|---|\n"
         "| Pro | 4,9 |\n| Team | 49\uff10 |\n")


def sent_numbers(fake_openai) -> list[str]:
    return [t for batch in fake_openai.embedding_inputs for t in batch if re.search(r"\d|\uff10", t)]


@pytest.mark.parametrize("flagged", [True, False], ids=["front-matter", "detected"])
def test_the_embeddings_api_never_receives_a_sensitive_documents_numbers(store, tmp_path, fake_openai, embedder,
                                                                         flagged):
    # QA item 2: a flagged (or detected) document's text went to /v1/embeddings with its numbers.
    text = PLANS if flagged else PLANS + "\nAdd-ons: $5 storage, $9 support, $12 audit log.\n"
    collection = make_collection(tmp_path, {"plans.md": text, "guide.md": f"# Guide 2\n\nPort 8080. {FILL}\n"},
                                 pricing_sensitive=False)
    if flagged:
        (collection.root / "plans.md").write_text("---\npricing_sensitive: true\n---\n" + text)
    reports = ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(),
                                max_file_bytes=10**7)
    assert reports["embeddings"].counts["embedded"] >= 2
    assert sensitivity(store) == {"plans.md": True, "guide.md": False}
    inputs = [t for batch in fake_openai.embedding_inputs for t in batch]
    assert any("[NUMBER]" in t for t in inputs)
    with_numbers = sent_numbers(fake_openai)
    assert with_numbers and all(t.startswith("Guide 2") for t in with_numbers)  # the plain document's only
    # Incremental as before: nothing unchanged is embedded again.
    before = fake_openai.request_count
    again = ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(),
                              max_file_bytes=10**7)
    assert again["embeddings"].counts["embedded"] == 0 and fake_openai.request_count == before


def test_documents_ingested_before_the_upgrade_are_decided_again_without_a_file_change(store, tmp_path, fake_openai,
                                                                                        embedder):
    collection = make_collection(tmp_path, {"short.md": PRICE_LIST}, pricing_sensitive=False)
    ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    # A row as sql/0023 finds it: never decided, the flag alone, chunks hashed from the raw text.
    with store.writing("price") as conn:
        conn.execute("UPDATE documents SET pricing_version = NULL, pricing_sensitive = false, chunked_hash = NULL")
        conn.execute("DELETE FROM embeddings")
    sync_chunks(store, "price", ChunkSettings(), embedder.token_counter)
    before = len(fake_openai.embedding_inputs)

    reports = ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(),
                                max_file_bytes=10**7)
    assert sensitivity(store) == {"short.md": True}
    assert reports["documents"].counts["unchanged"] == 1 and reports["documents"].counts["pricing_changed"] == 1
    assert reports["chunks"].counts["documents"] == 1  # re-chunked: its embedded text is redacted now
    sent = [t for batch in fake_openai.embedding_inputs[before:] for t in batch]
    assert sent and not any(re.search(r"\d", t) for t in sent), sent


def test_a_model_changes_batch_file_holds_no_sensitive_number(store, tmp_path, fake_openai):
    # The Batch API path (a model change's candidate) reads the same texts as the live path.
    collection = make_collection(tmp_path, {"plans.md": PLANS, "short.md": PRICE_LIST}, pricing_sensitive=True)
    ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    candidate = OpenAIEmbedder(api_key="sk-test-pricing", base_url=fake_openai.base_url,
                               model="text-embedding-3-small", dims=64, max_retries=0)
    report = sync_embeddings(store, "price", HashEmbedder(), candidate,
                             batch=BatchPolicy(min_items=1, poll_seconds=0.05, max_wait_seconds=30))
    texts = [t for line in fake_openai.batch_lines for t in line["input"]]
    assert report.counts["embedded_by_batch"] == len(texts) > 0 and fake_openai.embedding_inputs == []
    assert "[AMOUNT]" in " ".join(texts) and not any(re.search(r"\d|\uff10", t) for t in texts), texts


def test_refinery_ingest_with_openai_embeddings_sends_no_sensitive_number(pg_server, db_url, tmp_path, fake_openai):
    # QA item 2 as reported: `refinery ingest` with EMBED_PROVIDER=openai, a collection whose
    # defaults say pricing_sensitive: true.
    make_collection(tmp_path, {"plans.md": PLANS}, pricing_sensitive=True)
    env = dict(os.environ, DATABASE_URL=db_url, EMBED_PROVIDER="openai", EMBED_DIMS="64", OPENAI_API_KEY="sk-x-pricing",
               OPENAI_BASE_URL=fake_openai.base_url, CORPUS_MANIFEST=str(tmp_path / "corpus.yaml"),
               REFINERY_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "dagster_home"),
               DAGSTER_PG_URL=new_database(pg_server, template="template1"), AUTOMATION_SENSOR_DEFAULT="stopped")
    env.pop("LLM_MODEL", None)
    result = refinery(env, "ingest", "--collection", "price", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = [t for batch in fake_openai.embedding_inputs for t in batch]
    assert inputs and not any(re.search(r"\d|\uff10", t) for t in inputs), inputs
