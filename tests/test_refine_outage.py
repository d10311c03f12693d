"""A model that cannot be reached (a bad key, a server down, errors after retries) is not a
fallback by design: the extractive stand-in is kept but marked, the run says so, and the next
refine sends those documents to the model again. Through the CLI and a fake OpenAI server."""

from __future__ import annotations

import json

import psycopg
import pytest

from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import (
    ingest_sample,
    refine_cli_env,
    refinery,
)
from tests.fakes.openai_server import refinement_answer

KEY = "sk-test-OUTAGE-key-98765"
EVERY_DOCUMENT_TO_THE_MODEL = RoutingThresholds(min_words=1, min_quality=0)


@pytest.fixture
def cli_env(pg_server, tmp_path, fake_openai):
    return refine_cli_env(pg_server, tmp_path, fake_openai, OPENAI_API_KEY=KEY, LLM_MAX_RETRIES="1",
                          REFINE_MIN_WORDS="1", REFINE_MIN_QUALITY="0")


def stored(env, collection):
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        return conn.execute("SELECT model, link, awaiting_model FROM refined_documents WHERE collection = %s",
                            (collection,)).fetchall()


@pytest.mark.parametrize("outage", ["401", "unreachable"])
def test_a_run_the_model_never_answered_fails_and_the_rerun_sends_every_document_to_the_model(
        cli_env, fake_openai, outage):
    if outage == "401":
        fake_openai.chat_responder = lambda body: (401, {}, {"error": {"message": f"Incorrect API key: {KEY}"}})
        first_env = cli_env
    else:
        first_env = {**cli_env, "OPENAI_BASE_URL": "http://127.0.0.1:1/v1"}  # nothing listens there

    first = refinery(first_env, "refine", "--collection", "product")
    output = first.stdout + first.stderr
    assert first.returncode == 1, output
    assert "could not be reached for any of the" in output, output
    assert ("answered 401" in output and "check OPENAI_API_KEY" in output) if outage == "401" \
        else "could not reach the LLM server at 127.0.0.1:1" in output, output
    assert KEY not in output and KEY[8:16] not in output
    rows = stored(cli_env, "product")
    documents = len(rows)
    assert documents > 0 and all(r == ("extractive", "extractive", True) for r in rows), rows  # kept, marked

    plan = json.loads(refinery(cli_env, "refine", "--collection", "product", "--dry-run", "--json").stdout)
    assert plan["collections"]["product"]["would_refine"] == plan["to_model"] == documents, plan
    status = json.loads(refinery(cli_env, "status", "--json").stdout)["collections"]["product"]
    assert (status["refined"], status["awaiting_model"]) == (0, documents), status

    fake_openai.chat_responder = refinement_answer  # the key is fixed / the server is back
    before = len(fake_openai.chat_requests)
    fixed = refinery(cli_env, "refine", "--collection", "product", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert len(fake_openai.chat_requests) - before == documents
    assert sorted(stored(cli_env, "product")) == [("gpt-4o-mini", "primary", False)] * documents

    again = json.loads(refinery(cli_env, "refine", "--collection", "product", "--json").stdout)
    assert (again["collections"]["product"]["llm_calls"], again["collections"]["product"]["skipped"]) == (0, documents)


def test_only_documents_the_model_failed_for_are_owed_not_those_it_answered_badly(store, fake_openai):
    """One document gets 500s after retries, one only invalid answers (quarantined: a fallback by
    design), the rest valid answers: the run succeeds, only the first awaits the model, and the
    rerun sends that one alone."""
    ingest_sample(store)
    titles: dict[str, str] = {}

    def responder(body):
        title = body["messages"][1]["content"].split("Title: ", 1)[1].split("\n", 1)[0]
        role = titles.setdefault(title, ["down", "invalid"][len(titles)] if len(titles) < 2 else "ok")
        if role == "down":
            return 500, {}, {"error": {"message": "upstream failed"}}
        return '{"summary": "too short"}' if role == "invalid" else refinement_answer(body)

    fake_openai.chat_responder = responder
    chain = LLMChain(models=["primary-model"], base_url=fake_openai.base_url, api_key=KEY, prices={},
                     max_retries=1, timeout=10, concurrency=1)

    def refine():
        return refine_collection(store, "product", chain, wordpiece_counter(), budget=8000,
                                 thresholds=EVERY_DOCUMENT_TO_THE_MODEL, run_id="test-run")

    report = refine()
    assert (report.awaiting_model, report.quarantined) == (1, 1), report
    assert "1 of the" in report.warnings[0] and "answered 500" in report.warnings[0], report.warnings
    with store.reading() as conn:
        owed = conn.execute("SELECT d.title FROM refined_documents r JOIN documents d ON d.id = r.document_id "
                            "WHERE r.collection = 'product' AND r.awaiting_model").fetchall()
    down = next(t for t, role in titles.items() if role == "down")
    assert [t for (t,) in owed] == [down]
    assert store.unrefined_count("product", "primary-model", *_versions()) == 1  # the asset check fails

    titles[down] = "ok"  # the server recovered
    before = len(fake_openai.chat_requests)
    again = refine()
    assert again.refined == 1 and again.awaiting_model == 0 and again.by_link == {"primary": 1}, again
    assert len(fake_openai.chat_requests) - before == 1  # not the quarantined one, not the answered ones
    assert store.unrefined_count("product", "primary-model", *_versions()) == 0


def _versions():
    from dagster_project.core.refine.prompts import PROMPT_VERSION
    from dagster_project.core.refine.schema import SCHEMA_VERSION
    return PROMPT_VERSION, SCHEMA_VERSION
