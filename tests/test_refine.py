"""Refined JSON through the LLM chain against a fake OpenAI-compatible server over real HTTP,
on a real PostgreSQL: outcomes, call log and costs, caching, versions, redaction, routing."""

from __future__ import annotations

import re
import time

import pytest

from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine import pipeline as refine_module
from dagster_project.core.refine.llm import LLMChain, Price
from dagster_project.core.refine.pipeline import ModelUnreachable, refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from dagster_project.core.refine.schema import RefinedDocument
from tests.fakes.openai_server import refinement_answer

PRICES = {"primary-model": Price(1.0, 2.0), "backup-model": Price(0.5, 1.0)}
KEY = "sk-test-SECRET-refine-123"


valid_answer = refinement_answer


def chain(fake, models=("primary-model",), **kw) -> LLMChain:
    return LLMChain(models=list(models), base_url=fake.base_url, api_key=KEY, prices=PRICES,
                    max_retries=kw.pop("max_retries", 1), timeout=kw.pop("timeout", 10), **kw)


def refine(store, llm, collection="product", **kw):
    return refine_collection(store, collection, llm, wordpiece_counter(), budget=kw.pop("budget", 8000),
                             thresholds=kw.pop("thresholds", RoutingThresholds()), run_id="test-run", **kw)


def rows(store, sql, *params):
    with store.reading() as conn:
        return conn.execute(sql, params).fetchall()


def test_without_a_model_every_document_gets_valid_extractive_json(indexed):
    report = refine(indexed, LLMChain(models=[], base_url=None, api_key=None, prices={}), "support")
    assert report.refined == 5 and report.by_link == {"extractive": 5} and report.calls == 0
    for (refined,) in rows(indexed, "SELECT refined FROM refined_documents WHERE collection = 'support'"):
        RefinedDocument.model_validate(refined)
    again = refine(indexed, LLMChain(models=[], base_url=None, api_key=None, prices={}), "support")
    assert again.refined == 0 and again.skipped == 5


def test_primary_model_refines_logs_costs_and_a_rerun_makes_no_call(indexed, fake_openai):
    fake_openai.chat_responder = valid_answer
    report = refine(indexed, chain(fake_openai))
    assert report.refined == 6 and report.by_link == {"primary": 6} and report.quarantined == 0
    calls = rows(indexed, "SELECT model, link, outcome, prompt_tokens, completion_tokens, cost_usd::float, document_id "
                          "FROM llm_calls")
    assert len(calls) == len(fake_openai.chat_requests) == 6
    for model, link, outcome, prompt, completion, cost, doc in calls:
        assert (model, link, outcome) == ("primary-model", "primary", "ok") and doc is not None
        assert cost == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)
    assert report.cost_usd == pytest.approx(sum(c[5] for c in calls))
    stored = rows(indexed, "SELECT model, link, prompt_version, schema_version, cardinality(cited_chunk_ids), "
                           "refined->>'summary' FROM refined_documents WHERE collection = 'product'")
    assert all(r[0] == "primary-model" and r[1] == "primary" and r[4] > 0 and "primary-model" in r[5] for r in stored)

    before = len(fake_openai.chat_requests)
    again = refine(indexed, chain(fake_openai))
    assert again.refined == 0 and again.skipped == 6 and len(fake_openai.chat_requests) == before


def test_schema_or_prompt_version_bump_redoes_every_row(indexed, fake_openai, monkeypatch):
    fake_openai.chat_responder = valid_answer
    refine(indexed, chain(fake_openai))
    monkeypatch.setattr(refine_module, "SCHEMA_VERSION", "refined-v2")
    bumped = refine(indexed, chain(fake_openai))
    assert bumped.refined == 6
    assert {r[0] for r in rows(indexed, "SELECT schema_version FROM refined_documents WHERE collection = 'product'")} \
        == {"refined-v2"}
    monkeypatch.setattr(refine_module, "PROMPT_VERSION", "prompt-v9")
    assert refine(indexed, chain(fake_openai)).refined == 6


