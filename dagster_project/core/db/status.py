"""Read-only status and consistency checks across the tables, the `ingestion_runs` step log,
and planner statistics after a bulk load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg.types.json import Jsonb

from ..ingest.corpus import Shard


@dataclass
class Consistency:
    live_chunks: int
    missing_vectors: int
    orphan_vectors: int
    orphan_chunks: int
    duplicate_chunks: int
    stale_documents: int
    examples: dict = field(default_factory=dict)


def collection_totals_sql(shard: Shard | None = None) -> str:
    """Documents, chunks, chunks with a vector of the active model and refined documents of one
    collection (%(c)s), or of one shard of it (the shard's filters are empty when unsharded)."""
    documents = shard.documents_filter() if shard else ""
    chunks = shard.chunks_filter("c.document_id") if shard else ""
    return (
        f"SELECT (SELECT count(*) FROM documents WHERE collection = %(c)s{documents}),"
        f" (SELECT count(*) FROM chunks c WHERE c.collection = %(c)s{chunks}),"
        f" (SELECT count(*) FROM chunks c WHERE c.collection = %(c)s{chunks}"
        " AND EXISTS (SELECT 1 FROM embeddings e"
        "   JOIN active_embedding_model a ON a.model_id = e.model_id WHERE e.content_hash = c.content_hash)),"
        " (SELECT count(*) FROM refined_documents WHERE collection = %(c)s)"
    )


TEXT_INDEX_COUNTS = (
    "SELECT (SELECT coalesce(sum(length(tsv)), 0) FROM chunks WHERE collection = %(c)s),"
    " (SELECT count(*) FROM chunk_terms p JOIN chunks c ON c.id = p.chunk_id WHERE c.collection = %(c)s),"
    " (SELECT coalesce(sum(df), 0) FROM chunk_term_df WHERE collection = %(c)s)"
)
CHUNK_ORDER_BROKEN = (
    "SELECT count(*) FROM (SELECT document_id FROM chunks WHERE collection = %s "
    "GROUP BY document_id HAVING count(*) <> max(ordinal) + 1 "
    "OR count(DISTINCT ordinal) <> count(*) OR count(DISTINCT id) <> count(*)) x"
)
INSERT_INGESTION_RUN = (
    "INSERT INTO ingestion_runs (run_id, collection, step, documents_processed, "
    "chunks_processed, texts_embedded, tokens_embedded, seconds, counts, warnings) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class StatusQueries:
    """Counts and checks across the tables, and the step log (a part of `VectorStore`)."""

    def status(self, model_id: int | None) -> dict[str, dict]:
        with self.reading() as conn:
            docs = dict(conn.execute("SELECT collection, count(*) FROM documents GROUP BY collection").fetchall())
            chunks = dict(conn.execute("SELECT collection, count(*) FROM chunks GROUP BY collection").fetchall())
            vectors = dict(conn.execute(
                "SELECT c.collection, count(*) FROM chunks c JOIN embeddings e "
                "ON e.content_hash = c.content_hash AND e.model_id = %s GROUP BY c.collection",
                (model_id,)).fetchall()) if model_id is not None else {}
            issues = conn.execute(
                "SELECT collection, path, severity, reason FROM ingest_errors ORDER BY collection, path").fetchall()
            refined = {c: (done, awaiting) for c, done, awaiting in conn.execute(
                "SELECT collection, count(*) FILTER (WHERE NOT awaiting_model), count(*) FILTER (WHERE awaiting_model) "
                "FROM refined_documents GROUP BY collection").fetchall()}
            quarantined = dict(conn.execute(
                "SELECT collection, count(DISTINCT document_id) FROM refine_quarantine GROUP BY collection").fetchall())
        out: dict[str, dict] = {}
        for name in sorted(set(docs) | set(chunks) | {i[0] for i in issues}):
            out[name] = {"documents": docs.get(name, 0), "chunks": chunks.get(name, 0),
                         "vectors": vectors.get(name, 0), "refined": refined.get(name, (0, 0))[0],
                         "awaiting_model": refined.get(name, (0, 0))[1],
                         "quarantined": quarantined.get(name, 0), "errors": [], "warnings": []}
        for collection, path, severity, reason in issues:
            out[collection]["errors" if severity == "error" else "warnings"].append({"path": path, "reason": reason})
        return out

    def collection_totals(self, collection: str, shard: Shard | None = None) -> dict[str, int]:
        """What one collection (or, with a sharded `shard`, that shard) holds now: documents,
        chunks, chunks with a vector of the active model, refined documents (always the whole
        collection's: refinement is per collection)."""
        with self.reading() as conn:
            row = conn.execute(
                collection_totals_sql(shard),
                {"c": collection}).fetchone()
        return dict(zip(("documents", "chunks", "vectors", "refined"), map(int, row)))

    def stale_documents(self, collection: str, chunker_version: str, shard: Shard | None = None) -> int:
        """Documents (of one shard) whose chunks were not made from their current text by this chunker."""
        with self.reading() as conn:
            return conn.execute(
                "SELECT count(*) FROM documents WHERE collection = %s AND (chunked_hash IS DISTINCT "
                "FROM content_hash OR chunker_version IS DISTINCT FROM %s)" + (shard.documents_filter() if shard else ""),
                (collection, chunker_version)).fetchone()[0]

    def text_index_counts(self, collection: str) -> dict[str, int]:
        """The collection's lexemes (from the chunks' tsvectors), BM25 postings and summed
        document frequencies: all three are equal when the text index matches the chunks."""
        with self.reading() as conn:
            row = conn.execute(
                TEXT_INDEX_COUNTS,
                {"c": collection}).fetchone()
        return {"lexemes": int(row[0]), "postings": int(row[1]), "document_frequencies": int(row[2])}

    def consistency(self, collection: str, model_id: int | None, chunker_version: str,
                    shard: Shard | None = None) -> Consistency:
        """With a shard: its chunks and documents (a sibling shard still running is not counted
        against it); orphan vectors are always counted over the whole store."""
        chunks = shard.chunks_filter() if shard else ""
        with self.reading() as conn:
            live = conn.execute("SELECT count(*) FROM chunks WHERE collection = %s" + chunks,
                                (collection,)).fetchone()[0]
            missing = conn.execute(
                "SELECT count(*), (array_agg(c.id::text))[1:3] FROM chunks c WHERE c.collection = %s "
                + (shard.chunks_filter("c.document_id") if shard else "") + " "
                "AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = %s AND e.content_hash = c.content_hash)",
                (collection, model_id)).fetchone()
            orphan_vectors = conn.execute(
                "SELECT count(*) FROM embeddings e WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks c WHERE c.content_hash = e.content_hash)").fetchone()[0]
            orphan_chunks = conn.execute(
                "SELECT count(*) FROM chunks c WHERE c.collection = %s AND NOT EXISTS "
                "(SELECT 1 FROM documents d WHERE d.id = c.document_id AND d.collection = c.collection)",
                (collection,)).fetchone()[0]
            duplicates = conn.execute(
                CHUNK_ORDER_BROKEN.replace(" GROUP BY", chunks + " GROUP BY", 1),
                (collection,)).fetchone()[0]
        stale = self.stale_documents(collection, chunker_version, shard)
        return Consistency(live, missing[0], orphan_vectors, orphan_chunks, duplicates, stale,
                           {"missing_vector_chunk_ids": missing[1] or []})

    def record_step(self, *, run_id: str | None, collection: str, step: str, seconds: float,
                    documents: int = 0, chunks: int = 0, texts: int = 0, tokens: int = 0,
                    counts: dict | None = None, warnings: Sequence[str] = ()) -> None:
        with self.writing() as conn:
            conn.execute(
                INSERT_INGESTION_RUN,
                (run_id, collection, step, documents, chunks, texts, tokens, seconds,
                 Jsonb(counts or {}), Jsonb(list(warnings))))

    def analyze(self) -> None:
        """Fresh planner statistics after a bulk load, so the first searches get good plans
        without waiting for autovacuum."""
        with self.writing() as conn:
            conn.execute("ANALYZE documents, chunks, embeddings")
