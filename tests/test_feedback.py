"""Feedback: the database's rules and the CLI's, the append-only log and the insert-only role,
the views after known events, the pipeline's own judgements (once per judged version), and a
refinement redone after a person rejects it, with their reason in the prompt."""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from dagster_project.core.feedback.events import (
    Feedback,
    FeedbackError,
    feedback_summary,
    feedback_versions,
    record_feedback,
    refiner_stats,
)
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain, Price
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import (
    PROJECT_ROOT,
    refine_cli_env,
    refinery,
)
from tests.fakes.openai_server import refinement_answer

PRICES = {"primary-model": Price(1.0, 2.0), "backup-model": Price(0.5, 1.0)}
EXTRACTIVE_ONLY = LLMChain(models=[], base_url=None, api_key=None, prices={})


def chain(fake, models=("primary-model",)) -> LLMChain:
    return LLMChain(models=list(models), base_url=fake.base_url, api_key="sk-test-feedback", prices=PRICES,
                    max_retries=0, timeout=10)


def refine(store, llm, collection="product", **kw):
    return refine_collection(store, collection, llm, wordpiece_counter(), budget=kw.pop("budget", 8000),
                             thresholds=RoutingThresholds(), run_id="test-run", **kw)


def rows(store, sql, *params):
    with store.reading() as conn:
        return conn.execute(sql, params).fetchall()


def as_feedback_role(store, sql, *params):
    """What an application connected as refinery_feedback would run."""
    with store.giving_feedback() as conn:
        return conn.execute(sql, params).fetchall() if sql.lstrip().upper().startswith("SELECT") or \
            "RETURNING" in sql.upper() else conn.execute(sql, params).rowcount


def grounded_answer(body):
    """A schema-valid answer whose summary and key points repeat the document's own words."""
    content = body["messages"][1]["content"]
    document = content.split("<document>", 1)[1]
    words = [w for w in re.findall(r"[A-Za-z]{5,}", document)][:60]
    title = re.search(r"^Title: (.+)$", content, re.M).group(1)
    return json.dumps({
        "title": title, "summary": " ".join(words[:30]) + ".",
        "key_points": [" ".join(words[i:i + 6]) for i in (0, 10, 20)], "topics": ["notes", "sync"],
        "entities": [], "questions_answered": [f"What does {title} cover?", "How does it work?"],
        "content_type": "guide", "language": "en"})


# ------------------------------------------------------------------ rules, role, append-only

def test_the_database_refuses_bad_feedback_with_a_message(indexed):
    refine(indexed, EXTRACTIVE_ONLY, "support")
    insert = ("INSERT INTO feedback_events (collection, path, rating, score, tags) "
              "VALUES (%s, %s, %s, %s, %s) RETURNING id")
    ok = as_feedback_role(indexed, insert, "support", "account-recovery.rst", -1, 2, ["wrong-facts", "tone"])
    assert ok[0][0] > 0
    cases = [
        (("support", "account-recovery.rst", 2, None, []), psycopg.errors.CheckViolation,
         "feedback_rating_is_plus_or_minus_one"),
        (("support", "account-recovery.rst", 1, 7, []), psycopg.errors.CheckViolation, "feedback_score_from_1_to_5"),
        (("support", "account-recovery.rst", 1, 1, []), psycopg.errors.CheckViolation,
         "feedback_score_agrees_with_rating"),
        (("support", "account-recovery.rst", 1, None, ["Wrong Facts"]), psycopg.errors.CheckViolation,
         "feedback_tags_well_formed"),
        (("support", "account-recovery.rst", 1, None, ["-dash-first"]), psycopg.errors.CheckViolation,
         "feedback_tags_well_formed"),
        (("support", "no-such-file.rst", 1, None, []), psycopg.errors.ForeignKeyViolation,
         "feedback on an unknown document support/no-such-file.rst"),
    ]
    for values, error, message in cases:
        with pytest.raises(error, match=message):
            as_feedback_role(indexed, insert, *values)

    # A document that was never refined has no version to judge.
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="has no refinement to judge yet"):
        as_feedback_role(indexed, insert, "product", "search.md", 1, None, [])
    # The Python path gives the same rule in words, before and after the database.
    with pytest.raises(FeedbackError, match="lower-case words"):
        record_feedback(indexed, Feedback(rating=1, collection="support", path="account-recovery.rst",
                                          tags=["UPPER"]))
    with pytest.raises(FeedbackError, match="no refinement to judge yet.*run refinery refine first"):
        record_feedback(indexed, Feedback(rating=1, collection="product", path="search.md"))
    assert rows(indexed, "SELECT count(*) FROM feedback_events") == [(1,)]