def test_invalid_answers_get_one_repair_then_the_fallback(indexed, fake_openai):
    def responder(body):
        if body["model"] == "primary-model":
            return "this is not JSON at all" if len(body["messages"]) == 2 else '{"title": "missing everything"}'
        return valid_answer(body)

    fake_openai.chat_responder = responder
    report = refine(indexed, chain(fake_openai, models=("primary-model", "backup-model")), "sales")
    assert report.by_link == {"fallback": 3} and report.quarantined == 0
    outcomes = rows(indexed, "SELECT model, attempt, outcome FROM llm_calls ORDER BY id")
    per_doc = [("primary-model", "answer", "invalid"), ("primary-model", "repair", "invalid"),
               ("backup-model", "answer", "ok")]
    assert sorted(outcomes) == sorted(per_doc * 3)
    # The repair request carried the validation errors back to the model.
    repairs = [b for b in fake_openai.chat_requests if len(b["messages"]) == 4]
    assert repairs and all("not JSON" in b["messages"][-1]["content"] for b in repairs)


def test_answers_invalid_at_every_link_are_quarantined_and_extractive_json_is_used(indexed, fake_openai):
    fake_openai.chat_responder = lambda body: '{"summary": "too short"}'
    report = refine(indexed, chain(fake_openai, models=("primary-model", "backup-model")), "sales")
    assert report.refined == 3 and report.by_link == {"extractive": 3} and report.quarantined == 3
    quarantined = rows(indexed, "SELECT model, raw_text, errors FROM refine_quarantine")
    assert len(quarantined) == 3 * 4  # two links x (answer + repair) per document
    assert all(raw == '{"summary": "too short"}' and errs for _, raw, errs in quarantined)
    for (refined,) in rows(indexed, "SELECT refined FROM refined_documents WHERE collection = 'sales'"):
        RefinedDocument.model_validate(refined)
    assert indexed.status(None)["sales"]["quarantined"] == 3


def test_429_with_retry_after_is_waited_out(indexed, fake_openai):
    fake_openai.chat_responder = valid_answer
    fake_openai.fail_next(429, headers={"Retry-After": "1"})
    started = time.monotonic()
    report = refine(indexed, chain(fake_openai, concurrency=1), "sales")
    assert time.monotonic() - started >= 0.9
    assert report.by_link == {"primary": 3} and report.failed_calls == 0


def test_server_errors_and_timeouts_fall_through_to_the_next_link(indexed, fake_openai):
    def responder(body):
        if body["model"] == "primary-model":
            return 500, {}, {"error": {"message": "boom"}}
        if body["model"] == "slow-model":
            time.sleep(1.5)
        return valid_answer(body)

    fake_openai.chat_responder = responder
    llm = chain(fake_openai, models=("primary-model", "slow-model", "backup-model"), max_retries=0, timeout=0.5)
    report = refine(indexed, llm, "sales")
    assert report.by_link == {"fallback": 3} and report.quarantined == 0
    errors = rows(indexed, "SELECT model, error FROM llm_calls WHERE outcome = 'error' ORDER BY model")
    assert {m for m, _ in errors} == {"primary-model", "slow-model"}
    assert any("answered 500" in e for _, e in errors) and any("did not answer within" in e for _, e in errors)
    winners = rows(indexed, "SELECT DISTINCT model FROM refined_documents WHERE collection = 'sales'")
    assert winners == [("backup-model",)]


