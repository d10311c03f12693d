"""Promises of the `refinery` command found broken by QA: a text search configuration the server
lacks is a broken manifest, a chunk budget that does not fit is a bad setting, the feedback log
outlives documents, long questions are shortened, and --collection is never silently dropped."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import new_database, refinery, write_manifest


@pytest.fixture
def corpus(tmp_path):
    for name, text in (("c1", "# Ocelots\n\nOcelots hunt at night in the forest.\n"),
                       ("c2", "# Lynxes\n\nLynxes live in cold forests and hunt hares.\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.md").write_text(text)
    return tmp_path


@pytest.fixture
def env(pg_server, corpus):
    environment = {k: v for k, v in os.environ.items() if k not in ("LLM_MODEL", "OPENAI_API_KEY", "TEXT_SEARCH_CONFIG")}
    environment.update(DATABASE_URL=new_database(pg_server), DAGSTER_PG_URL=new_database(pg_server, template="template1"),
                       DAGSTER_HOME=str(corpus / "dagster_home"), REFINERY_HOME=str(corpus / "refinery_home"),
                       EMBED_PROVIDER="hash", CORPUS_MANIFEST=str(corpus / "corpus.yaml"))
    return environment


def documents_per_collection(env) -> dict[str, int]:
    status = refinery(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    return {name: c["documents"] for name, c in json.loads(status.stdout)["collections"].items()}


def test_a_text_search_config_the_server_lacks_stops_the_job_commands_before_any_write(env, corpus):
    manifest = write_manifest(corpus, {"c1": {"root": "c1", "text_search_config": "klingon"}, "c2": {"root": "c2"}})
    for args in (["ingest", "--dry-run"], ["ingest"], ["ingest", "--collection", "c2", "--json"], ["refine"]):
        done = refinery(env, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == "", args
        line = done.stderr.strip()
        assert "\n" not in line, line
        assert line.startswith(f"refinery: manifest {manifest}: collection 'c1': text_search_config: 'klingon' is not "
                               "a text search configuration of this PostgreSQL; valid ones: simple, english, german"), line
    assert documents_per_collection(env) == {"c1": 0, "c2": 0}

    # The collections without one of their own use TEXT_SEARCH_CONFIG: a bad setting, said so.
    write_manifest(corpus, {"c1": {"root": "c1", "text_search_config": "German"}, "c2": {"root": "c2"}})
    done = refinery({**env, "TEXT_SEARCH_CONFIG": "vulcan"}, "ingest", "--collection", "c1")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("refinery: bad setting: TEXT_SEARCH_CONFIG='vulcan' is not a text search "
                                  f"configuration of this PostgreSQL (it is that of the collections with no "
                                  f"`text_search_config` in {manifest}: 'c2'); valid ones: simple"), done.stderr
    assert documents_per_collection(env) == {"c1": 0, "c2": 0}

    # Fixed: the same command finishes the job (and --collection given twice ingests both).
    done = refinery(env, "ingest", "--collection", "c1", "--collection", "c2", "--json")
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["collections"]) == {"c1", "c2"}
    assert documents_per_collection(env) == {"c1": 1, "c2": 1}
    # Search reads the query in TEXT_SEARCH_CONFIG too.
    done = refinery({**env, "TEXT_SEARCH_CONFIG": "vulcan"}, "search", "ocelots", "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("refinery: bad setting: TEXT_SEARCH_CONFIG='vulcan' is not a text search "
                                  "configuration of this PostgreSQL; valid ones: simple, english"), done.stderr


def test_a_run_launched_outside_the_cli_fails_before_writing_documents(env, corpus, monkeypatch):
    """The UI and the automation daemon run the documents step without the CLI's check."""
    import dagster as dg

    from dagster_project.assets.documents import build_documents
    from dagster_project.core.db.store import VectorStore
    from dagster_project.project import Project
    from dagster_project.resources.vector_store import PgVectorStore

    write_manifest(corpus, {"c1": {"root": "c1", "text_search_config": "klingon"}})
    for name in ("DATABASE_URL", "EMBED_PROVIDER", "REFINERY_HOME", "CORPUS_MANIFEST"):
        monkeypatch.setenv(name, env[name])
    result = dg.materialize([build_documents(Project.load())], partition_key="c1",
                            resources={"vector_store": PgVectorStore()}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error
    while failure.cause is not None:
        failure = failure.cause
    assert "collection 'c1': text_search_config: 'klingon' is not a text search configuration" in failure.message
    store = VectorStore(env["DATABASE_URL"])
    try:
        assert store.document_keys() == set()
    finally:
        store.close()


def test_the_store_names_the_collection_and_both_settings_if_a_bad_configuration_reaches_it(store, corpus):
    from dagster_project.core.embed.local import HashEmbedder
    from dagster_project.core.ingest.chunking import ChunkSettings
    from dagster_project.core.ingest.corpus import load_manifest
    from dagster_project.core.ingest.pipeline import ingest_collection

    collection = load_manifest(write_manifest(corpus, {"c1": {"root": "c1"}})).collection("c1")
    with pytest.raises(ValueError, match=r"collection 'c1': text search configuration 'klingon' \(its "
                                         r"`text_search_config` in the manifest, or TEXT_SEARCH_CONFIG"):
        ingest_collection(store, collection, embedder=HashEmbedder(), max_file_bytes=10**6,
                          chunk_settings=ChunkSettings(text_search_config="klingon"))


@pytest.mark.parametrize("settings, message", [
    ({"CHUNK_MAX_TOKENS": "64"}, ("CHUNK_MAX_TOKENS=64 leaves no room for text after 32 tokens of context and 32 "
                                  "of overlap: set it to at least 80 or lower CHUNK_OVERLAP_TOKENS")),
    ({"CHUNK_OVERLAP_TOKENS": "200"}, "CHUNK_OVERLAP_TOKENS=200 must be at most half of CHUNK_MAX_TOKENS=256"),
], ids=["no-room-for-text", "overlap"])
def test_a_chunk_budget_that_does_not_fit_is_a_bad_setting_of_every_command(env, corpus, settings, message):
    write_manifest(corpus, {"c1": {"root": "c1"}})
    for args in (["ingest", "--dry-run", "--json"], ["refine", "--json"], ["status", "--json"],
                 ["search", "ocelots", "--json"], ["feedback", "list", "--json"]):
        done = refinery({**env, **settings}, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == "", args
        assert done.stderr == f"refinery: bad setting: {message}\n", (args, done.stderr)
    # Pydantic echoes the values it was given: the start of DATABASE_URL, password included.
    secret = {**env, **settings, "DATABASE_URL": "postgresql://refinery:hunter2secret@127.0.0.1:1/refinery"}
    secret.pop("REFINERY_HOME")
    done = refinery(secret, "status")
    assert done.returncode == 2 and done.stderr == f"refinery: bad setting: {message}\n", done.stderr


def test_feedback_list_names_a_document_that_left_the_index_by_its_events(env, corpus):
    write_manifest(corpus, {"c1": {"root": "c1"}})
    (corpus / "c1" / "gone.md").write_text("# Gone soon\n\nThis page will be deleted after it is judged.\n")
    for args in (["ingest"], ["refine"], ["feedback", "add", "--document", "gone.md", "--rating", "-1",
                                         "--reason", "too vague"]):
        done = refinery(env, *args)
        assert done.returncode == 0, (args, done.stderr)
    (corpus / "c1" / "gone.md").unlink()
    assert refinery(env, "ingest").returncode == 0

    for spec in ("gone.md", "c1/gone.md"):
        done = refinery(env, "feedback", "list", "--document", spec, "--json")
        assert done.returncode == 0, done.stderr
        events = json.loads(done.stdout)
        assert [(e["collection"], e["path"], e["rating"], e["comment"]) for e in events] == \
            [("c1", "gone.md", -1, "too vague")]
    done = refinery(env, "feedback", "list", "--document", "never.md")
    assert done.returncode == 2
    assert "no document 'never.md' in the index or the feedback log" in done.stderr


def test_eval_shortens_a_long_question_in_its_lines(indexed, db_url, tmp_path):
    questions = tmp_path / "q.yaml"
    question = "zyxqv " * 10_000
    questions.write_text(f'questions:\n  - question: "{question}"\n    documents: ["getting-started.md"]\n'
                         "    collection: product\n")
    env = {**os.environ, "DATABASE_URL": db_url, "EMBED_PROVIDER": "hash", "REFINERY_HOME": str(tmp_path / "home")}
    done = refinery(env, "eval", "--questions", str(questions), "--mode", "text")
    assert done.returncode == 0, done.stderr
    missed = [line for line in done.stdout.splitlines() if "missed:" in line]
    assert missed == [f"  text missed: {('zyxqv ' * 20)[:120]}… (expected product/getting-started.md)"]
    as_json = refinery(env, "eval", "--questions", str(questions), "--mode", "text", "--json")
    assert json.loads(as_json.stdout)["missed_top5"][0]["question"] == question.strip()


def test_collection_given_twice_is_refused_where_a_command_takes_one(env, corpus):
    write_manifest(corpus, {"c1": {"root": "c1"}, "c2": {"root": "c2"}})
    for args in (["search", "ocelots", "--collection", "c1", "--collection", "c2"],
                 ["feedback", "list", "--collection", "c1", "--collection", "c2"]):
        done = refinery(env, *args)
        assert done.returncode == 2 and done.stdout == ""
        assert "error: --collection was given twice: this command takes one" in done.stderr, done.stderr
    done = refinery(env, "ingest", "--dry-run", "--collection", "c2", "--collection", "c1", "--json")
    assert done.returncode == 0, done.stderr
    assert list(json.loads(done.stdout)["collections"]) == ["c2", "c1"]
