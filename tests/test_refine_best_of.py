"""Best-of-N refinement against the fake OpenAI server over real HTTP, on a real PostgreSQL: N
candidates per document (one request with `n`, or parallel requests where the server refuses
`n`), some of them invalid; the best valid one is kept, the others judged, and N then follows the
observed discard rate (also in `refinery refine --dry-run`)."""

from __future__ import annotations

import collections
import json
import os
import threading

import pytest
import yaml

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import BestOf, load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain, Price
from dagster_project.core.refine.pipeline import estimate, refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import SAMPLE_MANIFEST, refinery
from tests.fakes.openai_server import refinement_answer

PRICES = {"primary-model": Price(1.0, 2.0)}
INVALID = '{"summary": "too short"}'


def ungrounded(body):
    """Valid, but its key points are words no document holds: it scores lower."""
    answer = json.loads(refinement_answer(body))
    answer["key_points"] = ["zebras juggle xylophones", "quixotic marmalade"]
    answer["summary"] = "Wombats negotiate quantum marmalade treaties beneath orbiting lighthouses."
    return json.dumps(answer)


class Cycle:
    """Per prompt, its choices in turn: invalid, ungrounded, grounded, invalid, ... (a third
    invalid). Counted per prompt, not overall: with parallel requests, one count for all would
    deal the answers to documents in whatever order their requests interleave, and a document
    could get no valid one (this test failed one run in four or five that way)."""

    ANSWERS = (lambda b: INVALID, ungrounded, refinement_answer)

    def __init__(self):
        self._served: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, body):
        prompt = json.dumps(body["messages"], sort_keys=True)
        with self._lock:
            nth = self._served[prompt]
            self._served[prompt] += 1
        return self.ANSWERS[nth % len(self.ANSWERS)](body)


@pytest.fixture
def product(store):
    collection = load_manifest(SAMPLE_MANIFEST).collections["product"]
    ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    return store


def chain(fake, concurrency=1) -> LLMChain:
    return LLMChain(models=["primary-model"], base_url=fake.base_url, api_key="sk-test-best-of-123", prices=PRICES,
                    max_retries=0, timeout=10, concurrency=concurrency)


def refine(store, llm, best_of):
    return refine_collection(store, "product", llm, wordpiece_counter(), budget=8000, thresholds=RoutingThresholds(),
                             run_id="best-of-run", best_of=best_of)


def rows(store, sql, *params):
    with store.reading() as conn:
        return conn.execute(sql, params).fetchall()


def test_best_of_n_keeps_the_best_valid_candidate_and_judges_the_others(product, fake_openai):
    fake_openai.chat_responder = Cycle()
    policy = BestOf(default_candidates=3, min_samples=4)
    report = refine(product, chain(fake_openai), policy)

    assert report.refined == 6 and report.by_link == {"primary": 6} and report.quarantined == 0
    assert (report.best_of, report.candidates, report.candidates_discarded) == (6, 18, 12)
    requests = fake_openai.chat_requests
    assert len(requests) == 6 and all(r["n"] == 3 and r["temperature"] > 0 for r in requests)
    # The grounded candidate won every time, over an ungrounded valid one and an invalid one.
    for summary, candidates in rows(product, "SELECT refined->>'summary', candidates FROM refined_documents"):
        assert summary.startswith("A summary of") and candidates == 3
    kept = rows(product, "SELECT valid, kept, score, reason FROM refine_candidates ORDER BY id")
    assert len(kept) == 18 and sum(k for _, k, _, _ in kept) == 6
    assert sum(not v for v, _, _, _ in kept) == 6
    assert all(r.startswith("invalid: ") for v, _, _, r in kept if not v)
    assert all("below the kept candidate" in r for v, k, _, r in kept if v and not k)
    # Discarded candidates: negative auto feedback with the reason, never joined to the stored refinement.
    judged = rows(product, "SELECT rating, tags, comment, candidate_hash IS NOT NULL FROM feedback_events "
                           "WHERE source = 'auto' AND rating = -1")
    assert len(judged) == 12 and all(h and "best-of-discarded" in t for _, t, _, h in judged)
    assert {t[1] for _, t, _, _ in judged} == {"invalid-answer", "lower-score"}
    assert rows(product, "SELECT count(*) FROM feedback_judgements WHERE rating = -1 AND is_current")[0][0] == 0
    # One call per document: the prompt paid once, every candidate's completion tokens counted.
    calls = rows(product, "SELECT count(*), sum(completion_tokens), sum(cost_usd)::float FROM llm_calls")[0]
    assert calls[0] == 6 and calls[2] == pytest.approx(report.cost_usd)

    # N now follows what was observed: a third of each document's candidates invalid, no spread:
    # buffer = (1/3) / (2/3) = 0.5, so N = ceil(1.5) = 2.
    plan = estimate(product, "product", chain(fake_openai), wordpiece_counter(), budget=8000,
                    thresholds=RoutingThresholds(), best_of=policy)
    buffer = plan["best_of"]["primary-model"]
    assert (buffer["source"], buffer["samples"], buffer["candidates"]) == ("observed", 6, 2)
    assert buffer["discard_rate"] == pytest.approx(1 / 3, abs=1e-3) and buffer["buffer"] == pytest.approx(0.5)