def test_the_feedback_role_may_only_insert_and_the_log_is_append_only(indexed):
    refine(indexed, EXTRACTIVE_ONLY, "support")
    event_id = record_feedback(indexed, Feedback(rating=1, collection="support", path="known-issues.txt"))
    stored = rows(indexed, "SELECT source, model, prompt_version, schema_version, input_hash IS NOT NULL, "
                           "document_id IS NOT NULL FROM feedback_events WHERE id = %s", event_id)
    assert stored == [("user", "extractive", "prompt-v1", "refined-v1", True, True)]
    for sql in ("SELECT comment FROM feedback_events", "SELECT * FROM documents",
                "UPDATE feedback_events SET rating = -1", "DELETE FROM feedback_events",
                "INSERT INTO feedback_events (collection, path, rating, source) "
                "VALUES ('support', 'known-issues.txt', 1, 'auto')",
                "INSERT INTO feedback_events (collection, path, rating, created_at) "
                "VALUES ('support', 'known-issues.txt', 1, now() - interval '3 days')"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_feedback_role(indexed, sql)
    # Not even the owner changes history.
    for sql in ("UPDATE feedback_events SET rating = -1", "DELETE FROM feedback_events",
                "TRUNCATE feedback_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            with indexed.writing() as conn:
                conn.execute(sql)
    assert rows(indexed, "SELECT rating FROM feedback_events") == [(1,)]


def test_chunk_feedback_names_the_search_hit(indexed):
    chunk_id, document_path = rows(indexed, "SELECT c.id, d.path FROM chunks c JOIN documents d "
                                            "ON d.id = c.document_id WHERE d.collection = 'support' LIMIT 1")[0]
    event_id = record_feedback(indexed, Feedback(rating=-1, chunk_id=chunk_id, query="reset my password",
                                                 tags=["irrelevant"]))
    target, path, hash_matches = rows(
        indexed, "SELECT f.target, f.path, f.input_hash = c.content_hash FROM feedback_events f "
                 "JOIN chunks c ON c.id = f.chunk_id WHERE f.id = %s", event_id)[0]
    assert (target, path, hash_matches) == ("chunk", document_path, True)
    with pytest.raises(FeedbackError, match="unknown chunk"):
        record_feedback(indexed, Feedback(rating=1, chunk_id=__import__("uuid").uuid4()))


# ------------------------------------------------------------------ views

def test_views_after_known_events(indexed, fake_openai):
    fake_openai.chat_responder = refinement_answer
    refine(indexed, chain(fake_openai), "product")
    refine(indexed, EXTRACTIVE_ONLY, "support")
    judge = [("product", "search.md", 1, 5, ["clear"], "Spot on"),
             ("product", "search.md", 1, None, ["clear", "complete"], None),
             ("product", "sync-and-offline.md", -1, 2, ["wrong-facts"], "Misses the offline limit"),
             ("product", "getting-started.md", -1, None, ["wrong-facts", "too-short"], "Too thin"),
             ("support", "known-issues.txt", 1, 4, [], None)]
    for collection, path, rating, score, tags, comment in judge:
        record_feedback(indexed, Feedback(rating=rating, collection=collection, path=path, score=score, tags=tags,
                                          comment=comment))

    positive = rows(indexed, "SELECT path, source, model, is_current, refined->>'title' IS NOT NULL "
                             "FROM feedback_positive_examples ORDER BY event_id")
    assert positive == [("search.md", "user", "primary-model", True, True)] * 2 + \
        [("known-issues.txt", "user", "extractive", True, True)]
    negative = rows(indexed, "SELECT path, comment FROM feedback_negative_examples ORDER BY event_id")
    assert negative == [("sync-and-offline.md", "Misses the offline limit"), ("getting-started.md", "Too thin")]

    summary = {(r["model"], r["prompt_version"]): r for r in feedback_summary(indexed)}
    primary = summary[("primary-model", "prompt-v1")]
    assert (primary["events"], primary["positive"], primary["negative"], primary["documents"]) == (4, 2, 2, 3)
    assert float(primary["approval_rate"]) == 0.5 and float(primary["user_approval_rate"]) == 0.5
    assert primary["frequent_tags"] == [{"tag": "clear", "count": 2}, {"tag": "wrong-facts", "count": 2},
                                        {"tag": "complete", "count": 1}, {"tag": "too-short", "count": 1}]
    assert summary[("extractive", "prompt-v1")]["approval_rate"] == 1

    # Training examples: mean rating on 1-5 (no score: +1 counts 5, -1 counts 1), best first.
    examples = rows(indexed, "SELECT path, rating, votes FROM feedback_training_examples(10, 4)")
    assert [(p, float(r), v) for p, r, v in examples] == [("search.md", 5.0, 2), ("known-issues.txt", 4.0, 1)]
    assert len(rows(indexed, "SELECT * FROM feedback_training_examples(1, 4)")) == 1
    assert {r[0] for r in rows(indexed, "SELECT path FROM feedback_training_examples(10, 1)")} == {
        "search.md", "known-issues.txt", "sync-and-offline.md", "getting-started.md"}

    # The refiner's totals: calls from llm_calls, current refinements from refined_documents.
    stats = {(r["source"], r["model"], r["link"], r["outcome"]): r for r in refiner_stats(indexed)}
    calls = stats[("llm_calls", "primary-model", "primary", "ok")]
    assert calls["calls"] == 6 and calls["documents"] == 6 and calls["cost_usd"] > 0
    assert stats[("refined_documents", "primary-model", "primary", "refined")]["documents"] == 6
    assert stats[("refined_documents", "extractive", "extractive", "refined")]["documents"] == 5


def test_feedback_views_asset_reports_the_summary(indexed, db_url, monkeypatch):
    import dagster as dg

    from dagster_project.assets.feedback import build_feedback_views
    from dagster_project.project import Project
    from dagster_project.resources.vector_store import PgVectorStore

    refine(indexed, EXTRACTIVE_ONLY, "support")
    assert feedback_versions(indexed, ["support"]) == {"support": "none"}
    record_feedback(indexed, Feedback(rating=-1, collection="support", path="known-issues.txt", tags=["stale"]))
    version = feedback_versions(indexed, ["support"])["support"]
    record_feedback(indexed, Feedback(rating=1, collection="support", path="known-issues.txt"))
    assert feedback_versions(indexed, ["support"])["support"] != version  # it sees every judgement of a person

    monkeypatch.setenv("DATABASE_URL", db_url)
    # The observable source, observed the way the UI does: one data version per collection.
    from dagster._core.definitions.observe import observe

    from dagster_project.assets.feedback import build_feedback_events

    observed = observe([build_feedback_events(Project.load())], resources={"vector_store": PgVectorStore()})
    versions = {e.event_specific_data.asset_observation.partition:
                e.event_specific_data.asset_observation.tags["dagster/data_version"]
                for e in observed.get_asset_observation_events()}
    assert versions == {"product": "none", "sales": "none", "support": feedback_versions(indexed, ["support"])["support"]}

    asset = build_feedback_views(Project.load())
    result = dg.materialize([asset], resources={"vector_store": PgVectorStore()})
    metadata = result.asset_materializations_for_node("feedback_views")[0].metadata
    assert metadata["feedback_events"].value == 2
    assert metadata["positive_examples"].value == 1 and metadata["negative_examples"].value == 1
    assert "stale (1)" in metadata["summary"].value


# ------------------------------------------------------------------ the pipeline judges

def test_pipeline_judgements_are_recorded_once_per_version_whatever_the_reruns(indexed, fake_openai):
    def responder(body):
        if body["model"] == "primary-model" and "Title: Sync and offline mode\n" in body["messages"][1]["content"]:
            return '{"title": "missing everything"}'  # invalid at answer and at repair
        return grounded_answer(body)

    fake_openai.chat_responder = responder
    llm = chain(fake_openai, models=("primary-model", "backup-model"))
    first = refine(indexed, llm, "product")
    assert first.judgements == {"validator": 1, "auto": 6}
    validator = rows(indexed, "SELECT path, model, rating, tags, comment FROM feedback_events WHERE source = 'validator'")
    assert len(validator) == 1
    path, model, rating, tags, comment = validator[0]
    assert (path, model, rating, tags) == ("sync-and-offline.md", "primary-model", -1,
                                           ["invalid-answer", "schema-mismatch"])
    assert "summary" in comment  # the validation errors
    # The pipeline's own judgements do not change the source's data version: the refine that wrote
    # them must not start itself again.
    assert feedback_versions(indexed, ["product"]) == {"product": "none"}
    auto = rows(indexed, "SELECT model, score FROM feedback_events WHERE source = 'auto' ORDER BY path")
    assert {m for m, _ in auto} == {"primary-model", "backup-model"} and all(s >= 4 for _, s in auto)

    # Rerun the same versions from scratch (results lost): every call is made again, no event twice.
    with indexed.writing() as conn:
        conn.execute("DELETE FROM refined_documents")
    calls_before = len(fake_openai.chat_requests)
    again = refine(indexed, llm, "product")
    assert again.refined == 6 and len(fake_openai.chat_requests) > calls_before
    assert again.judgements == {}
    assert rows(indexed, "SELECT source, count(*) FROM feedback_events GROUP BY source ORDER BY source") == \
        [("auto", 6), ("validator", 1)]
    # A weak answer is not approved.
    fake_openai.chat_responder = refinement_answer
    refine(indexed, llm, "support")
    assert rows(indexed, "SELECT count(*) FROM feedback_events WHERE source = 'auto' AND collection = 'support'") \
        == [(0,)]


# ------------------------------------------------------------------ learning from feedback

def test_negative_feedback_redoes_that_document_once_with_the_reason_in_the_prompt(indexed, fake_openai):
    fake_openai.chat_responder = refinement_answer
    llm = chain(fake_openai)
    assert refine(indexed, llm, "product").refined == 6
    approved = record_feedback(indexed, Feedback(rating=1, collection="product", path="search.md", score=5))
    reason = "The summary never mentions the 30-day limit on offline edits."
    rejected = record_feedback(indexed, Feedback(rating=-1, collection="product", path="sync-and-offline.md",
                                                 comment=reason, tags=["missing-facts"]))

    before = len(fake_openai.chat_requests)
    redo = refine(indexed, llm, "product")
    assert (redo.refined, redo.skipped, redo.feedback_redos) == (1, 5, 1)
    prompts = fake_openai.chat_requests[before:]
    assert len(prompts) == 1
    user = prompts[0]["messages"][1]["content"]
    assert "Title: Sync and offline mode" in user
    assert reason in user and "[missing-facts]" in user
    assert user.index("<review>") < user.index("<document>")
    search_json = rows(indexed, "SELECT refined FROM refined_documents r JOIN documents d ON d.id = r.document_id "
                                "WHERE d.path = 'search.md'")[0][0]
    assert json.dumps(search_json, ensure_ascii=False, separators=(",", ":")) in user  # the approved example
    assert sum(wordpiece_counter().count([m["content"] for m in prompts[0]["messages"]])) <= 8000

    considered, redone = rows(indexed, "SELECT r.feedback_considered, h.feedback_redo FROM refined_documents r "
                                       "JOIN refinement_history h ON h.document_id = r.document_id "
                                       "AND h.refined_at = r.refined_at JOIN documents d ON d.id = r.document_id "
                                       "WHERE d.path = 'sync-and-offline.md' ORDER BY h.id DESC LIMIT 1")[0]
    assert considered == [rejected] and redone is True
    assert approved not in considered

    # Once: the next run redoes nothing; a new rejection of the new refinement redoes it again.
    assert refine(indexed, llm, "product").refined == 0
    record_feedback(indexed, Feedback(rating=-1, collection="product", path="sync-and-offline.md",
                                      comment="Still wrong about conflicts."))
    before = len(fake_openai.chat_requests)
    assert refine(indexed, llm, "product").refined == 1
    user = fake_openai.chat_requests[before]["messages"][1]["content"]
    assert "Still wrong about conflicts." in user and reason in user  # both notes on this input


def test_feedback_in_a_pricing_prompt_is_redacted(indexed, fake_openai):
    def responder(body):
        answer = json.loads(refinement_answer(body))
        answer["summary"] += " It costs $8 per seat and supports 25 languages."
        return json.dumps(answer)

    fake_openai.chat_responder = responder
    llm = chain(fake_openai)
    refine(indexed, llm, "sales")
    refine(indexed, llm, "product")
    record_feedback(indexed, Feedback(rating=1, collection="product", path="search.md", score=5))
    record_feedback(indexed, Feedback(rating=-1, collection="sales", path="pricing-plans.md",
                                      comment="Business is $14 per seat with 20% off yearly, not 12."))
    before = len(fake_openai.chat_requests)
    assert refine(indexed, llm, "sales").refined == 1
    user = fake_openai.chat_requests[before]["messages"][1]["content"]
    review = user[user.index("<review>"):user.index("<document>")]
    assert "Business is [AMOUNT] per seat with [PERCENT] off yearly, not [NUMBER]." in review
    assert "<example>" in review and "It costs [AMOUNT] per seat and supports [NUMBER] languages." in review
    after_schema = user[user.index("\nTitle: "):]
    assert not re.search(r"\d", after_schema), re.search(r".{30}\d.{30}", after_schema).group(0)


def test_without_a_model_feedback_does_not_redo(indexed):
    refine(indexed, EXTRACTIVE_ONLY, "support")
    record_feedback(indexed, Feedback(rating=-1, collection="support", path="known-issues.txt", comment="meh"))
    assert refine(indexed, EXTRACTIVE_ONLY, "support").refined == 0  # the same JSON would come back


def test_feedback_sends_a_small_document_to_the_model(indexed, fake_openai):
    fake_openai.chat_responder = refinement_answer
    llm = chain(fake_openai)
    small = RoutingThresholds(min_words=100_000)
    report = refine_collection(indexed, "support", llm, wordpiece_counter(), budget=8000, thresholds=small)
    assert report.lightweight == report.refined == 5 and report.calls == 0
    record_feedback(indexed, Feedback(rating=-1, collection="support", path="known-issues.txt",
                                      comment="Just a list of sentences, no summary."))
    redo = refine_collection(indexed, "support", llm, wordpiece_counter(), budget=8000, thresholds=small)
    assert (redo.refined, redo.lightweight, redo.calls) == (1, 0, 1)
    assert rows(indexed, "SELECT link FROM refined_documents r JOIN documents d ON d.id = r.document_id "
                         "WHERE d.path = 'known-issues.txt'") == [("primary",)]


# ------------------------------------------------------------------ the CLI

@pytest.fixture
def cli_env(pg_server, tmp_path, fake_openai):
    fake_openai.chat_responder = refinement_answer
    return refine_cli_env(pg_server, tmp_path, fake_openai, OPENAI_API_KEY="sk-test-feedback-cli", USER="tester",
                          LOGNAME="tester")


def test_cli_feedback_add_list_and_the_refine_that_learns_from_it(cli_env, fake_openai):
    first = refinery(cli_env, "refine", "--collection", "support", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["refined"] == 5

    # Refused before the database is asked, and by the database, with exit code 2.
    bad = [(["--document", "known-issues.txt", "--rating", "2"], "the rating must be +1 or -1"),
           (["--document", "known-issues.txt", "--rating", "-1", "--tags", "Bad Tag"], "lower-case words"),
           (["--document", "known-issue.txt", "--rating", "-1"], "no document 'known-issue.txt' in the index; "
                                                                  "did you mean support/known-issues.txt"),
           (["--document", "known-issues.txt", "--rating", "-1", "--score", "5"], "a score of 1-3 goes with rating -1"),
           (["--document", "known-issues.txt", "--rating", "-1", "--collection", "nope"], "no collection 'nope'")]
    for args, message in bad:
        out = refinery(cli_env, "feedback", "add", *args)
        assert out.returncode == 2 and message in out.stderr and out.stdout == "", (args, out.stderr)

    on_disk = str(PROJECT_ROOT / "examples/knowledge_base/support/known-issues.txt")
    added = refinery(cli_env, "feedback", "add", "--document", on_disk, "--rating", "-1", "--tags",
                     "wrong-facts,outdated", "--reason", "Lists an issue fixed in 4.2 as still open.", "--json")
    assert added.returncode == 0, added.stderr
    event = json.loads(added.stdout)
    assert (event["collection"], event["path"], event["rating"], event["tags"], event["author"], event["model"]) == \
        ("support", "known-issues.txt", -1, ["wrong-facts", "outdated"], "tester", "gpt-4o-mini")

    listed = json.loads(refinery(cli_env, "feedback", "list", "--json").stdout)
    assert [e["event_id"] for e in listed if e["source"] == "user"] == [event["event_id"]]
    text = refinery(cli_env, "feedback", "list", "--document", "support/known-issues.txt")
    assert "wrong-facts,outdated Lists an issue fixed in 4.2" in text.stdout

    before = len(fake_openai.chat_requests)
    redo = json.loads(refinery(cli_env, "refine", "--collection", "support", "--json").stdout)
    assert (redo["refined"], redo["skipped"], redo["feedback_redos"]) == (1, 4, 1)
    assert "Lists an issue fixed in 4.2 as still open." in fake_openai.chat_requests[before]["messages"][1]["content"]

    summary = json.loads(refinery(cli_env, "feedback", "summary", "--json").stdout)
    assert any(r["model"] == "gpt-4o-mini" and r["negative"] >= 1 for r in summary["summary"])
    assert "sk-test-feedback-cli" not in added.stdout + added.stderr + redo.__repr__()
