"""Embeddings of a model change's candidate through the OpenAI Batch API, against the fake server
over real HTTP on a real PostgreSQL: the active model stays live, the candidate's texts go in one
batch with the vectors the live API would give; a batch still running fails the step and the
rerun collects it without submitting again; lines it did not answer go live; a `refinery ingest`
SIGKILLed while it polls is collected by the rerun, not submitted again."""

from __future__ import annotations

import os

import numpy as np
import psycopg
import pytest

from dagster_project.core.embed.base import normalize
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.embed.openai_embedder import OpenAIEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection, sync_embeddings
from dagster_project.core.openai_batch import BatchPending, BatchPolicy
from tests.conftest import (
    SAMPLE_MANIFEST,
    kill_while_polling_a_batch,
    refinery,
)
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-test-embed-batch-789"
FAST = BatchPolicy(min_items=1, poll_seconds=0.05, max_wait_seconds=30)


@pytest.fixture
def product(store):
    ingest_collection(store, load_manifest(SAMPLE_MANIFEST).collections["product"], embedder=HashEmbedder(),
                      chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    return store


def candidate(fake) -> OpenAIEmbedder:
    # Small lines, so the batch has several and a failed one can be told apart.
    return OpenAIEmbedder(api_key=KEY, base_url=fake.base_url, model="text-embedding-3-small", dims=64,
                          batch_size=8, max_retries=0)


def stored(store, model_key):
    with store.reading() as conn:
        return {bytes(h): v.to_numpy() for h, v in conn.execute(
            "SELECT e.content_hash, e.embedding FROM embeddings e JOIN embedding_models m ON m.id = e.model_id "
            "WHERE m.key = %s", (model_key,))}


def test_the_candidate_is_embedded_through_one_batch(product, fake_openai):
    model = candidate(fake_openai)
    report = sync_embeddings(product, "product", HashEmbedder(), model, batch=FAST)
    assert fake_openai.embedding_inputs == []  # nothing live
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1
    texts = [t for line in fake_openai.batch_lines for t in line["input"]]
    assert report.counts["embedded_by_batch"] == len(texts) == report.counts["texts"] > 8
    vectors = stored(product, model.model.key)
    assert len(vectors) == len(texts)
    # The same vectors the live API gives for those texts.
    with product.reading() as conn:
        pending = conn.execute("SELECT content_hash FROM chunks WHERE collection = 'product'").fetchall()
    assert {bytes(h) for (h,) in pending} == set(vectors)
    expected = normalize(np.stack([FakeOpenAI.vector(texts[0], 64)]))[0]
    assert any(np.allclose(v, expected, atol=1e-6) for v in vectors.values())
    again = sync_embeddings(product, "product", HashEmbedder(), candidate(fake_openai), batch=FAST)
    assert again.counts["embedded"] == 0 and len(fake_openai.requests_to("POST", "/v1/batches")) == 1


def test_a_running_batch_is_collected_by_the_rerun_without_a_second_submission(product, fake_openai):
    fake_openai.hold_batches = True
    with pytest.raises(BatchPending, match="run the embeddings step"):
        sync_embeddings(product, "product", HashEmbedder(), candidate(fake_openai),
                        batch=BatchPolicy(1, 0.05, 0.3))
    fake_openai.hold_batches = False
    report = sync_embeddings(product, "product", HashEmbedder(), candidate(fake_openai), batch=FAST)
    assert report.counts["embedded_by_batch"] == report.counts["texts"]
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1
    assert len(fake_openai.requests_to("POST", "/v1/files")) == 1 and fake_openai.embedding_inputs == []


def test_lines_a_batch_did_not_answer_go_live(product, fake_openai):
    original = fake_openai._embeddings
    seen = {"n": 0}

    def first_line_fails(body):
        seen["n"] += 1
        if seen["n"] == 1:
            raise RuntimeError("boom")  # the fake answers 500 for this line
        return original(body)

    def answer(body):
        try:
            return first_line_fails(body)
        except RuntimeError:
            return {"error": {"message": "boom"}}

    fake_openai._embeddings = answer
    model = candidate(fake_openai)
    report = sync_embeddings(product, "product", HashEmbedder(), model, batch=FAST)
    live = [t for inputs in fake_openai.embedding_inputs for t in inputs]
    assert 0 < len(live) <= 8 and report.counts["embedded_by_batch"] == report.counts["texts"] - len(live)
    assert len(stored(product, model.model.key)) == report.counts["texts"]
    assert any("boom" in w for w in report.warnings) and all(KEY not in w for w in report.warnings)


def test_a_killed_ingest_resumes_the_candidates_batch_without_submitting_again(project_env, fake_openai, db_url):
    """`refinery ingest` building an OpenAI candidate is SIGKILLed (its whole process group) while
    it polls the submitted batch; the rerun collects that batch: one upload, one batch, every
    chunk of the collection gets the candidate's vector, none embedded live."""
    hashed = {**os.environ, "EMBED_PROVIDER": "hash"}
    assert refinery(hashed, "ingest", "--collection", "product").returncode == 0
    env = {**os.environ, "EMBED_PROVIDER": "openai", "EMBED_MODEL": "text-embedding-3-small", "EMBED_DIMS": "64",
           "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_API_KEY": KEY, "EMBED_BATCH_MIN_TEXTS": "1",
           "LLM_BATCH_POLL_SECONDS": "0.1", "LLM_MAX_RETRIES": "0"}
    kill_while_polling_a_batch(env, db_url, fake_openai, "embed", "ingest", "--collection", "product")
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1
    again = refinery(env, "ingest", "--collection", "product")
    assert again.returncode == 0, again.stderr
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1  # no second submission
    assert len(fake_openai.requests_to("POST", "/v1/files")) == 1
    assert fake_openai.embedding_inputs == []  # nothing live
    with psycopg.connect(db_url) as conn:
        missing = conn.execute(
            "SELECT count(*) FROM chunks c WHERE c.collection = 'product' AND NOT EXISTS (SELECT 1 FROM embeddings e "
            "JOIN embedding_models m ON m.id = e.model_id WHERE e.content_hash = c.content_hash "
            "AND m.key LIKE 'openai:text-embedding-3-small:%%')").fetchone()[0]
    assert missing == 0