def test_a_server_without_n_gets_parallel_requests(product, fake_openai):
    fake_openai.accepts_n = False
    fake_openai.chat_responder = Cycle()
    report = refine(product, chain(fake_openai, concurrency=3), BestOf(default_candidates=3))
    assert report.refined == 6 and report.by_link == {"primary": 6} and report.candidates == 18
    with_n = [r for r in fake_openai.chat_requests if r.get("n", 1) > 1]
    assert 1 <= len(with_n) <= 3  # refused once per request slot at most, then learned
    assert len(fake_openai.chat_requests) == len(with_n) + 18
    assert rows(product, "SELECT count(*) FROM refine_candidates WHERE kept")[0][0] == 6


def test_documents_outside_best_of_get_one_answer(product, fake_openai):
    fake_openai.chat_responder = refinement_answer
    report = refine(product, chain(fake_openai), BestOf(include=["sync-*.md"]))
    assert report.best_of == 1 and report.refined == 6
    assert sorted(r.get("n", 1) for r in fake_openai.chat_requests) == [1, 1, 1, 1, 1, 3]


def test_dry_run_shows_the_buffer_per_model_and_its_cost(project_env, tmp_path, fake_openai):
    manifest = tmp_path / "examples" / "corpus.yaml"
    raw = yaml.safe_load(manifest.read_text())
    raw["collections"]["product"]["best_of"] = {"default_candidates": 3, "min_samples": 4}
    manifest.write_text(yaml.safe_dump(raw))
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"models": {"primary-model": {"input_per_million": 1.0,
                                                                   "output_per_million": 2.0}}}))
    env = {**os.environ, "LLM_MODEL": "primary-model", "OPENAI_BASE_URL": fake_openai.base_url,
           "OPENAI_API_KEY": "sk-test-dry-run-123", "LLM_PRICES_FILE": str(prices)}
    assert refinery(env, "ingest", "--collection", "product").returncode == 0
    result = refinery(env, "refine", "--dry-run", "--collection", "product")
    assert result.returncode == 0, result.stderr
    assert "product best-of on primary-model: 3 candidates (buffer 2.00; default" in result.stdout
    assert "12 extra candidates" in result.stdout and "extra (~$" in result.stdout
    assert fake_openai.chat_requests == []
    plan = json.loads(refinery(env, "refine", "--dry-run", "--json", "--collection", "product").stdout)
    buffer = plan["collections"]["product"]["best_of"]["primary-model"]
    # 6 documents x 2 extra candidates x ~400 completion tokens at $2 per million.
    assert buffer["extra_usd"] == pytest.approx(6 * 2 * 400 * 2.0 / 1e6)

    # With the Batch API on for large refines, the dry run prices the batchable documents at half.
    full = plan["estimated_usd"]["primary-model"]
    raw["collections"]["product"].pop("best_of")
    manifest.write_text(yaml.safe_dump(raw))
    batched = json.loads(refinery({**env, "LLM_BATCH_MIN_DOCUMENTS": "2"}, "refine", "--dry-run", "--json",
                                  "--collection", "product").stdout)
    assert batched["collections"]["product"]["via_batch"] == 6
    assert batched["estimated_usd"]["primary-model"] == pytest.approx(full / 2, rel=1e-3)
