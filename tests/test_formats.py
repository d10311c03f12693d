"""PDF, Word and PowerPoint files ingested on a real PostgreSQL: each bad file (encrypted, scanned,
corrupt, zip bomb, too slow) is recorded with its reason while the rest of the collection is
indexed; search hits say the page or slide; only changed files are parsed again and only new
texts embedded; pricing redaction covers the text of every format."""

from __future__ import annotations

import re

import pytest

from dagster_project.core.embed.openai_embedder import OpenAIEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import sync_chunks, sync_documents, sync_embeddings
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain, Price
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import write_manifest
from tests.fakes.documents import make_docx, make_image_only_pdf, make_long_pdf, make_pdf, make_pptx, make_zip_bomb
from tests.fakes.openai_server import refinement_answer

TIME_LIMIT = 1.5  # seconds per file; the long PDF needs several


def good_files() -> dict[str, bytes]:
    return {
        "handbook.pdf": make_pdf([[(22, "Kestrel Care"), (11, "Kestrels need a nest box facing east.")],
                                  [(16, "Feeding"), (11, "Feed the kestrel chicks twice a day.")]], title="Kestrel handbook"),
        "onboarding.docx": make_docx([("h1", "Onboarding"), ("p", "Every new hire receives a walrus badge."),
                                      ("page_break", None), ("h2", "Equipment"),
                                      ("p", "Laptops are collected from the heron desk.")]),
        "review.pptx": make_pptx([{"title": "Quarterly review", "bullets": ["Pelican revenue grew."]},
                                  {"title": "Next steps", "bullets": ["Hire two flamingo engineers."]}]),
    }


BAD_FILES = {
    "locked.pdf": (lambda: make_pdf([[(11, "Secret plans")]], password="pw"), "encrypted PDF"),
    "scan.pdf": (make_image_only_pdf, "no text layer"),
    "corrupt.docx": (lambda: make_docx([("p", "Fine")])[:300], "corrupt Word (.docx) file"),
    "bomb.pptx": (make_zip_bomb, "zip bomb"),
    "slow.pdf": (lambda: make_long_pdf(2000), "took over 1.5 s"),
}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name, data in good_files().items():
        (root / name).write_bytes(data)
    for name, (make, _) in BAD_FILES.items():
        (root / name).write_bytes(make())
    manifest = write_manifest(tmp_path, {"docs": {"root": "docs", "defaults": {"pricing_sensitive": True}}})
    return root, load_manifest(manifest).collection("docs")


@pytest.fixture
def embedder(fake_openai):
    return OpenAIEmbedder(model="fake-embed", dims=64, api_key="sk-test-key-0000", base_url=fake_openai.base_url)


def ingest(store, collection, embedder):
    documents = sync_documents(store, collection, max_file_bytes=10**7, parse_time_limit=TIME_LIMIT)
    sync_chunks(store, collection.name, ChunkSettings(), embedder.token_counter)
    embeddings = sync_embeddings(store, collection.name, embedder)
    return documents, embeddings


def test_bad_files_are_recorded_and_the_rest_is_searchable_with_pages(store, corpus, embedder):
    _, collection = corpus
    documents, _ = ingest(store, collection, embedder)
    errors = {i.path: i.reason for i in documents.errors}
    assert set(errors) == set(BAD_FILES)
    for name, (_, reason) in BAD_FILES.items():
        assert reason in errors[name], errors[name]
    assert documents.counts["new"] == 3 and documents.counts["failed"] == len(BAD_FILES)
    with store.reading() as conn:  # recorded, for `refinery status` and the next run
        stored = dict(conn.execute("SELECT path, reason FROM ingest_errors WHERE severity = 'error'").fetchall())
    assert stored == errors
    hits = store.search(None, 0, None, k=5, mode="text", query_text="kestrel chicks")
    assert hits[0].path == "handbook.pdf" and hits[0].heading_path == ["Kestrel Care", "Feeding"]
    assert hits[0].title == "Kestrel handbook" and hits[0].locator == "page 2"
    hit = store.search(None, 0, None, k=1, mode="text", query_text="flamingo engineers")[0]
    assert (hit.path, hit.heading_path, hit.locator) == ("review.pptx", ["Next steps"], "slide 2")
    hit = store.search(None, 0, None, k=1, mode="text", query_text="heron desk")[0]
    assert (hit.path, hit.title, hit.heading_path, hit.locator) == (
        "onboarding.docx", "Onboarding", ["Onboarding", "Equipment"], "page 2")


def test_only_the_changed_file_is_parsed_and_only_its_new_text_embedded(store, corpus, embedder, fake_openai):
    root, collection = corpus
    for name in BAD_FILES:  # the time-limited one makes each run slow; bad files are the test above's
        (root / name).unlink()
    ingest(store, collection, embedder)
    before = len(fake_openai.embedding_inputs)
    documents, embeddings = ingest(store, collection, embedder)
    assert documents.counts["unchanged"] == 3 and documents.counts["new"] == documents.counts["changed"] == 0
    assert embeddings.texts_embedded == 0 and len(fake_openai.embedding_inputs) == before

    (root / "review.pptx").write_bytes(make_pptx([{"title": "Quarterly review", "bullets": ["Pelican revenue grew."]},
                                                  {"title": "Next steps", "bullets": ["Hire three otter engineers."]}]))
    documents, embeddings = ingest(store, collection, embedder)
    assert documents.counts["changed"] == 1 and documents.counts["unchanged"] == 2
    sent = [t for request in fake_openai.embedding_inputs[before:] for t in request]
    assert embeddings.texts_embedded == len(sent) == 1 and "otter" in sent[0]


def test_pricing_redaction_covers_pdf_word_and_powerpoint_text(store, tmp_path, embedder, fake_openai):
    root = tmp_path / "sales"
    root.mkdir()
    (root / "quote.pdf").write_bytes(make_pdf([[(20, "Quote"), (11, "The license costs $4,200 per year, 15% off.")]]))
    (root / "prices.docx").write_bytes(make_docx([("h1", "Prices"), ("table", [["Plan", "Price"], ["Pro", "EUR 990"]])]))
    (root / "deck.pptx").write_bytes(make_pptx([{"title": "Offer", "bullets": ["Seats at $35 each, 20 minimum"]}]))
    manifest = write_manifest(tmp_path, {"sales": {"root": "sales", "defaults": {"pricing_sensitive": True}}})
    ingest(store, load_manifest(manifest).collection("sales"), embedder)
    fake_openai.chat_responder = refinement_answer
    llm = LLMChain(models=["primary-model"], base_url=fake_openai.base_url, api_key="sk-test-1",
                   prices={"primary-model": Price(1.0, 2.0)}, max_retries=1, timeout=10)
    refine_collection(store, "sales", llm, wordpiece_counter(), budget=8000,
                      thresholds=RoutingThresholds(min_words=0), run_id="test-run")
    documents = [b["messages"][1]["content"].split("<document>", 1)[1] for b in fake_openai.chat_requests]
    assert len(documents) == 3
    for text in documents:
        assert not re.search(r"\d", text) and "$" not in text and "[AMOUNT]" in text, text
