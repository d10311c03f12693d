"""Refine through the OpenAI Batch API against the fake server over real HTTP, on a real
PostgreSQL: submit, poll, collect at the batch price; live calls for what a batch does not answer
validly; and a `refinery refine` SIGKILLed between submit and collect that, rerun, collects the
same batch without submitting again."""

from __future__ import annotations

import os
import re

import psycopg
import pytest
import yaml

from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.openai_batch import BatchPending, BatchPolicy
from dagster_project.core.refine.llm import LLMChain, Price
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import kill_while_polling_a_batch, refinery
from tests.fakes.openai_server import refinement_answer

PRICES = {"primary-model": Price(1.0, 2.0)}
KEY = "sk-test-batch-SECRET-456"
FAST = BatchPolicy(min_items=1, poll_seconds=0.05, max_wait_seconds=30)


def chain(fake) -> LLMChain:
    return LLMChain(models=["primary-model"], base_url=fake.base_url, api_key=KEY, prices=PRICES, max_retries=0,
                    timeout=10, concurrency=2)


def refine(store, llm, collection="product", batch=FAST):
    return refine_collection(store, collection, llm, wordpiece_counter(), budget=8000,
                             thresholds=RoutingThresholds(), run_id="batch-run", batch=batch)


def rows(store, sql, *params):
    with store.reading() as conn:
        return conn.execute(sql, params).fetchall()


def test_a_large_refine_goes_through_one_batch_at_half_price(indexed, fake_openai):
    fake_openai.chat_responder = refinement_answer
    report = refine(indexed, chain(fake_openai))
    assert report.refined == 6 and report.batched == 6 and report.by_link == {"primary": 6}
    assert len(report.batches_submitted) == 1 and fake_openai.chat_requests == []  # no live call
    assert len(fake_openai.requests_to("POST", "/v1/files")) == 1 and len(fake_openai.batch_lines) == 6
    calls = rows(indexed, "SELECT batch_id, prompt_tokens, completion_tokens, cost_usd::float FROM llm_calls")
    assert len(calls) == 6
    for batch_id, prompt, completion, cost in calls:
        assert batch_id == report.batches_submitted[0]
        assert cost == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6 / 2)  # the batch price: half
    assert rows(indexed, "SELECT status, server_status FROM llm_batches") == [("collected", "completed")]
    again = refine(indexed, chain(fake_openai))
    assert again.refined == 0 and len(fake_openai.requests_to("POST", "/v1/batches")) == 1


def test_what_a_batch_does_not_answer_validly_goes_live(indexed, fake_openai):
    """The batch's first line answers invalid JSON, its second a 500: those two documents are
    sent live (and the invalid answer judged by the validator); the other four come from the batch."""
    seen = {"batch": 0}

    def responder(body):
        if fake_openai.batch_lines and seen["batch"] < 2 and len(fake_openai.batch_lines) > seen["batch"]:
            seen["batch"] += 1
            return '{"summary": "too short"}' if seen["batch"] == 1 else (500, {}, {"error": {"message": "boom"}})
        return refinement_answer(body)

    fake_openai.chat_responder = responder
    report = refine(indexed, chain(fake_openai))
    assert report.refined == 6 and report.by_link == {"primary": 6} and report.batched == 4
    assert len(fake_openai.chat_requests) == 2
    outcomes = rows(indexed, "SELECT outcome, batch_id IS NOT NULL FROM llm_calls")
    assert sorted(outcomes) == sorted([("ok", True)] * 4 + [("invalid", True), ("error", True)] + [("ok", False)] * 2)
    assert rows(indexed, "SELECT count(*) FROM feedback_events WHERE source = 'validator'")[0][0] == 1
    errors = rows(indexed, "SELECT error FROM llm_calls WHERE outcome = 'error'")
    assert "answered 500" in errors[0][0] and "boom" in errors[0][0]


def test_a_failed_batch_falls_back_to_live_calls(indexed, fake_openai):
    fake_openai.chat_responder = refinement_answer
    fake_openai.batch_outcome = "failed"
    report = refine(indexed, chain(fake_openai))
    assert report.refined == 6 and report.batched == 0 and len(fake_openai.chat_requests) == 6
    assert any("ended failed" in w for w in report.warnings)
    assert rows(indexed, "SELECT status, server_status FROM llm_batches") == [("collected", "failed")]


