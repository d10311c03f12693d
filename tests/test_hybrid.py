"""Hybrid search and evaluation: fusion order on a case where each leg alone fails, filters on
both legs, chunks that carry their context, and the golden-question evaluation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dagster_project.core.db.chunks import ChunkRow, DocumentToChunk
from dagster_project.core.db.documents import DocumentRow
from dagster_project.core.embed.base import EmbeddingModel, normalize
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings, embed_text
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.hashing import content_hash, stable_id
from dagster_project.core.ingest.pipeline import ingest_collection
from dagster_project.core.search.evaluation import QuestionsError, distinct_documents, evaluate, load_questions
from dagster_project.core.search.hybrid import OUTSIZED_DOCUMENT_CHUNKS, RRF_K
from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST

GOLDEN = PROJECT_ROOT / "examples" / "golden_questions.yaml"


def add_document(store, name: str, text: str, vector: np.ndarray, model_id: int, collection: str = "kb") -> None:
    doc = DocumentRow(stable_id("doc", name), collection, f"{name}.md", content_hash(name), 1, "markdown", name,
                      None, None, None, "full", False, {}, [], [], "test")
    store.apply_documents(collection, [doc], [], [], [], [])
    digest = content_hash(text)
    store.replace_chunks(collection, [], [ChunkRow(stable_id("chunk", name), doc.id, collection, 0, [], text,
                                                   5, digest)], "test")
    store.write_embeddings(model_id, [digest], vector[None, :])


def test_fusion_ranks_first_what_both_legs_rank_second(store):
    rng = np.random.default_rng(7)
    query = normalize(rng.normal(size=(1, 16)).astype(np.float32))[0]
    model_id = store.ensure_model(EmbeddingModel("test", "fusion", 16))

    def near(similarity: float) -> np.ndarray:
        other = rng.normal(size=16).astype(np.float32)
        other -= (other @ query) * query
        other /= np.linalg.norm(other)
        return similarity * query + np.sqrt(1 - similarity**2) * other

    add_document(store, "vector-decoy", "tide tables for the harbour", near(0.99), model_id)
    add_document(store, "answer", "the lighthouse keeper logs every storm", near(0.95), model_id)
    for i in range(8):
        add_document(store, f"filler-{i}", f"unrelated note number {i}", near(0.6 - i * 0.01), model_id)
    add_document(store, "text-decoy", "lighthouse keeper lighthouse keeper lighthouse keeper roster",
                 near(0.1), model_id)

    def top(mode):
        hits = store.search(model_id, 16, query, k=3, mode=mode, query_text="lighthouse keeper")
        return [h.path for h in hits], hits

    assert top("vector")[0][0] == "vector-decoy.md"
    assert top("text")[0][0] == "text-decoy.md"
    paths, hits = top("hybrid")
    assert paths[0] == "answer.md"
    assert hits[0].legs == {"vector": 2, "text": 2}
    assert hits[0].score == pytest.approx(2 / (RRF_K + 2))


def add_chunks(store, name: str, passages: list[tuple[str, np.ndarray]], model_id: int, card: bool = False) -> None:
    """A document of several chunks, each (text, vector); with `card`, the first is its card."""
    doc = DocumentRow(stable_id("doc", name), "kb", f"{name}.md", content_hash(name), 1, "markdown", name,
                      None, None, None, "full", False, {}, [], [], "test")
    store.apply_documents("kb", [doc], [], [], [], [])
    rows = [ChunkRow(stable_id("chunk", name, str(i)), doc.id, "kb", i, [], text, 5, content_hash(text),
                     card=card and i == 0)
            for i, (text, _) in enumerate(passages)]
    store.replace_chunks("kb", [], rows, "test")
    store.write_embeddings(model_id, [r.content_hash for r in rows], np.stack([v for _, v in passages]))


def unit_near(rng, query: np.ndarray, similarity: float) -> np.ndarray:
    other = rng.normal(size=query.shape[0]).astype(np.float32)
    other -= (other @ query) * query
    other /= np.linalg.norm(other)
    return (similarity * query + np.sqrt(1 - similarity**2) * other).astype(np.float32)


def test_a_leg_counts_a_page_at_its_rank_among_documents_not_behind_a_long_pages_chunks(store):
    """The vector leg's second document, behind a long page that holds its ten best chunks, ranks
    above the text leg's third document (at its chunk rank, 11th, it fell below it)."""
    rng = np.random.default_rng(11)
    query = normalize(rng.normal(size=(1, 16)).astype(np.float32))[0]
    model_id = store.ensure_model(EmbeddingModel("test", "document-rank", 16))
    add_chunks(store, "long", [(f"harbour tide table part {i}", unit_near(rng, query, 0.99 - i * 0.004))
                               for i in range(10)], model_id)
    add_chunks(store, "answer", [("the harbour master's tide almanac", unit_near(rng, query, 0.94))], model_id)
    for i in range(45):  # the rest of the vector leg's 50 chunks
        add_chunks(store, f"filler-{i}", [(f"unrelated note number {i}", unit_near(rng, query, 0.5 - i * 0.004))],
                   model_id)
    for name, text in (("text-1", "lighthouse keeper lighthouse keeper"), ("text-2", "lighthouse keeper roster"),
                       ("text-3", "the lighthouse keeper wrote a long letter home about the weather")):
        add_chunks(store, name, [(text, unit_near(rng, query, 0.0))], model_id)
    found = [d.path for d in store.search_documents(model_id, 16, query, k=10, mode="hybrid",
                                                    query_text="lighthouse keeper", passages=1)]
    assert found[0] == "long.md"
    assert found.index("answer.md") < found.index("text-3.md")


