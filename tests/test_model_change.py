"""Changing the embedding model without downtime, on a real PostgreSQL: the candidate is built
beside the active model, search keeps serving the active one until a gated switch, the switch is
one transaction, and the old vectors go only on request. Hash embedders of different sizes stand
in for two models: on the sample golden set 256 dimensions retrieve better than 384, 8 worse."""

from __future__ import annotations

import json

import pytest

from dagster_project.core.embed.factory import build_embedder
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import (
    ingest_collection,
    sync_chunks,
    sync_documents,
    sync_embeddings,
)
from dagster_project.core.search.model_change import (
    ModelChangeError,
    drop_model,
    evaluate_gates,
    model_status,
    models_to_build,
    switch_to_candidate,
)
from dagster_project.core.settings import DEFAULT_GOLDEN_QUESTIONS, Settings
from tests.conftest import SAMPLE_MANIFEST, write_manifest
from tests.test_dagster import cli_env, refinery  # noqa: F401  (the fixture)

OLD, BETTER, WORSE = HashEmbedder(384), HashEmbedder(256), HashEmbedder(8)
COLLECTIONS = ("product", "sales", "support")
QUERY = "How do I get back into a locked account?"


def build(key: str):
    return build_embedder(Settings(embed_provider="hash"), key)


def gates(store, candidate, manifest=COLLECTIONS):
    return evaluate_gates(store, candidate, build, DEFAULT_GOLDEN_QUESTIONS, manifest_collections=manifest)


def embed_with(store, candidate, collections=COLLECTIONS):
    """What the embeddings asset does for each collection while EMBED_* names `candidate`."""
    for name in collections:
        sync_embeddings(store, name, *models_to_build(store, candidate, build))


def serve(store, query=QUERY, k=10):
    """Vector search as `refinery search` runs it: with the active model, whatever is configured."""
    embedder = build(store.active_model_key())
    return [(h.path, round(h.score, 6)) for h in store.search(
        store.model_id(embedder.model), embedder.model.dims, embedder.embed([query]).vectors[0], k=k, mode="vector")]


def search_with(store, embedder, query=QUERY, k=10):
    return [(h.path, round(h.score, 6)) for h in store.search(
        store.model_id(embedder.model), embedder.model.dims, embedder.embed([query]).vectors[0], k=k, mode="vector")]


def vectors(store, embedder) -> int:
    with store.reading() as conn:
        return conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s",
                            (store.model_id(embedder.model),)).fetchone()[0]