def test_the_key_never_reaches_the_call_log(indexed, fake_openai):
    fake_openai.chat_responder = lambda body: (401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
    with pytest.raises(ModelUnreachable) as failure:  # no document got an answer: the step fails
        refine(indexed, chain(fake_openai), "sales")
    assert "check OPENAI_API_KEY" in str(failure.value) and KEY not in str(failure.value)
    assert rows(indexed, "SELECT link, awaiting_model FROM refined_documents") == [("extractive", True)] * 3
    logged = rows(indexed, "SELECT error FROM llm_calls")
    assert logged and all(KEY not in e and "check OPENAI_API_KEY" in e for (e,) in logged)


def test_pricing_numbers_never_reach_the_model(indexed, fake_openai):
    fake_openai.chat_responder = valid_answer
    refine(indexed, chain(fake_openai), "sales")
    documents = [b["messages"][1]["content"].split("<document>", 1)[1] for b in fake_openai.chat_requests]
    assert len(documents) == 3
    for text in documents:
        assert not re.search(r"\d", text), re.search(r".{30}\d.{30}", text).group(0)
        assert "$" not in text and "€" not in text and "[AMOUNT]" in text


def test_small_documents_take_the_lightweight_path_without_a_call(indexed, fake_openai):
    fake_openai.chat_responder = valid_answer
    report = refine(indexed, chain(fake_openai), "support", thresholds=RoutingThresholds(min_words=900))
    assert report.lightweight >= 1 and report.calls == report.refined - report.lightweight
    light = rows(indexed, "SELECT route_reason, link, cardinality(cited_chunk_ids) FROM refined_documents "
                          "WHERE route = 'lightweight'")
    assert len(light) == report.lightweight
    assert all(reason.startswith("too small") and link == "extractive" and n == 0 for reason, link, n in light)


def test_long_document_is_packed_into_the_budget_in_document_order(indexed, fake_openai):
    fake_openai.chat_responder = valid_answer
    refine(indexed, chain(fake_openai), "product", budget=1200)
    for body in fake_openai.chat_requests:
        assert sum(wordpiece_counter().count([m["content"] for m in body["messages"]])) <= 1200
    doc_id, cited = rows(indexed, "SELECT document_id, cited_chunk_ids FROM refined_documents r JOIN documents d "
                                  "ON d.id = r.document_id WHERE d.path = 'sync-and-offline.md'")[0]
    ordinals = [r[0] for r in rows(indexed, "SELECT ordinal FROM chunks WHERE id = ANY(%s) ORDER BY ordinal", cited)]
    all_chunks = rows(indexed, "SELECT count(*) FROM chunks WHERE document_id = %s", doc_id)[0][0]
    assert 0 < len(ordinals) < all_chunks  # chose some, not all
    order = {str(c): i for i, c in enumerate(cited)}
    assert sorted(cited, key=lambda c: order[str(c)]) == cited  # stored in document order


def test_server_without_structured_outputs_gets_json_mode(indexed, fake_openai):
    def responder(body):
        if body.get("response_format", {}).get("type") == "json_schema":
            return 400, {}, {"error": {"message": "response_format json_schema is not supported by this server"}}
        return valid_answer(body)

    fake_openai.chat_responder = responder
    report = refine(indexed, chain(fake_openai, concurrency=1), "sales")
    assert report.by_link == {"primary": 3}
    kinds = [b["response_format"]["type"] for b in fake_openai.chat_requests]
    assert kinds[0] == "json_schema" and kinds[1:] == ["json_object"] * 3  # learned once, then JSON mode


def test_nearly_spent_rate_limit_slows_the_next_call(indexed, fake_openai):
    fake_openai.chat_responder = valid_answer
    fake_openai.chat_headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "700ms"}
    started = time.monotonic()
    refine(indexed, chain(fake_openai, concurrency=1), "sales")  # 3 calls: the 2nd and 3rd wait
    assert time.monotonic() - started >= 1.3


def test_status_counts_the_refinements_refine_would_redo(pg_server, tmp_path, fake_openai):
    """`refinery status` says how many refined documents are out of date, by refine's own rule:
    after two documents are edited and re-ingested, status and `refine --dry-run` both say two;
    with another LLM_MODEL configured, every one; after the refine, none."""
    import json
    import shutil

    from tests.conftest import SAMPLE_MANIFEST, refine_cli_env, refinery

    shutil.copytree(SAMPLE_MANIFEST.parent, tmp_path / "examples")  # its files are edited below
    env = refine_cli_env(pg_server, tmp_path, fake_openai, OPENAI_API_KEY=KEY,
                         CORPUS_MANIFEST=str(tmp_path / "examples" / SAMPLE_MANIFEST.name))
    fake_openai.chat_responder = valid_answer

    def run(*args, **extra):
        done = refinery({**env, **extra}, *args, "--collection", "product") if args[0] != "status" \
            else refinery({**env, **extra}, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def status(**extra) -> tuple[int, int]:
        product = json.loads(run("status", "--json", **extra))["collections"]["product"]
        return product["refined"], product["refined_out_of_date"]

    def would_refine(**extra) -> int:
        return json.loads(run("refine", "--dry-run", "--json", **extra))["collections"]["product"]["would_refine"]

    run("ingest")
    run("refine")
    assert status() == (6, 0) and would_refine() == 0
    for name in ("search.md", "sync-and-offline.md"):
        path = tmp_path / "examples" / "knowledge_base" / "product" / name
        path.write_text(path.read_text() + "\n\nAppended after the refinement.\n")
    run("ingest")
    assert status() == (6, 2) and would_refine() == 2
    text = run("status")
    assert "note: 2 of the 6 refined documents are out of date" in text, text
    assert status(LLM_MODEL="gpt-4o") == (6, 6) and would_refine(LLM_MODEL="gpt-4o") == 6  # another chain
    run("refine")
    assert status() == (6, 0) and would_refine() == 0
    assert "out of date" not in run("status")