def test_a_legs_first_document_outranks_one_both_legs_rank_lowly(store):
    """At K = 60 a page both legs rank 15th or so outscored the vector leg's first page."""
    rng = np.random.default_rng(13)
    query = normalize(rng.normal(size=(1, 16)).astype(np.float32))[0]
    model_id = store.ensure_model(EmbeddingModel("test", "rrf-k", 16))
    add_chunks(store, "answer", [("the harbour master's tide almanac", unit_near(rng, query, 0.99))], model_id)
    for i in range(14):
        add_chunks(store, f"vector-{i}", [(f"unrelated note number {i}", unit_near(rng, query, 0.9 - i * 0.01))],
                   model_id)
        add_chunks(store, f"text-{i}", [(f"lighthouse keeper lighthouse keeper {i}", unit_near(rng, query, 0.0))],
                   model_id)
    weak = "a note that names the lighthouse keeper once among many other words about the weather and the boats"
    add_chunks(store, "both-weak", [(weak, unit_near(rng, query, 0.7))], model_id)
    found = [d.path for d in store.search_documents(model_id, 16, query, k=30, mode="hybrid",
                                                    query_text="lighthouse keeper", passages=1)]
    assert found.index("answer.md") < found.index("both-weak.md")


def test_a_page_whose_card_matches_outranks_a_slightly_closer_passage(store):
    """Hybrid's card leg: a reference page described in its card (its front matter's description)
    outranks a page whose one passage is a little closer to the question, which the vector leg
    alone ranks first (without the card leg: 1/11 against 1/12)."""
    rng = np.random.default_rng(17)
    query = normalize(rng.normal(size=(1, 16)).astype(np.float32))[0]
    model_id = store.ensure_model(EmbeddingModel("test", "card-leg", 16))
    add_chunks(store, "reference", [("Returns a slice of integers.", unit_near(rng, query, 0.90))], model_id, card=True)
    add_chunks(store, "guide", [("counting from one to ten in a loop", unit_near(rng, query, 0.92))], model_id)
    for i in range(8):
        add_chunks(store, f"other-{i}", [(f"unrelated note number {i}", unit_near(rng, query, 0.7 - i * 0.01))], model_id)
    add_chunks(store, "described", [("Describes another function.", unit_near(rng, query, 0.45)),
                                    ("its example", unit_near(rng, query, 0.5))], model_id, card=True)
    assert [d.path for d in store.search_documents(model_id, 16, query, k=2, mode="vector", passages=1)] == [
        "guide.md", "reference.md"]
    found = store.search_documents(model_id, 16, query, k=10, mode="hybrid", query_text="seq", passages=2)
    paths = [d.path for d in found]
    assert paths[0] == "reference.md" and paths.index("described.md") < paths.index("guide.md")
    assert found[0].score == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 1))
    assert found[0].passages[0].legs == {"vector": 2, "card": 1}  # the card leg is shown (QA)
    # the card leg ranks documents, not passages: the passage the vector leg ranks above the card comes first
    assert [p.text for p in found[1].passages] == ["its example", "Describes another function."]