@pytest.fixture
def sample_index(store):
    for collection in load_manifest(SAMPLE_MANIFEST).collections.values():
        ingest_collection(store, collection, embedder=OLD, chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    return store


def test_first_model_built_becomes_active_and_later_ones_wait(sample_index):
    store = sample_index
    assert store.active_model_key() == OLD.model.key
    embed_with(store, BETTER)
    assert store.active_model_key() == OLD.model.key
    roles = {m["key"]: m["role"] for m in model_status(store, BETTER.model.key)}
    assert roles == {OLD.model.key: "active", BETTER.model.key: "candidate"}


def test_partial_candidate_is_built_beside_and_search_keeps_serving_the_active_model(sample_index):
    store = sample_index
    before = serve(store)
    assert search_with(store, BETTER) == []  # nothing of the candidate yet

    embed_with(store, BETTER, collections=["product"])
    assert vectors(store, BETTER) > 0 and store.has_index(store.model_id(BETTER.model))  # its own index
    assert serve(store) == before != search_with(store, BETTER)

    state = gates(store, BETTER)
    assert not state.covered and set(state.missing_by_collection) == {"sales", "support"}
    for force in (False, True):  # coverage is never forced: search would lose documents
        with pytest.raises(ModelChangeError, match="has no vector for .* live chunks .*sales .*support"):
            switch_to_candidate(store, state, force=force)
    assert store.active_model_key() == OLD.model.key and serve(store) == before

    # Incremental: the rest is embedded once, and a rerun sends nothing for either model.
    embed_with(store, BETTER)
    for name in COLLECTIONS:
        report = sync_embeddings(store, name, *models_to_build(store, BETTER, build))
        assert report.texts_embedded == 0
    assert gates(store, BETTER).covered


def test_a_collection_left_out_of_the_manifest_is_named_with_what_to_do(sample_index):
    """QA: a stored collection the manifest no longer names kept the switch closed, and the refusal
    said to run `refinery ingest`, which refuses a collection the manifest does not name."""
    store = sample_index
    embed_with(store, BETTER, collections=["product"])
    problem = gates(store, BETTER, manifest=("product", "sales")).coverage_problem()
    assert "(sales " in problem and "support " in problem
    assert "materialize `embeddings` for those collections (refinery ingest)" in problem
    assert "support is not in the manifest: add it back and ingest it, or delete it with `refinery prune`" in problem
    embed_with(store, BETTER, collections=["sales"])
    problem = gates(store, BETTER, manifest=("product", "sales")).coverage_problem()
    assert "refinery ingest" not in problem and "support is not in the manifest" in problem


def test_switch_refused_while_the_candidate_retrieves_worse_unless_forced(sample_index):
    store = sample_index
    embed_with(store, WORSE)
    state = gates(store, WORSE)
    assert state.covered and not state.metrics_ok
    assert state.candidate_metrics["recall@5"] < state.active_metrics["recall@5"]
    with pytest.raises(ModelChangeError, match="retrieves worse .*recall@5 .*--force skips"):
        switch_to_candidate(store, state)
    assert store.active_model_key() == OLD.model.key

    assert switch_to_candidate(store, state, force=True) == OLD.model.key
    assert store.active_model_key() == WORSE.model.key
    with store.reading() as conn:
        forced, recorded = conn.execute("SELECT forced, gates FROM embedding_model_switches ORDER BY id DESC").fetchone()
    assert forced is True and recorded["candidate_metrics"] == state.candidate_metrics


def test_switch_when_covered_and_as_good_then_search_serves_the_new_model_and_drop_removes_the_old(sample_index):
    store = sample_index
    old_hits = serve(store)
    embed_with(store, BETTER)
    state = gates(store, BETTER)
    assert state.covered and state.metrics_ok
    assert state.candidate_metrics["mrr@10"] >= state.active_metrics["mrr@10"]

    assert switch_to_candidate(store, state) == OLD.model.key
    assert store.active_model_key() == BETTER.model.key
    assert serve(store) == search_with(store, BETTER) != old_hits
    # Nothing lost: the old vectors stay (a switch back needs no re-embedding) until dropped.
    assert vectors(store, OLD) > 0 and store.has_index(store.model_id(OLD.model))
    # After the switch only the new model is kept up to date.
    assert [e.model.key for e in models_to_build(store, BETTER, build)] == [BETTER.model.key]

    with pytest.raises(ModelChangeError, match="is the active model"):
        drop_model(store, BETTER.model.key, configured_key=OLD.model.key)
    with pytest.raises(ModelChangeError, match="is the configured model"):
        drop_model(store, OLD.model.key, configured_key=OLD.model.key)
    with pytest.raises(ModelChangeError, match="no embedding model"):
        drop_model(store, "hash:nothing:3", configured_key=BETTER.model.key)
    kept = vectors(store, BETTER)
    assert drop_model(store, OLD.model.key, configured_key=BETTER.model.key) > 0
    assert vectors(store, OLD) == 0 and not store.has_index(store.model_id(OLD.model))
    assert vectors(store, BETTER) == kept and serve(store) == search_with(store, BETTER)
    assert drop_model(store, OLD.model.key, configured_key=BETTER.model.key) == 0  # a rerun: nothing left
    roles = {m["key"]: m["role"] for m in model_status(store, BETTER.model.key)}
    assert roles == {OLD.model.key: "dropped", BETTER.model.key: "active"}


def test_a_chunk_written_after_the_gates_were_measured_stops_the_switch(tmp_path, store):
    root = tmp_path / "kb"
    root.mkdir()
    (root / "a.md").write_text("# Locks\n\nAn account locks after five failed sign-ins.\n")
    collection = load_manifest(write_manifest(tmp_path, {"kb": {"root": "kb"}})).collection("kb")
    ingest_collection(store, collection, embedder=OLD, chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    sync_embeddings(store, "kb", OLD, BETTER)
    state = gates(store, BETTER)
    assert state.covered

    (root / "b.md").write_text("# Codes\n\nRecovery codes unlock a locked account.\n")
    sync_documents(store, collection, max_file_bytes=10**7)
    sync_chunks(store, "kb", ChunkSettings(), OLD.token_counter)  # not embedded yet
    with pytest.raises(ModelChangeError, match="added without its vector meanwhile"):
        switch_to_candidate(store, state, force=True)
    assert store.active_model_key() == OLD.model.key

    # The embeddings step embeds the new text with the active model first, then the candidate's.
    report = sync_embeddings(store, "kb", *models_to_build(store, BETTER, build))
    assert report.texts_embedded == 2 and gates(store, BETTER).covered
    assert "b.md" in {path for path, _ in serve(store, "recovery codes unlock")}


def test_cli_and_dagster_change_the_model_without_downtime(cli_env):  # noqa: F811
    assert refinery(cli_env, "ingest", "--json").returncode == 0
    before = json.loads(refinery(cli_env, "search", QUERY, "--mode", "vector", "--json").stdout)
    none = json.loads(refinery(cli_env, "model", "status", "--json").stdout)
    assert none["gates"]["candidate"] is None and [m["role"] for m in none["models"]] == ["active"]

    cli_env["EMBED_DIMS"] = "256"  # the new model: its vectors are built beside the active ones
    assert refinery(cli_env, "ingest", "--collection", "product", "--json").returncode == 0
    status = json.loads(refinery(cli_env, "model", "status", "--json").stdout)
    candidate = next(m for m in status["models"] if m["role"] == "candidate")
    assert candidate["key"] == "hash:feature-hash-v2:256" and candidate["vectors"] > 0
    assert set(candidate["missing_by_collection"]) == {"sales", "support"}

    refused = refinery(cli_env, "model", "switch", "--force", "--json")
    assert refused.returncode == 1
    report = json.loads(refused.stdout)
    assert report["checks"]["candidate_covers_every_live_chunk"]["passed"] is False
    assert "has no vector for" in report["failures"][0] and "sales" in report["failures"][0]
    assert json.loads(refinery(cli_env, "search", QUERY, "--mode", "vector", "--json").stdout) == before

    assert refinery(cli_env, "ingest", "--json").returncode == 0
    done = refinery(cli_env, "model", "switch", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["switched"] and report["active"] == "hash:feature-hash-v2:256"
    assert all(c["passed"] for c in report["checks"].values())
    after = json.loads(refinery(cli_env, "search", QUERY, "--mode", "vector", "--json").stdout)
    assert [h["score"] for h in after] != [h["score"] for h in before]
    assert json.loads(refinery(cli_env, "status", "--json").stdout)["embedding_model"] == "hash:feature-hash-v2:256"

    dropped = refinery(cli_env, "model", "drop", "hash:feature-hash-v2:384", "--json")
    assert dropped.returncode == 0 and json.loads(dropped.stdout)["vectors_deleted"] > 0
    again = refinery(cli_env, "model", "drop", "hash:feature-hash-v2:256")
    assert again.returncode == 2 and "is the active model" in again.stderr


def test_the_switch_is_an_asset_with_its_checks_and_a_job():
    from dagster_project.definitions import defs

    switch = defs.resolve_job_def("switch_embedding_model")
    assert switch.partitions_def is None
    checks = {k.name for k in defs.resolve_assets_def("active_embedding_model").check_keys}
    assert checks == {"candidate_covers_every_live_chunk", "candidate_retrieves_at_least_as_well"}
    # never switched by the automation sensor: a switch is asked for
    assert not defs.resolve_assets_def("active_embedding_model").automation_conditions_by_key


def test_a_model_that_never_built_a_vector_does_not_become_active(cli_env, fake_openai):  # noqa: F811
    """The operator tries OpenAI with a wrong key (401), then falls back to the hash model: the
    fallback is built and served, and the failed model can be dropped."""
    fake_openai.fail_next(401, times=1000)
    openai_env = dict(cli_env, EMBED_PROVIDER="openai", OPENAI_API_KEY="sk-wrongkey123456789",
                      OPENAI_BASE_URL=fake_openai.base_url)
    assert refinery(openai_env, "ingest", "--json").returncode != 0
    before = refinery(cli_env, "search", "refund")
    assert before.returncode == 2 and "nothing is embedded yet" in before.stderr

    ingest = refinery(cli_env, "ingest", "--json")
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    hits = refinery(cli_env, "search", "refund", "--json")
    assert hits.returncode == 0 and json.loads(hits.stdout), hits.stderr
    status = json.loads(refinery(cli_env, "model", "status", "--json").stdout)
    roles = {m["key"]: m["role"] for m in status["models"]}
    assert roles[OLD.model.key] == "active" and roles["openai:text-embedding-3-small:1536"] != "active"
    dropped = refinery(cli_env, "model", "drop", "openai:text-embedding-3-small:1536")
    assert dropped.returncode == 0, dropped.stderr


def test_an_install_stuck_on_an_active_model_without_vectors_heals_on_the_next_ingest(store):
    """Before the fix, a model became active before embedding anything: such an install heals
    when another model gets built, and search says what to do meanwhile."""
    from dagster_project.core.embed.base import EmbeddingModel
    from dagster_project.core.search.searcher import Searcher, SearchError

    stuck = store.ensure_model(EmbeddingModel("openai", "text-embedding-3-small", 1536))
    with store.writing() as conn:
        conn.execute("INSERT INTO active_embedding_model (model_id) VALUES (%s)", (stuck,))
    with pytest.raises(SearchError, match="nothing is embedded yet"):
        Searcher(Settings(embed_provider="hash"), store)

    collection = load_manifest(SAMPLE_MANIFEST).collections["product"]
    sync_documents(store, collection, max_file_bytes=10**7)
    sync_chunks(store, "product", ChunkSettings(), OLD.token_counter)
    report = sync_embeddings(store, "product", *models_to_build(store, OLD, build))
    assert store.active_model_key() == OLD.model.key and report.counts["activated"] == 1
    assert any("held no vector" in w and "openai:text-embedding-3-small:1536" in w for w in report.warnings)
    assert serve(store, "refund")
    assert drop_model(store, "openai:text-embedding-3-small:1536", OLD.model.key) == 0


def test_status_on_a_fresh_install_names_no_active_model(cli_env):  # noqa: F811
    """Until a model holds vectors nothing is active (as `model status` says): status names the
    model the next ingest embeds with, not as the active one."""
    text = refinery(cli_env, "status")
    assert text.returncode == 0, text.stderr
    assert "no model holds vectors yet: the next ingest embeds with hash:feature-hash-v2:384" in text.stdout
    assert "active model hash" not in text.stdout
    out = json.loads(refinery(cli_env, "status", "--json").stdout)
    assert out["embedding_model"] is None and out["configured_model"] == "hash:feature-hash-v2:384"
    assert "none yet" in refinery(cli_env, "model", "status").stdout
