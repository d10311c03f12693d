"""The `refined_documents`, `llm_calls` and `refine_quarantine` tables, the journal of LLM calls
in flight (`llm_calls_sent`), and the pipeline's own judgements in `feedback_events`: what the
refine step reads and writes in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg.types.json import Jsonb


@dataclass
class RefineCandidate:
    id: uuid.UUID
    path: str
    title: str
    content_hash: bytes
    pricing_sensitive: bool
    doc_type: str | None
    metadata: dict
    headings: list
    blocks: list


@dataclass
class RefinementRow:
    document_id: uuid.UUID
    input_hash: bytes
    chain: str
    prompt_version: str
    schema_version: str
    model: str
    link: str
    route: str
    route_reason: str | None
    refined: dict
    quality_score: float
    analysis: dict
    cited_chunk_ids: list[str]
    prompt_tokens: int
    budget_tokens: int
    refinement_score: float | None = None
    quarantined: bool = False
    feedback_considered: list[int] = field(default_factory=list)  # negative user feedback this redo answers
    candidates: int = 1  # best-of-N: how many candidates it was chosen from
    awaiting_model: bool = False  # an extractive stand-in: the model could not be reached


@dataclass
class PipelineJudgement:
    """The pipeline's own feedback on one version of a document's refinement: validator (an answer
    failed validation) or auto (a refinement scored above the threshold)."""
    document_id: uuid.UUID
    source: str  # validator | auto
    rating: int
    model: str
    prompt_version: str
    schema_version: str
    input_hash: bytes
    tags: list[str] = field(default_factory=list)
    score: int | None = None
    comment: str | None = None
    candidate_hash: bytes | None = None  # a discarded best-of candidate, not the stored refinement


@dataclass
class CandidateRow:
    """One best-of-N candidate, for `refine_candidates`."""
    document_id: uuid.UUID
    model: str
    input_hash: bytes
    candidate_hash: bytes
    asked: int
    valid: bool
    score: float | None
    kept: bool
    reason: str | None


@dataclass
class RefinementKey:
    document_id: uuid.UUID
    content_hash: bytes
    pricing_sensitive: bool
    current: tuple | None  # (input hash, chain, prompt version, schema version) of the stored refinement
    disputed: bool  # negative user feedback on the stored refinement that no redo has answered yet
    awaiting_model: bool = False  # the stored refinement is a stand-in: the model could not be reached


REFINEMENT_KEYS = (
    "SELECT d.id, d.content_hash, d.pricing_sensitive, r.input_hash, r.chain, r.prompt_version, "
    "r.schema_version, EXISTS (SELECT 1 FROM feedback_events f WHERE f.document_id = d.id "
    "  AND f.source = 'user' AND f.rating = -1 AND f.target = 'document' AND f.model = r.model "
    "  AND f.prompt_version = r.prompt_version AND f.schema_version = r.schema_version "
    "  AND f.input_hash = r.input_hash AND f.id <> ALL (r.feedback_considered)), coalesce(r.awaiting_model, false) "
    "FROM documents d LEFT JOIN refined_documents r ON r.document_id = d.id "
    "WHERE d.collection = %s ORDER BY d.path"
)
UPSERT_REFINEMENT = (
    "INSERT INTO refined_documents (document_id, collection, input_hash, chain, prompt_version, "
    "schema_version, model, link, route, route_reason, refined, quality_score, cited_chunk_ids, "
    "prompt_tokens, budget_tokens, refinement_score, quarantined, feedback_considered, candidates, awaiting_model) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (document_id) DO UPDATE SET input_hash = EXCLUDED.input_hash, chain = EXCLUDED.chain, "
    "prompt_version = EXCLUDED.prompt_version, schema_version = EXCLUDED.schema_version, "
    "model = EXCLUDED.model, link = EXCLUDED.link, route = EXCLUDED.route, "
    "route_reason = EXCLUDED.route_reason, refined = EXCLUDED.refined, "
    "quality_score = EXCLUDED.quality_score, cited_chunk_ids = EXCLUDED.cited_chunk_ids, "
    "prompt_tokens = EXCLUDED.prompt_tokens, budget_tokens = EXCLUDED.budget_tokens, "
    "refinement_score = EXCLUDED.refinement_score, quarantined = EXCLUDED.quarantined, "
    "feedback_considered = EXCLUDED.feedback_considered, candidates = EXCLUDED.candidates, "
    "awaiting_model = EXCLUDED.awaiting_model, refined_at = now()"
)
INSERT_LLM_CALL = (
    "INSERT INTO llm_calls (run_id, asset, collection, document_id, model, link, attempt, "
    "prompt_tokens, completion_tokens, latency_ms, cost_usd, outcome, error, batch_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
INSERT_PIPELINE_JUDGEMENTS = (
    "INSERT INTO feedback_events (document_id, source, rating, model, prompt_version, schema_version, "
    "input_hash, tags, score, comment, candidate_hash) "
    "SELECT d, s, r, m, p, v, h, string_to_array(t, ','), sc, c, ch FROM unnest(%s::uuid[], %s::text[], "
    "%s::int2[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::int2[], %s::text[], "
    "%s::bytea[]) AS x(d, s, r, m, p, v, h, t, sc, c, ch) "
    "ON CONFLICT (document_id, source, model, prompt_version, schema_version, input_hash, "
    "(coalesce(candidate_hash, '\\x'::bytea))) WHERE source <> 'user' DO NOTHING RETURNING source"
)
INSERT_SENT = (
    "INSERT INTO llm_calls_sent (run_id, asset, collection, document_id, model, link, attempt, prompt_tokens, "
    "prompt_cost_usd) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
# Journal rows of `collection` left by a refine that stopped before logging their calls: into
# llm_calls as 'lost', in one statement. called_at is now, as for every row of the log (a call is
# logged when it is recorded), so a day's history metrics stay what they were when snapshotted.
RECORD_LOST_CALLS = (
    "WITH gone AS (DELETE FROM llm_calls_sent WHERE collection = %(collection)s RETURNING *) "
    "INSERT INTO llm_calls (run_id, asset, collection, document_id, model, link, attempt, prompt_tokens, "
    "completion_tokens, latency_ms, cost_usd, outcome, error) "
    "SELECT run_id, asset, collection, document_id, model, link, attempt, prompt_tokens, 0, 0, prompt_cost_usd, "
    "'lost', format('the refine process stopped before this call''s answer was recorded (run %%s, sent at %%s UTC); "
    "the provider may have billed it: its prompt tokens are the estimate made when it was sent, its cost their "
    "input price, its completion unknown', coalesce(run_id, 'unknown'), "
    "to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')) "
    "FROM gone ORDER BY id RETURNING cost_usd"
)
UNREFINED_COUNT = (
    "SELECT count(*) FROM documents d LEFT JOIN refined_documents r ON r.document_id = d.id "
    "WHERE d.collection = %s AND (r.document_id IS NULL OR r.chain <> %s OR r.prompt_version <> %s "
    "OR r.schema_version <> %s OR r.awaiting_model)"
)


class RefinementTables:
    """Reads and writes of refinements and their call log (a part of `VectorStore`)."""

    def refinement_keys(self, collection: str) -> list[RefinementKey]:
        """Each document's current refinement key, whether a person has rejected that very
        refinement since it was made, and whether it is a stand-in awaiting the model: enough to tell which documents need refining without
        reading any text."""
        with self.reading() as conn:
            rows = conn.execute(
                REFINEMENT_KEYS, (collection,)).fetchall()
        return [RefinementKey(r[0], bytes(r[1]), r[2], None if r[3] is None else (bytes(r[3]), r[4], r[5], r[6]), r[7],
                              r[8]) for r in rows]

    def documents_for_refinement(self, document_ids: Sequence[uuid.UUID]) -> list[RefineCandidate]:
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT id, path, title, content_hash, pricing_sensitive, doc_type, metadata, headings, blocks "
                "FROM documents WHERE id = ANY(%s) ORDER BY path", (list(document_ids),)).fetchall()
        return [RefineCandidate(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]

    def chunks_of(self, document_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, list[str], str, int]]]:
        """(chunk id, heading path, text, tokens) per document, in document order."""
        out: dict[uuid.UUID, list] = {i: [] for i in document_ids}
        with self.reading() as conn:
            for doc_id, chunk_id, path, text, tokens in conn.execute(
                    "SELECT document_id, id, heading_path, text, token_count FROM chunks "
                    "WHERE document_id = ANY(%s) ORDER BY document_id, ordinal", (list(document_ids),)):
                out[doc_id].append((str(chunk_id), list(path), text, tokens))
        return out

    def write_refinements(self, collection: str, run_id: str | None, asset: str,
                          refinements: Sequence[RefinementRow], calls: Sequence[tuple[uuid.UUID, object]],
                          quarantined: Sequence[tuple[uuid.UUID, bytes, object]],
                          judgements: Sequence[PipelineJudgement] = (),
                          candidates: Sequence[CandidateRow] = ()) -> dict[str, int]:
        """Results, their call log, any quarantined answers and the pipeline's own feedback on
        them, in one transaction. A judgement already recorded for the same version is not
        recorded again. Returns the judgements recorded now, per source."""
        with self.writing(collection) as conn, conn.cursor() as cur:
            cur.executemany(
                UPSERT_REFINEMENT,
                [(r.document_id, collection, r.input_hash, r.chain, r.prompt_version, r.schema_version, r.model,
                  r.link, r.route, r.route_reason, Jsonb(r.refined), r.quality_score,
                  [uuid.UUID(c) for c in r.cited_chunk_ids], r.prompt_tokens, r.budget_tokens, r.refinement_score,
                  r.quarantined, list(r.feedback_considered), r.candidates, r.awaiting_model) for r in refinements])
            cur.executemany("UPDATE documents SET analysis = %s WHERE id = %s",
                            [(Jsonb(r.analysis), r.document_id) for r in refinements])
            if calls:
                cur.executemany(
                    INSERT_LLM_CALL,
                    [(run_id, asset, collection, doc_id, c.model, c.link, c.attempt, c.prompt_tokens,
                      c.completion_tokens, c.latency_ms, c.cost_usd, c.outcome, c.error, c.batch_id) for doc_id, c in calls])
            if quarantined:
                cur.executemany(
                    "INSERT INTO refine_quarantine (run_id, collection, document_id, input_hash, model, link, "
                    "raw_text, errors) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(run_id, collection, doc_id, h, q.model, q.link, q.raw, Jsonb(q.errors))
                     for doc_id, h, q in quarantined])
            if candidates:
                cur.executemany(
                    "INSERT INTO refine_candidates (run_id, collection, document_id, model, input_hash, candidate_hash, "
                    "asked, valid, score, kept, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(run_id, collection, c.document_id, c.model, c.input_hash, c.candidate_hash, c.asked, c.valid,
                      c.score, c.kept, c.reason) for c in candidates])
            if refinements:
                # Their calls are in llm_calls now: their journal rows go in the same transaction.
                cur.execute("DELETE FROM llm_calls_sent WHERE collection = %s AND run_id IS NOT DISTINCT FROM %s "
                            "AND document_id = ANY(%s)", (collection, run_id, [r.document_id for r in refinements]))
            recorded: dict[str, int] = {}
            if judgements:
                j = judgements
                rows = cur.execute(
                    INSERT_PIPELINE_JUDGEMENTS,
                    ([x.document_id for x in j], [x.source for x in j], [x.rating for x in j], [x.model for x in j],
                     [x.prompt_version for x in j], [x.schema_version for x in j], [x.input_hash for x in j],
                     [",".join(x.tags) for x in j], [x.score for x in j], [x.comment for x in j],
                     [x.candidate_hash for x in j])).fetchall()
                for (source,) in rows:
                    recorded[source] = recorded.get(source, 0) + 1
        return recorded

    def journal_llm_call(self, collection: str, run_id: str | None, asset: str, document_id: uuid.UUID,
                         model: str, link: str, attempt: str, prompt_tokens: int = 0,
                         prompt_cost_usd: float = 0.0) -> None:
        """A request about to be sent, committed before it is (`llm_calls_sent`): if the run dies
        before the call reaches llm_calls, the next refine of the collection logs it as lost.
        Without the collection lock: it must not wait for another transaction of the collection."""
        with self.writing() as conn:
            conn.execute(INSERT_SENT, (run_id, asset, collection, document_id, model, link, attempt, prompt_tokens,
                                       prompt_cost_usd))

    def record_lost_calls(self, collection: str) -> tuple[int, float]:
        """Moves the journal rows a stopped refine of `collection` left into llm_calls, outcome
        'lost'. Only under the collection's step lock: no live run may own rows then. Returns how
        many calls, and their estimated dollars."""
        with self.writing(collection) as conn:
            costs = [float(r[0]) for r in conn.execute(RECORD_LOST_CALLS, {"collection": collection}).fetchall()]
        return len(costs), float(sum(costs))

    def candidate_discard_rates(self, collection: str, model: str, window: int) -> list[float]:
        """Per best-of request of `model` in `collection` (the latest `window`), the share of its
        candidates that failed validation: the samples that size N (refine/best_of.py)."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT avg((NOT valid)::int)::float8 FROM refine_candidates WHERE collection = %s AND model = %s "
                "GROUP BY document_id, input_hash, created_at ORDER BY max(id) DESC LIMIT %s",
                (collection, model, window)).fetchall()
        return [r[0] for r in rows]

    def unrefined_count(self, collection: str, chain: str, prompt_version: str, schema_version: str) -> int:
        """Documents with no refinement, one made under another chain, prompt or schema version,
        or a stand-in awaiting the model. (A changed document is caught by its input hash when the step runs.)"""
        with self.reading() as conn:
            return conn.execute(
                UNREFINED_COUNT, (collection, chain, prompt_version, schema_version)).fetchone()[0]

    def refined_document(self, collection: str, path: str, tenant: str | None = None) -> dict | None:
        """A document's current refined JSON with what made it, as the tenant sees it: None when
        the document is not visible (absent or another tenant's); `refined` None if not refined yet;
        `awaiting_model` true for an extractive stand-in stored while the model was unreachable."""
        with self.reading(tenant) as conn:
            row = conn.execute(
                "SELECT d.collection, d.path, d.title, r.refined, r.model, r.link, r.prompt_version, "
                "r.schema_version, r.quality_score, r.refined_at, r.awaiting_model FROM documents d "
                "LEFT JOIN refined_documents r ON r.document_id = d.id WHERE d.collection = %s AND d.path = %s",
                (collection, path)).fetchone()
        if row is None:
            return None
        keys = ("collection", "path", "title", "refined", "model", "link", "prompt_version", "schema_version",
                "quality_score", "refined_at", "awaiting_model")
        return dict(zip(keys, row, strict=True))