@pytest.mark.parametrize("entries", [3, 60])
def test_an_outsized_document_does_not_outrank_a_focused_one_by_its_size(store, entries):
    """A changelog that both legs rank first, against a focused page both rank second: once it
    holds more than OUTSIZED_DOCUMENT_CHUNKS times the average document's chunks (60 against 81 / 22),
    its fused score is scaled by sqrt(10 x average / its chunks) and the focused page comes first;
    at a normal size (3 chunks) it keeps its place."""
    rng = np.random.default_rng(19)
    query = normalize(rng.normal(size=(1, 16)).astype(np.float32))[0]
    model_id = store.ensure_model(EmbeddingModel("test", "outsized", 16))
    add_chunks(store, "changelog", [("lighthouse keeper lighthouse keeper changes", unit_near(rng, query, 0.99))]
               + [(f"release entry {i}", unit_near(rng, query, 0.1)) for i in range(entries - 1)], model_id)
    add_chunks(store, "answer", [("the lighthouse keeper guide", unit_near(rng, query, 0.97))], model_id)
    for i in range(20):
        add_chunks(store, f"filler-{i}", [(f"unrelated note number {i}", unit_near(rng, query, 0.5 - i * 0.01))],
                   model_id)
    with store.writing() as conn:  # the average comes from the planner's statistics
        conn.execute("ANALYZE documents, chunks")
    found = [d.path for d in store.search_documents(model_id, 16, query, k=3, mode="hybrid",
                                                    query_text="lighthouse keeper", passages=1)]
    outsized = entries > OUTSIZED_DOCUMENT_CHUNKS * (entries + 21) / 22
    assert outsized == (entries == 60)
    assert found[:2] == (["answer.md", "changelog.md"] if outsized else ["changelog.md", "answer.md"])


def test_text_leg_is_bm25_rare_words_outweigh_common_ones(store):
    """Inverse document frequency: the one chunk with the rare word beats the chunks that repeat
    the common word; a chunk matching both comes first."""
    model_id = store.ensure_model(EmbeddingModel("test", "bm25", 16))
    vector = normalize(np.ones((1, 16), dtype=np.float32))[0]
    for i in range(12):
        add_document(store, f"common-{i}", f"the invoice invoice invoice page number {i}", vector, model_id)
    add_document(store, "rare", "a walrus in the basement", vector, model_id)
    add_document(store, "both", "a walrus ate the invoice", vector, model_id)
    hits = store.search(model_id, 16, vector, k=3, mode="text", query_text="walrus invoice")
    assert [h.path for h in hits][:2] == ["both.md", "rare.md"]


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_k_chunks_when_the_best_ones_are_copies_of_one_text(store, mode):
    """A text repeated across pages counts once, and `search` still returns k chunks: the copies
    are dropped from a deeper list than k (QA: --chunks --k 6 returned one chunk)."""
    model_id = store.ensure_model(EmbeddingModel("test", "copies", 16))
    vector = normalize(np.ones((1, 16), dtype=np.float32))[0]
    for i in range(8):
        add_document(store, f"copy-{i}", "this boilerplate paragraph about walrus invoices repeats", vector, model_id)
    rng = np.random.default_rng(3)
    for i in range(8):
        add_document(store, f"other-{i}", f"walrus invoice number {i} and its own words",
                     unit_near(rng, vector, 0.8 - i * 0.05), model_id)
    hits = store.search(model_id, 16, vector, k=6, mode=mode, query_text="walrus invoices boilerplate paragraph")
    assert len(hits) == 6 and len({h.text for h in hits}) == 6
    assert sum(h.path.startswith("copy-") for h in hits) == 1