def test_a_batch_still_running_fails_the_step_and_a_rerun_collects_it(indexed, fake_openai):
    fake_openai.chat_responder = refinement_answer
    fake_openai.hold_batches = True
    with pytest.raises(BatchPending, match="run the refine again later"):
        refine(indexed, chain(fake_openai), batch=BatchPolicy(1, 0.05, 0.3))
    fake_openai.hold_batches = False
    report = refine(indexed, chain(fake_openai))
    assert report.batched == 6 and report.batches_submitted == [] and len(report.batches_resumed) == 1
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1 and fake_openai.chat_requests == []


def test_a_batch_created_but_not_recorded_is_found_by_its_input_file(indexed, fake_openai, monkeypatch):
    """The step dies right after the server created the batch, before its id was recorded: the
    rerun finds it among the server's batches by the recorded input file and collects it."""
    from dagster_project.core.db.batches import BatchTables

    fake_openai.chat_responder = refinement_answer
    record = BatchTables.record_batch_submitted

    def die(self, row, batch_id):
        raise KeyboardInterrupt  # as abrupt as it gets in process: nothing after it runs

    monkeypatch.setattr(BatchTables, "record_batch_submitted", die)
    with pytest.raises(KeyboardInterrupt):
        refine(indexed, chain(fake_openai))
    assert rows(indexed, "SELECT status, batch_id FROM llm_batches") == [("submitting", None)]
    monkeypatch.setattr(BatchTables, "record_batch_submitted", record)
    report = refine(indexed, chain(fake_openai))
    assert report.batched == 6 and report.batches_resumed == ["batch_1"] and report.batches_submitted == []
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1
    assert len(fake_openai.requests_to("POST", "/v1/files")) == 1 and fake_openai.chat_requests == []
    assert rows(indexed, "SELECT status, batch_id FROM llm_batches") == [("collected", "batch_1")]


def test_pricing_numbers_and_the_key_never_reach_a_batch_file(indexed, fake_openai):
    fake_openai.chat_responder = refinement_answer
    refine(indexed, chain(fake_openai), "sales")
    (upload,) = fake_openai.requests_to("POST", "/v1/files")
    content = upload["body"]["file"].decode()
    assert KEY not in content and "SECRET" not in content
    documents = [b["messages"][1]["content"].split("<document>", 1)[1] for b in fake_openai.batch_lines]
    assert len(documents) == 3
    for text in documents:
        assert not re.search(r"\d", text) and "[AMOUNT]" in text


def test_a_killed_refine_resumes_its_batch_without_submitting_again(project_env, tmp_path, fake_openai, db_url):
    """`refinery refine` is SIGKILLed (its whole process group) after the batch is submitted and
    recorded; the rerun collects that batch: one upload, one batch, no live call."""
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({"models": {"primary-model": {"input_per_million": 1.0,
                                                                   "output_per_million": 2.0}}}))
    env = {**os.environ, "LLM_MODEL": "primary-model", "OPENAI_BASE_URL": fake_openai.base_url,
           "OPENAI_API_KEY": KEY, "LLM_PRICES_FILE": str(prices), "LLM_BATCH_MIN_DOCUMENTS": "1",
           "LLM_BATCH_POLL_SECONDS": "0.1", "LLM_MAX_RETRIES": "0"}
    assert refinery(env, "ingest", "--collection", "product").returncode == 0
    fake_openai.chat_responder = refinement_answer
    kill_while_polling_a_batch(env, db_url, fake_openai, "refine", "refine", "--collection", "product")
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1
    again = refinery(env, "refine", "--collection", "product", "--json")
    assert again.returncode == 0, again.stderr
    assert len(fake_openai.requests_to("POST", "/v1/batches")) == 1  # no second submission
    assert len(fake_openai.requests_to("POST", "/v1/files")) == 1 and fake_openai.chat_requests == []
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT batch_id) FROM llm_calls WHERE outcome = 'ok'"
                            ).fetchone() == (6, 1)
        assert conn.execute("SELECT count(*) FROM refined_documents WHERE collection = 'product' "
                            "AND link = 'primary'").fetchone()[0] == 6
        assert conn.execute("SELECT status FROM llm_batches").fetchall() == [("collected",)]