def test_text_postings_follow_every_chunk_write(store):
    """The BM25 postings and the per-collection document frequencies are kept by the database on
    every insert and delete (edits, removals), so they always equal a recount from the chunks."""
    model_id = store.ensure_model(EmbeddingModel("test", "postings", 16))
    vector = normalize(np.ones((1, 16), dtype=np.float32))[0]
    add_document(store, "a", "keepers of the lighthouse log storms", vector, model_id)
    add_document(store, "b", "storms and tides", vector, model_id, collection="other")
    edited = DocumentToChunk(stable_id("doc", "a"), "a.md", content_hash("a"), "a", "full", {}, [])
    store.replace_chunks("kb", [edited], [ChunkRow(stable_id("chunk", "a2"), edited.id, "kb", 0, [],
                                                   "the lighthouse is automated now", 5, content_hash("a2"))], "test")
    store.apply_documents("other", [], ["b.md"], [], [], [])  # a removal

    drift, postings, lexemes = text_index_drift(store)
    assert drift == 0
    assert postings == lexemes
    hits = store.search(model_id, 16, vector, k=5, mode="text", query_text="storms")
    assert hits == []  # neither the edited-away text nor the removed document is found


def text_index_drift(store) -> tuple[int, int, int]:
    """Terms whose kept document frequency differs from a recount, postings, lexemes."""
    with store.reading() as conn:
        drift = conn.execute(
            "SELECT count(*) FROM ("
            " SELECT l.lexeme, c.collection, count(*) AS df FROM chunks c, unnest(tsvector_to_array(c.tsv)) l(lexeme)"
            " GROUP BY 1, 2) truth"
            " FULL JOIN (SELECT term, collection, df FROM chunk_term_df WHERE df > 0) kept"
            " ON kept.term = truth.lexeme AND kept.collection = truth.collection"
            " WHERE kept.df IS DISTINCT FROM truth.df").fetchone()[0]
        postings = conn.execute("SELECT count(*) FROM chunk_terms").fetchone()[0]
        lexemes = conn.execute("SELECT coalesce(sum(length(tsv)), 0) FROM chunks").fetchone()[0]
    return drift, postings, lexemes


def test_a_large_load_builds_postings_in_one_pass_equal_to_the_triggers(store, monkeypatch):
    """Above the bulk threshold the chunks step defers the postings and builds them after its
    last batch: the index equals the one the per-batch triggers keep, and search finds the text."""
    from dagster_project.core.ingest import pipeline as ingest

    monkeypatch.setattr(ingest, "BULK_TERMS_MIN_DOCUMENTS", 1)
    embedder = HashEmbedder()
    collection = load_manifest(SAMPLE_MANIFEST).collection("support")
    reports = ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(),
                                max_file_bytes=10**7)
    assert reports["chunks"].counts["postings_built"] > 0
    drift, postings, lexemes = text_index_drift(store)
    assert (drift, postings) == (0, lexemes) and lexemes > 0
    assert not store.text_index_pending("support")
    question = "refund an annual plan invoice"
    assert store.search(store.model_id(embedder.model), 384, embedder.embed([question]).vectors[0], k=3,
                        mode="text", query_text=question)


def test_a_load_that_died_with_postings_owed_is_finished_by_the_next_run(store):
    """Deferred batches committed, then the writer died before building the postings: the mark
    stays, the next chunks step (with nothing to re-chunk) builds them. Meanwhile another
    collection's writes keep their own postings: the deferral is per transaction."""
    from dagster_project.core.ingest.pipeline import sync_chunks
    from dagster_project.core.ingest.tokens import wordpiece_counter

    settings, counter = ChunkSettings(), wordpiece_counter()
    model_id = store.ensure_model(EmbeddingModel("test", "deferred", 16))
    vector = normalize(np.ones((1, 16), dtype=np.float32))[0]
    doc = DocumentRow(stable_id("doc", "a"), "kb", "a.md", content_hash("a"), 1, "markdown", "a",
                      None, None, None, "full", False, {}, [], [], "test")
    store.apply_documents("kb", [doc], [], [], [], [])
    store.defer_text_index("kb")
    store.replace_chunks("kb", [DocumentToChunk(doc.id, "a.md", doc.content_hash, "a", "full", {}, [])],
                         [ChunkRow(stable_id("chunk", "a"), doc.id, "kb", 0, [], "the lighthouse keeper logs storms",
                                   5, content_hash("a"))], settings.version(counter), defer_terms=True)
    add_document(store, "b", "storms and tides", vector, model_id, collection="other")
    assert store.search(model_id, 16, vector, k=5, mode="text", query_text="lighthouse") == []
    assert store.text_index_pending("kb") and not store.text_index_pending("other")

    report = sync_chunks(store, "kb", settings, counter)
    assert report.counts["documents"] == 0 and report.counts["postings_built"] == 4  # lighthous, keeper, log, storm
    drift, postings, lexemes = text_index_drift(store)
    assert (drift, postings) == (0, lexemes)
    assert not store.text_index_pending("kb")
    store.write_embeddings(model_id, [content_hash("a")], vector[None, :])
    assert [h.path for h in store.search(model_id, 16, vector, k=5, mode="text", query_text="lighthouse")] == ["a.md"]


@pytest.fixture
def sample_index(store):
    embedder = HashEmbedder()
    for collection in load_manifest(SAMPLE_MANIFEST).collections.values():
        ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    return store, embedder


@pytest.mark.parametrize("mode", ["text", "hybrid", "vector"])
def test_filters_apply_to_both_legs(sample_index, mode):
    store, embedder = sample_index
    question = "refund an annual plan invoice"
    hits = store.search(store.model_id(embedder.model), 384, embedder.embed([question]).vectors[0], k=8,
                        filters={"collection": "support"}, mode=mode, query_text=question)
    assert hits and {h.collection for h in hits} == {"support"}
    if mode == "hybrid":
        assert any("text" in h.legs for h in hits) and any("vector" in h.legs for h in hits)


def test_chunks_embed_their_context_but_store_their_text(sample_index):
    store, embedder = sample_index
    with store.reading() as conn:
        context, text, token_count, digest = conn.execute(
            "SELECT c.context, c.text, c.token_count, c.content_hash FROM chunks c JOIN documents d "
            "ON d.id = c.document_id WHERE d.path = 'sync-and-offline.md' AND cardinality(c.heading_path) > 1 "
            "LIMIT 1").fetchone()
    assert context.startswith("Sync and offline mode > ") and context not in text
    assert bytes(digest) == content_hash(embed_text(context, text))
    assert token_count == embedder.token_counter.count([embed_text(context, text)])[0] <= 256


def test_questions_file_errors_name_the_entry(sample_index, tmp_path):
    store, _ = sample_index
    known = store.document_keys()
    bad = tmp_path / "q.yaml"
    bad.write_text("questions:\n  - question: Where?\n    documents: [nope.md]\n    collection: product\n")
    with pytest.raises(QuestionsError, match=r"question 1: not in the index: product/nope.md"):
        load_questions(bad, known)
    bad.write_text("questions:\n  - question: Where?\n    documents: nope.md\n")
    with pytest.raises(QuestionsError, match="question 1: needs `documents"):
        load_questions(bad, known)
    bad.write_text("questions: [\n")
    with pytest.raises(QuestionsError, match="not valid YAML"):
        load_questions(bad, known)


def test_evaluation_on_the_sample_golden_set_is_stable(sample_index):
    store, embedder = sample_index
    questions = load_questions(GOLDEN, store.document_keys())
    model_id = store.model_id(embedder.model)
    # Statistics settled first: an autovacuum ANALYZE between the two runs can move the vector leg
    # between the HNSW index and an exact scan, whose top 50 differ in the last places.
    with store.writing() as conn:
        conn.execute("ANALYZE")

    def run(mode):
        return evaluate(questions, lambda q: distinct_documents(store.search(
            model_id, 384, embedder.embed([q]).vectors[0], k=50, mode=mode, query_text=q))[:10])

    first, second = run("hybrid"), run("hybrid")
    assert first == second
    assert first["questions"] == 30 and first["recall@10"] >= 0.9
    assert 0 < first["recall@1"] <= first["recall@5"] <= first["recall@10"] <= 1


def test_eval_cli_refuses_a_bad_questions_file(tmp_path):
    bad = tmp_path / "q.yaml"
    bad.write_text("questions:\n  - {question: x}\n")
    env_home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "dagster_project.cli", "eval", "--questions", str(bad), "--json"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "REFINERY_HOME": str(env_home), "EMBED_PROVIDER": "hash"})
    assert proc.returncode == 2 and "question 1: needs `documents" in proc.stderr and proc.stdout == ""


def test_eval_cli_names_a_question_with_no_word_the_embedder_can_use(sample_index, db_url, tmp_path):
    """Refused by its number and text, as a malformed entry is, rather than stopping unnamed."""
    questions = tmp_path / "q.yaml"
    questions.write_text(GOLDEN.read_text(encoding="utf-8")
                         + '  - question: "-"\n    documents: ["pricing-plans.md"]\n    collection: sales\n')
    proc = subprocess.run([sys.executable, "-m", "dagster_project.cli", "eval", "--questions", str(questions),
                           "--mode", "all"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "DATABASE_URL": db_url, "EMBED_PROVIDER": "hash",
                               "REFINERY_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"{questions}, question 31 ('-'): the query has no words the embedder can use" in proc.stderr


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_k_documents_when_one_long_page_holds_every_chunk_of_the_legs_depth(store, mode):
    """A long page whose 60 sections all repeat the question's words and lie nearest to it holds
    every one of a leg's 50 chunks: the search reads deeper and still returns k documents, the
    long page first (QA: text mode gave one document for "async await coroutine" --k 5)."""
    rng = np.random.default_rng(23)
    query = normalize(rng.normal(size=(1, 16)).astype(np.float32))[0]
    model_id = store.ensure_model(EmbeddingModel("test", "long-page", 16))
    add_chunks(store, "long", [(f"walrus invoice walrus invoice section {i}", unit_near(rng, query, 0.99 - i * 0.001))
                               for i in range(60)], model_id)
    for i in range(6):
        add_chunks(store, f"other-{i}", [(f"a walrus invoice note {i} among other words about the weather",
                                          unit_near(rng, query, 0.8 - i * 0.05))], model_id)
    found = store.search_documents(model_id, 16, query, k=5, mode=mode, query_text="walrus invoice", passages=2)
    paths = [d.path for d in found]
    assert paths[0] == "long.md" and len(set(paths[1:])) == 4 and all(p.startswith("other-") for p in paths[1:])
    if mode == "vector":  # the further documents in their order, after the long page's chunks
        assert paths[1:] == [f"other-{i}.md" for i in range(4)]
    assert len(found[0].passages) == 2
