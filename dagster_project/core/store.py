"""The vector store: every read and write of the ingestion tables. Writes go through binary
COPY in transactions that hold a per-collection lock, as the `refinery_writer` role; search
runs as the read-only `refinery_reader` role."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from .chunking import embed_text
from .embedders import EmbeddingModel
from .migrations import migrate

HALFVEC_ABOVE_DIMS = 2000
# A filter that leaves at most this many chunks is searched exactly: scanning a few thousand
# vectors takes a few milliseconds and is exact, where the HNSW graph would be walked far
# (iterative scan) to find k rows that pass the filter.
EXACT_SEARCH_MAX_ROWS = 10_000
SEARCH_MODES = ("hybrid", "vector", "text")
RRF_K = 60  # the usual reciprocal rank fusion constant: 1 / (60 + rank)
RRF_DEPTH = 50  # hits taken from each leg before fusing
# Hybrid fusion is per document: a document's score in a leg is the sum of 1 / (K + rank) over
# its chunks in that leg, each further chunk counting this much less than the one before (so a
# document with several good passages rises, but twenty weak ones do not beat one strong one).
RRF_SAME_DOCUMENT_DECAY = 0.5
# Unfiltered text search reads at most this many postings per query term, best BM25 weight first
# (a term found in more chunks than that contributes little: its idf is low). Filtered text
# search reads every posting of its terms, so a narrow filter never loses its matches.
BM25_POSTINGS_PER_TERM = 3000
FILTER_COLUMNS = ("collection", "category", "doc_type", "status")


@dataclass
class DocumentRow:
    id: uuid.UUID
    collection: str
    path: str
    content_hash: bytes
    size_bytes: int
    format: str
    title: str
    category: str | None
    doc_type: str | None
    status: str | None
    embed_mode: str
    pricing_sensitive: bool
    metadata: dict
    headings: list
    blocks: list
    source_version: str


@dataclass
class ChunkRow:
    id: uuid.UUID
    document_id: uuid.UUID
    collection: str
    ordinal: int
    heading_path: list[str]
    text: str
    token_count: int
    content_hash: bytes  # of embed_text(context, text)
    context: str = ""


@dataclass
class FileIssue:
    path: str
    severity: str  # error | warning
    reason: str


@dataclass
class DocumentToChunk:
    id: uuid.UUID
    path: str
    content_hash: bytes
    title: str
    embed_mode: str
    metadata: dict
    blocks: list


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


@dataclass
class RefinementKey:
    document_id: uuid.UUID
    content_hash: bytes
    pricing_sensitive: bool
    current: tuple | None  # (input hash, chain, prompt version, schema version) of the stored refinement
    disputed: bool  # negative user feedback on the stored refinement that no redo has answered yet


@dataclass
class SearchHit:
    collection: str
    path: str
    title: str
    heading_path: list[str]
    text: str
    score: float
    chunk_id: str
    legs: dict[str, int] = field(default_factory=dict)  # leg -> rank at which it found this chunk


@dataclass
class StoredModel:
    id: int
    key: str
    dims: int
    active: bool
    activated_at: object
    dropped_at: object
    vectors: int
    indexed: bool
    live_chunks: int
    missing_by_collection: dict[str, int]  # live chunks with no vector of this model

    @property
    def missing(self) -> int:
        return sum(self.missing_by_collection.values())


@dataclass
class Consistency:
    live_chunks: int
    missing_vectors: int
    orphan_vectors: int
    orphan_chunks: int
    duplicate_chunks: int
    stale_documents: int
    examples: dict = field(default_factory=dict)


_DOC_COLUMNS = ("id", "collection", "path", "content_hash", "size_bytes", "format", "title",
                "category", "doc_type", "status", "embed_mode", "pricing_sensitive", "metadata",
                "headings", "blocks", "source_version")
_DOC_TYPES = ("uuid", "text", "text", "bytea", "int8", "text", "text", "text", "text", "text",
              "text", "bool", "jsonb", "jsonb", "jsonb", "text")
_CHUNK_COLUMNS = ("id", "document_id", "collection", "ordinal", "heading_path", "text",
                  "token_count", "content_hash", "context", "ts_config")
# regconfig travels as its oid in binary COPY
_CHUNK_TYPES = ("uuid", "uuid", "text", "int4", "text[]", "text", "int4", "bytea", "text", "oid")


class VectorStore:
    def __init__(self, url: str, *, max_connections: int = 4) -> None:
        migrate(url)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_connections, configure=register_vector, open=True,
            kwargs={"application_name": "corpus-refinery"},
        )

    def close(self) -> None:
        self._pool.close()

    def drop_broken_connections(self) -> None:
        """Replace pooled connections whose session died (e.g. terminated by an administrator)."""
        self._pool.check()

    # ------------------------------------------------------------ transactions

    @contextmanager
    def writing(self, collection: str | None = None) -> Iterator[psycopg.Connection]:
        """One transaction as refinery_writer; with a collection, runs on the same collection
        serialize on an advisory lock, so they never interleave rows."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE refinery_writer")
            if collection is not None:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:' || %s))", (collection,))
            yield conn

    @contextmanager
    def step_lock(self, collection: str) -> Iterator[None]:
        """Held for a whole step (read the state, work, write): two runs on one collection take
        turns instead of interleaving, so one never writes what it read before the other wrote.
        A different key from the transactions' own, which run on other connections."""
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext('refinery-step:' || %s))", (collection,))
            try:
                conn.commit()
                yield
            finally:
                try:
                    conn.execute("SELECT pg_advisory_unlock(hashtext('refinery-step:' || %s))", (collection,))
                    conn.commit()
                except psycopg.OperationalError:
                    pass  # the session died, and its lock with it; the error that killed it is reported

    @contextmanager
    def reading(self) -> Iterator[psycopg.Connection]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE refinery_reader")
            yield conn

    @contextmanager
    def giving_feedback(self) -> Iterator[psycopg.Connection]:
        """One transaction as refinery_feedback: exactly what applications may do (insert feedback)."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL ROLE refinery_feedback")
            yield conn

    # ------------------------------------------------------------ documents

    def document_versions(self, collection: str) -> dict[str, tuple[bytes, str]]:
        """path -> (content hash, source version) of every stored document of the collection."""
        with self.reading() as conn:
            rows = conn.execute("SELECT path, content_hash, source_version FROM documents WHERE collection = %s",
                                (collection,)).fetchall()
        return {path: (bytes(h), v) for path, h, v in rows}

    def collections_outside(self, keep: Sequence[str]) -> dict[str, dict[str, int]]:
        """Collections stored but not in `keep` (the manifest), with what pruning them would delete:
        documents, chunks, refinements, file issues, and the vectors (of any model) no other
        collection's chunk uses."""
        with self.reading() as conn:
            return self._outside(conn, list(keep))

    @staticmethod
    def _outside(conn, keep: list[str]) -> dict[str, dict[str, int]]:
        # Chunks go with their documents (cascade): the documents and the file issues name them all.
        gone = [r[0] for r in conn.execute(
            "SELECT DISTINCT collection FROM documents WHERE NOT collection = ANY(%(k)s) UNION "
            "SELECT DISTINCT collection FROM ingest_errors WHERE NOT collection = ANY(%(k)s)", {"k": keep})]
        counts = {name: dict.fromkeys(("documents", "chunks", "vectors", "refined", "file_issues"), 0)
                  for name in sorted(gone)}
        if not gone:
            return counts
        for what, sql in (
                ("documents", "SELECT collection, count(*) FROM documents WHERE collection = ANY(%(g)s) GROUP BY 1"),
                ("chunks", "SELECT collection, count(*) FROM chunks WHERE collection = ANY(%(g)s) GROUP BY 1"),
                ("vectors", "SELECT c.collection, count(DISTINCT (e.model_id, e.content_hash)) FROM chunks c "
                            "JOIN embeddings e ON e.content_hash = c.content_hash WHERE c.collection = ANY(%(g)s) "
                            "AND NOT EXISTS (SELECT 1 FROM chunks o WHERE o.content_hash = c.content_hash "
                            "AND NOT o.collection = ANY(%(g)s)) GROUP BY 1"),
                ("refined", "SELECT collection, count(*) FROM refined_documents WHERE collection = ANY(%(g)s) GROUP BY 1"),
                ("file_issues", "SELECT collection, count(*) FROM ingest_errors WHERE collection = ANY(%(g)s) GROUP BY 1")):
            for name, n in conn.execute(sql, {"g": gone}).fetchall():
                counts[name][what] = n
        return counts

    def prune_collections(self, keep: Sequence[str]) -> dict[str, dict[str, int]]:
        """Delete every row of the collections not in `keep` (the manifest): documents, chunks,
        refinements, file issues, and the vectors no remaining chunk uses. Only `refinery prune`
        calls it: a collection leaves the index by an explicit act, never because a manifest
        lacks it. Returns what was deleted, as collections_outside counts it."""
        with self.writing() as conn:
            keep = list(keep)
            counts = self._outside(conn, keep)
            if counts:
                gone = list(counts)
                for name in gone:  # the same lock as the collection's own writes
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:' || %s))", (name,))
                conn.execute("DELETE FROM chunks WHERE collection = ANY(%s)", (gone,))
                conn.execute("DELETE FROM documents WHERE collection = ANY(%s)", (gone,))
                conn.execute("DELETE FROM ingest_errors WHERE collection = ANY(%s)", (gone,))
        if counts:
            self.drop_unreferenced_vectors()
        return counts

    def apply_documents(self, collection: str, upserts: Sequence[DocumentRow],
                        deleted_paths: Sequence[str], issues: Sequence[FileIssue],
                        examined_paths: Sequence[str], present_paths: Sequence[str]) -> int:
        """Upsert parsed documents, delete vanished ones with their chunks (so search can never
        return them again), and replace the file issues of the files examined now (files left
        unchanged keep theirs; files gone lose theirs): all in one transaction.
        Returns the number of chunks deleted."""
        with self.writing(collection) as conn:
            removed = 0
            if deleted_paths:
                removed = conn.execute(
                    "DELETE FROM chunks WHERE document_id IN (SELECT id FROM documents "
                    "WHERE collection = %s AND path = ANY(%s))", (collection, list(deleted_paths))).rowcount
                conn.execute("DELETE FROM documents WHERE collection = %s AND path = ANY(%s)",
                             (collection, list(deleted_paths)))
            if upserts:
                conn.execute("CREATE TEMP TABLE documents_stage (LIKE documents INCLUDING DEFAULTS) ON COMMIT DROP")
                with conn.cursor().copy(
                    f"COPY documents_stage ({', '.join(_DOC_COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(_DOC_TYPES)
                    for row in upserts:
                        copy.write_row((row.id, row.collection, row.path, row.content_hash,
                                        row.size_bytes, row.format, row.title, row.category,
                                        row.doc_type, row.status, row.embed_mode,
                                        row.pricing_sensitive, Jsonb(row.metadata),
                                        Jsonb(row.headings), Jsonb(row.blocks), row.source_version))
                updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _DOC_COLUMNS[1:])
                conn.execute(
                    f"INSERT INTO documents ({', '.join(_DOC_COLUMNS)}) "
                    f"SELECT {', '.join(_DOC_COLUMNS)} FROM documents_stage "
                    # A re-parsed row may chunk differently (embed_mode, title): re-chunk it.
                    f"ON CONFLICT (id) DO UPDATE SET {updates}, chunked_hash = NULL, updated_at = now()"
                )
            conn.execute(
                "DELETE FROM ingest_errors WHERE collection = %s AND (path = ANY(%s) OR NOT path = ANY(%s))",
                (collection, list(examined_paths), list(present_paths)))
            if issues:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO ingest_errors (collection, path, severity, reason) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        [(collection, i.path, i.severity, i.reason) for i in issues])
        return removed

    def drop_unreferenced_vectors(self) -> int:
        """Drop vectors (of every model) whose text no chunk holds any more.

        Vectors are a cache keyed by text, so this runs once chunking has settled (in the
        embeddings step), not when a document goes: a renamed file, or a paragraph moved to
        another file, finds its vector still there. Search never sees such vectors in the
        meantime, because it reaches vectors only through live chunks."""
        with self.writing() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:vectors'))")
            return conn.execute(
                "DELETE FROM embeddings e WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks c WHERE c.content_hash = e.content_hash)").rowcount

    # ------------------------------------------------------------ chunks

    def documents_to_chunk(self, collection: str, chunker_version: str) -> list[DocumentToChunk]:
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT id, path, content_hash, title, embed_mode, metadata, blocks FROM documents "
                "WHERE collection = %s AND (chunked_hash IS DISTINCT FROM content_hash "
                "OR chunker_version IS DISTINCT FROM %s) ORDER BY path",
                (collection, chunker_version)).fetchall()
        return [DocumentToChunk(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def replace_chunks(self, collection: str, documents: Sequence[DocumentToChunk],
                       chunks: Sequence[ChunkRow], chunker_version: str,
                       text_search_config: str = "english", *, defer_terms: bool = False) -> dict[str, int]:
        """Swap the chunks of `documents` for `chunks` in one transaction. With `defer_terms`
        (after defer_text_index), their BM25 postings wait for build_text_index."""
        with self.writing(collection) as conn:
            if defer_terms:
                conn.execute("SET LOCAL refinery.defer_terms = 'on'")
            # New chunks may reuse vectors: the vector collector must not run meanwhile.
            conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext('refinery:vectors'))")
            ids = [d.id for d in documents]
            old = [bytes(r[0]) for r in conn.execute(
                "DELETE FROM chunks WHERE document_id = ANY(%s) RETURNING content_hash", (ids,))]
            config = self._text_search_config_oid(conn, text_search_config)
            with conn.cursor().copy(
                f"COPY chunks ({', '.join(_CHUNK_COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(_CHUNK_TYPES)
                for c in chunks:
                    copy.write_row((c.id, c.document_id, c.collection, c.ordinal, c.heading_path,
                                    c.text, c.token_count, c.content_hash, c.context, config))
            conn.execute(
                "UPDATE documents d SET chunked_hash = v.h, chunker_version = %s "
                "FROM unnest(%s::uuid[], %s::bytea[]) AS v(id, h) WHERE d.id = v.id",
                (chunker_version, ids, [d.content_hash for d in documents]))
        new, old_set = {c.content_hash for c in chunks}, set(old)
        return {"new": len(new - old_set), "unchanged": len(new & old_set), "removed": len(old_set - new)}

    def defer_text_index(self, collection: str) -> None:
        """Mark the collection's BM25 postings as owed (committed before any deferred write), so
        a load that dies before build_text_index is finished by the next run."""
        with self.writing(collection) as conn:
            conn.execute("INSERT INTO chunk_terms_pending (collection) VALUES (%s) ON CONFLICT DO NOTHING",
                         (collection,))

    def text_index_pending(self, collection: str) -> bool:
        with self.reading() as conn:
            return conn.execute("SELECT EXISTS (SELECT 1 FROM chunk_terms_pending WHERE collection = %s)",
                                (collection,)).fetchone()[0]

    def build_text_index(self, collection: str) -> int:
        """BM25 postings for every chunk of the collection that has none, in one pass, and its
        document frequencies recounted; clears the mark. Returns the postings added."""
        with self.writing(collection) as conn:
            conn.execute("SET LOCAL work_mem = '256MB'")
            conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
            return conn.execute("SELECT build_collection_terms(%s)", (collection,)).fetchone()[0]

    @staticmethod
    def _text_search_config_oid(conn: psycopg.Connection, name: str) -> int:
        try:
            with conn.transaction():
                return conn.execute("SELECT %s::regconfig::oid", (name,)).fetchone()[0]
        except psycopg.errors.UndefinedObject:
            raise ValueError(f"TEXT_SEARCH_CONFIG={name!r} is not a text search configuration of this "
                             "PostgreSQL (try english, simple, german...)") from None

    # ------------------------------------------------------------ embeddings

    def ensure_model(self, model: EmbeddingModel) -> int:
        with self.writing() as conn:
            row = conn.execute(
                "INSERT INTO embedding_models (key, provider, name, dims) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET dropped_at = NULL RETURNING id",
                (model.key, model.provider, model.name, model.dims)).fetchone()
        return row[0]

    # ------------------------------------------------------------ the active model

    def active_model_key(self) -> str | None:
        """The model search serves (None before anything was embedded)."""
        with self.reading() as conn:
            row = conn.execute("SELECT m.key FROM active_embedding_model a "
                               "JOIN embedding_models m ON m.id = a.model_id").fetchone()
        return row[0] if row else None

    def activate_first_model(self, model_id: int) -> bool:
        """On a fresh install the first model built becomes active; later models wait for a
        switch. True if this one was activated now."""
        with self.writing() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:active-model'))")
            activated = conn.execute(
                "INSERT INTO active_embedding_model (model_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (model_id,)).rowcount == 1
            if activated:
                conn.execute("INSERT INTO embedding_model_switches (to_model_id, gates) VALUES (%s, %s)",
                             (model_id, Jsonb({"reason": "first model built"})))
        return activated

    def models(self) -> list[StoredModel]:
        """Every embedding model with its vectors, its live chunks without one (per collection),
        its index, and whether it is active."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT m.id, m.key, m.dims, a.model_id IS NOT NULL, a.activated_at, m.dropped_at,"
                " (SELECT count(*) FROM embeddings e WHERE e.model_id = m.id),"
                " to_regclass('embeddings_hnsw_' || m.id) IS NOT NULL"
                " FROM embedding_models m LEFT JOIN active_embedding_model a ON a.model_id = m.id ORDER BY m.id"
            ).fetchall()
            live = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
            missing: dict[int, dict[str, int]] = {}
            for model_id, collection, n in conn.execute(  # every model at once
                    "SELECT m.id, c.collection, count(*) FROM embedding_models m CROSS JOIN chunks c"
                    " WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = m.id"
                    " AND e.content_hash = c.content_hash) GROUP BY m.id, c.collection ORDER BY m.id, c.collection"):
                missing.setdefault(model_id, {})[collection] = n
        return [StoredModel(model_id, key, dims, active, activated_at, dropped_at, vectors, indexed, live,
                            missing.get(model_id, {}))
                for model_id, key, dims, active, activated_at, dropped_at, vectors, indexed in rows]

    def chunks_per_collection(self) -> dict[str, int]:
        with self.reading() as conn:
            return dict(conn.execute("SELECT collection, count(*) FROM chunks GROUP BY collection "
                                     "ORDER BY collection").fetchall())

    def switch_active_model(self, model_id: int, *, forced: bool, gates: dict) -> tuple[str | None, int]:
        """Make the model the one search serves, in one transaction, if it has a vector for every
        live chunk (checked again here, under the lock chunk writers share, so no chunk can commit
        between the check and the switch). Returns (previous model's key, live chunks it misses);
        with any missing, nothing changes."""
        with self.writing() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:vectors'))")
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:active-model'))")
            missing = conn.execute(
                "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM embeddings e "
                "WHERE e.model_id = %s AND e.content_hash = c.content_hash)", (model_id,)).fetchone()[0]
            row = conn.execute("SELECT a.model_id, m.key FROM active_embedding_model a "
                               "JOIN embedding_models m ON m.id = a.model_id").fetchone()
            previous, previous_key = row if row else (None, None)
            if missing or previous == model_id:
                return previous_key, missing
            conn.execute(
                "INSERT INTO active_embedding_model (model_id) VALUES (%s) ON CONFLICT (only_row) "
                "DO UPDATE SET model_id = EXCLUDED.model_id, activated_at = now()", (model_id,))
            conn.execute("INSERT INTO embedding_model_switches (from_model_id, to_model_id, forced, gates) "
                         "VALUES (%s, %s, %s, %s)", (previous, model_id, forced, Jsonb(gates)))
        return previous_key, 0

    def drop_model_vectors(self, model_id: int) -> int | None:
        """Delete a model's vectors and its index; refused (None) for the active model. The
        model's row stays, dated, because the metric history names models by it."""
        with self.writing() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:active-model'))")
            if conn.execute("SELECT 1 FROM active_embedding_model WHERE model_id = %s", (model_id,)).fetchone():
                return None
            conn.execute(f"DROP INDEX IF EXISTS embeddings_hnsw_{int(model_id)}")
            deleted = conn.execute("DELETE FROM embeddings WHERE model_id = %s", (model_id,)).rowcount
            conn.execute("UPDATE embedding_models SET dropped_at = coalesce(dropped_at, now()) WHERE id = %s",
                         (model_id,))
        return deleted

    def model_id(self, model: EmbeddingModel) -> int | None:
        return self.model_id_by_key(model.key)

    def resolve_model_key(self, key: str) -> str:
        """A configured key whose size is learned at run time ("openai:name:auto") becomes the
        stored key of that model, if it has been used."""
        if not key.endswith(":auto"):
            return key
        with self.reading() as conn:
            row = conn.execute("SELECT key FROM embedding_models WHERE key LIKE %s ORDER BY id DESC LIMIT 1",
                               (key[: -len("auto")].replace("%", r"\%").replace("_", r"\_") + "%",)).fetchone()
        return row[0] if row else key

    def model_id_by_key(self, key: str) -> int | None:
        with self.reading() as conn:
            row = conn.execute("SELECT id FROM embedding_models WHERE key = %s", (key,)).fetchone()
        return row[0] if row else None

    def texts_to_embed(self, collection: str, model_id: int) -> list[tuple[bytes, str, int]]:
        """Distinct chunk texts of the collection that have no vector for this model, with
        their token counts."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT DISTINCT ON (c.content_hash) c.content_hash, c.context, c.text, c.token_count FROM chunks c "
                "WHERE c.collection = %s AND NOT EXISTS (SELECT 1 FROM embeddings e "
                "WHERE e.model_id = %s AND e.content_hash = c.content_hash) ORDER BY c.content_hash",
                (collection, model_id)).fetchall()
        return [(bytes(h), embed_text(ctx, t), n) for h, ctx, t, n in rows]

    def document_keys(self) -> set[tuple[str, str]]:
        with self.reading() as conn:
            return {(c, p) for c, p in conn.execute("SELECT collection, path FROM documents")}

    def document_ids(self, collection: str, paths: Sequence[str]) -> list[uuid.UUID]:
        with self.reading() as conn:
            return [r[0] for r in conn.execute(
                "SELECT id FROM documents WHERE collection = %s AND path = ANY(%s)", (collection, list(paths)))]

    def chunk_hashes(self, collection: str, exclude_documents: set[uuid.UUID]) -> set[bytes]:
        with self.reading() as conn:
            return {bytes(r[0]) for r in conn.execute(
                "SELECT DISTINCT content_hash FROM chunks WHERE collection = %s AND NOT document_id = ANY(%s)",
                (collection, list(exclude_documents)))}

    def embedded_hashes(self, model_key: str, hashes: set[bytes]) -> set[bytes]:
        """The subset of `hashes` that already has a vector for the model."""
        with self.reading() as conn:
            return {bytes(r[0]) for r in conn.execute(
                "SELECT e.content_hash FROM embeddings e JOIN embedding_models m ON m.id = e.model_id "
                "WHERE m.key = %s AND e.content_hash = ANY(%s)", (model_key, list(hashes)))}

    def count_texts(self, collection: str) -> int:
        with self.reading() as conn:
            return conn.execute("SELECT count(DISTINCT content_hash) FROM chunks WHERE collection = %s",
                                (collection,)).fetchone()[0]

    def write_embeddings(self, model_id: int, hashes: Sequence[bytes], vectors: np.ndarray) -> int:
        """Store vectors; a text embedded meanwhile by a concurrent run is kept as it is."""
        with self.writing() as conn:
            conn.execute("CREATE TEMP TABLE embeddings_stage (content_hash bytea, embedding vector) ON COMMIT DROP")
            with conn.cursor().copy("COPY embeddings_stage FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["bytea", "vector"])
                for h, v in zip(hashes, vectors):
                    copy.write_row((h, v))
            return conn.execute(
                "INSERT INTO embeddings (model_id, content_hash, embedding) "
                "SELECT %s, content_hash, embedding FROM embeddings_stage ON CONFLICT DO NOTHING",
                (model_id,)).rowcount

    @staticmethod
    def _vector_type(dims: int) -> tuple[str, str]:
        """The typed vector the model's index is built on, and its cosine operator class."""
        if dims > HALFVEC_ABOVE_DIMS:
            return f"halfvec({int(dims)})", "halfvec_cosine_ops"
        return f"vector({int(dims)})", "vector_cosine_ops"

    def has_index(self, model_id: int) -> bool:
        with self.reading() as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                (f"embeddings_hnsw_{model_id}",)).fetchone()[0]

    def ensure_index(self, model_id: int, dims: int) -> bool:
        """The model's HNSW cosine index; built once, after the first bulk load (building it
        over loaded rows is far faster than maintaining it row by row). True if built now."""
        if self.has_index(model_id):
            return False
        vtype, ops = self._vector_type(dims)
        try:
            with self.writing() as conn:
                # Two first loads at once (a backfill of every partition): one builds, the other
                # waits, then finds the index (an advisory lock does not refresh the catalog
                # view, hence the DuplicateTable case below).
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:index:' || %s))", (model_id,))
                conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
                conn.execute(
                    f"CREATE INDEX embeddings_hnsw_{int(model_id)} ON embeddings "
                    f"USING hnsw ((embedding::{vtype}) {ops}) WHERE model_id = {int(model_id)}")
        except psycopg.errors.DuplicateTable:
            return False
        return True

    def vector_count(self, model_id: int) -> int:
        with self.reading() as conn:
            return conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0]

    def drop_index(self, model_id: int) -> None:
        """Before a load much larger than what is indexed: rebuilding after it beats inserting
        row by row into the graph. Search keeps working meanwhile, by exact scan."""
        with self.writing() as conn:
            conn.execute(f"DROP INDEX IF EXISTS embeddings_hnsw_{int(model_id)}")

    def analyze(self) -> None:
        """Fresh planner statistics after a bulk load, so the first searches get good plans
        without waiting for autovacuum."""
        with self.writing() as conn:
            conn.execute("ANALYZE documents, chunks, embeddings")

    # ------------------------------------------------------------ search

    def search(self, model_id: int | None, dims: int, query: np.ndarray | None, k: int = 5,
               filters: dict[str, str] | None = None, ef_search: int = 100, *, mode: str = "vector",
               query_text: str = "", text_search_config: str = "english") -> list[SearchHit]:
        """The k best chunks for a query, optionally filtered on document metadata.

        mode `vector`: cosine similarity (score = similarity). Unfiltered or broad filters use the
        model's HNSW index with pgvector's iterative scan, which keeps going until k rows pass the
        filter; a filter that leaves few rows (found by a bounded probe) gets an exact scan.
        mode `text`: BM25 over the lexemes of the chunks' tsvector (score = BM25).
        mode `hybrid`: both legs fused by reciprocal rank fusion per document, in one statement
        (score = the document's fused score). The best chunk of each document comes first, in
        document order; further chunks of the same documents follow. Every hit says at which
        rank each leg found it."""
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(SEARCH_MODES)}")
        where, params = self._search_filters(filters)
        params.update(q=query, text=query_text, cfg=text_search_config)
        with self.reading() as conn:
            exact = False
            if mode != "text" and where:
                probe = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM chunks c JOIN documents d ON d.id = c.document_id "
                    f"WHERE {' AND '.join(where)} LIMIT {EXACT_SEARCH_MAX_ROWS + 1}) x", params).fetchone()[0]
                exact = probe <= EXACT_SEARCH_MAX_ROWS
            with conn.pipeline():  # the settings and the query travel together: one round trip
                # Prepared after a few runs (psycopg); its generic plan is as good as a custom one
                # (see search_sql), so skip the planning.
                conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                if mode != "text" and not exact:
                    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                    conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
                cursor = conn.execute(self.search_sql(dims, where, exact, mode, model_id=model_id, k=k), params)
            rows = cursor.fetchall()
        return [SearchHit(r[0], r[1], r[2], list(r[3]), r[4], float(r[6]), str(r[5]),
                          {leg: rank for leg, rank in (("vector", r[7]), ("text", r[8])) if rank is not None})
                for r in rows]

    @staticmethod
    def _search_filters(filters: dict[str, str] | None) -> tuple[list[str], dict]:
        where, params = [], {}
        for column, value in (filters or {}).items():
            if column not in FILTER_COLUMNS:
                raise ValueError(f"unknown filter {column!r}: use one of {', '.join(FILTER_COLUMNS)}")
            if value is not None:
                where.append(f"d.{column} = %({column})s")
                params[column] = value
        return where, params

    def search_sql(self, dims: int, where: list[str], exact: bool, mode: str = "vector", *,
                   model_id: int | None, k: int) -> str:
        """One statement per mode; columns: collection, path, title, heading_path, text, chunk id,
        score, vector rank, text rank. The model, k and the fusion constants are literals, the query
        and the filter values parameters, so the generic plan of the prepared statement is the
        custom plan (a parameter for the model would hide the model's partial HNSW index from it):
        a search is not planned afresh each time, which cost 1.2 ms of a hybrid search."""
        model, k = int(model_id or 0), int(k)
        depth = max(RRF_DEPTH, k) if mode == "hybrid" else k
        vtype, _ = self._vector_type(dims)
        distance = f"(e.embedding::{vtype}) <=> %(q)s::{vtype}"
        order = f"({distance}) + 0" if exact else distance  # "+ 0": keep the planner off the index
        filters = "".join(f" AND {w}" for w in where)
        vector_leg = (
            "SELECT v.id, v.document_id, row_number() OVER (ORDER BY v.distance) AS rank, 1 - v.distance AS score"
            f" FROM (SELECT c.id, c.document_id, {distance} AS distance"
            "   FROM embeddings e JOIN chunks c ON c.content_hash = e.content_hash"
            "   JOIN documents d ON d.id = c.document_id"
            f"  WHERE e.model_id = {model}{filters} ORDER BY {order} LIMIT {depth}) v")
        # BM25 (sql/0006_bm25.sql): idf from the per-collection document frequencies (N from the
        # planner's row count, exact for small tables), then the sum of idf * weight over the
        # query's terms, in single precision (a tenth faster over ten thousand postings).
        stats = (
            "WITH terms AS (SELECT DISTINCT unnest(tsvector_to_array(to_tsvector(%(cfg)s::regconfig, %(text)s))) AS term),"
            " n AS (SELECT CASE WHEN reltuples > 0 THEN reltuples ELSE (SELECT count(*) FROM chunks) END AS n"
            "       FROM pg_class WHERE oid = 'chunks'::regclass),"
            " stats AS MATERIALIZED (SELECT t.term, ln(1 + (greatest(n.n, df.df) - df.df + 0.5) / (df.df + 0.5))::real AS idf"
            "   FROM terms t CROSS JOIN n CROSS JOIN LATERAL"
            "   (SELECT sum(f.df)::float8 AS df FROM chunk_term_df f WHERE f.term = t.term) df WHERE df.df > 0)")
        if where:
            postings = ("stats s JOIN chunk_terms p ON p.term = s.term JOIN chunks c ON c.id = p.chunk_id"
                        f" JOIN documents d ON d.id = c.document_id WHERE {' AND '.join(where)}")
        else:
            postings = ("stats s CROSS JOIN LATERAL (SELECT p.chunk_id, p.weight FROM chunk_terms p"
                        f" WHERE p.term = s.term ORDER BY p.weight DESC LIMIT {BM25_POSTINGS_PER_TERM}) p")
        text_leg = (
            "SELECT t.id, row_number() OVER (ORDER BY t.score DESC, t.id) AS rank, t.score FROM ("
            f"  {stats} SELECT p.chunk_id AS id, sum(p.weight * s.idf) AS score FROM {postings}"
            f"   GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT {depth}"
            ") t")
        if mode == "vector":
            legs = (f"SELECT id, 1 AS nth, score, score AS chunk_score, rank AS vector_rank, NULL::bigint AS text_rank"
                    f" FROM ({vector_leg}) x")
        elif mode == "text":
            legs = (f"SELECT id, 1 AS nth, score, score AS chunk_score, NULL::bigint AS vector_rank, rank AS text_rank"
                    f" FROM ({text_leg}) x")
        else:
            legs = (
                f"WITH legs AS (SELECT id, document_id, rank, 'v' AS leg FROM ({vector_leg}) v"
                f"              UNION ALL SELECT t.id, c.document_id, t.rank, 't'"
                f"              FROM ({text_leg}) t JOIN chunks c ON c.id = t.id),"
                " per AS (SELECT l.id, l.leg, l.rank, l.document_id, row_number() OVER"
                "         (PARTITION BY l.leg, l.document_id ORDER BY l.rank) AS nth FROM legs l),"
                f" docs AS (SELECT document_id, sum(power({float(RRF_SAME_DOCUMENT_DECAY)}, nth - 1) / ({int(RRF_K)} + rank)) AS score"
                "          FROM per GROUP BY document_id),"
                " fused AS (SELECT p.id, p.document_id, max(docs.score) AS score,"
                f"           sum(1.0 / ({int(RRF_K)} + p.rank)) AS chunk_score,"
                "           max(p.rank) FILTER (WHERE p.leg = 'v') AS vector_rank,"
                "           max(p.rank) FILTER (WHERE p.leg = 't') AS text_rank"
                "           FROM per p JOIN docs USING (document_id) GROUP BY p.id, p.document_id)"
                # every document's best chunk first, then the second-best ones...: k hits show the
                # k best documents, not one document's k passages
                " SELECT id, row_number() OVER (PARTITION BY document_id ORDER BY chunk_score DESC, id) AS nth,"
                "        score, chunk_score, vector_rank, text_rank FROM fused")
        order = "nth, score DESC, chunk_score DESC, id"
        return (f"WITH hits AS MATERIALIZED ({legs}),"
                f" top AS MATERIALIZED (SELECT * FROM hits ORDER BY {order} LIMIT {k}) "  # text of k hits only
                "SELECT d.collection, d.path, d.title, c.heading_path, c.text, c.id, h.score, h.vector_rank, "
                "h.text_rank FROM top h JOIN chunks c ON c.id = h.id JOIN documents d ON d.id = c.document_id "
                f"ORDER BY {', '.join('h.' + o for o in order.split(', '))}")

    # ------------------------------------------------------------ refinement

    def refinement_keys(self, collection: str) -> list[RefinementKey]:
        """Each document's current refinement key, and whether a person has rejected that very
        refinement since it was made: enough to tell which documents need refining without
        reading any text."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT d.id, d.content_hash, d.pricing_sensitive, r.input_hash, r.chain, r.prompt_version, "
                "r.schema_version, EXISTS (SELECT 1 FROM feedback_events f WHERE f.document_id = d.id "
                "  AND f.source = 'user' AND f.rating = -1 AND f.target = 'document' AND f.model = r.model "
                "  AND f.prompt_version = r.prompt_version AND f.schema_version = r.schema_version "
                "  AND f.input_hash = r.input_hash AND f.id <> ALL (r.feedback_considered)) "
                "FROM documents d LEFT JOIN refined_documents r ON r.document_id = d.id "
                "WHERE d.collection = %s ORDER BY d.path", (collection,)).fetchall()
        return [RefinementKey(r[0], bytes(r[1]), r[2], None if r[3] is None else (bytes(r[3]), r[4], r[5], r[6]), r[7])
                for r in rows]

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
                          judgements: Sequence[PipelineJudgement] = ()) -> dict[str, int]:
        """Results, their call log, any quarantined answers and the pipeline's own feedback on
        them, in one transaction. A judgement already recorded for the same version is not
        recorded again. Returns the judgements recorded now, per source."""
        with self.writing(collection) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO refined_documents (document_id, collection, input_hash, chain, prompt_version, "
                "schema_version, model, link, route, route_reason, refined, quality_score, cited_chunk_ids, "
                "prompt_tokens, budget_tokens, refinement_score, quarantined, feedback_considered) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (document_id) DO UPDATE SET input_hash = EXCLUDED.input_hash, chain = EXCLUDED.chain, "
                "prompt_version = EXCLUDED.prompt_version, schema_version = EXCLUDED.schema_version, "
                "model = EXCLUDED.model, link = EXCLUDED.link, route = EXCLUDED.route, "
                "route_reason = EXCLUDED.route_reason, refined = EXCLUDED.refined, "
                "quality_score = EXCLUDED.quality_score, cited_chunk_ids = EXCLUDED.cited_chunk_ids, "
                "prompt_tokens = EXCLUDED.prompt_tokens, budget_tokens = EXCLUDED.budget_tokens, "
                "refinement_score = EXCLUDED.refinement_score, quarantined = EXCLUDED.quarantined, "
                "feedback_considered = EXCLUDED.feedback_considered, refined_at = now()",
                [(r.document_id, collection, r.input_hash, r.chain, r.prompt_version, r.schema_version, r.model,
                  r.link, r.route, r.route_reason, Jsonb(r.refined), r.quality_score,
                  [uuid.UUID(c) for c in r.cited_chunk_ids], r.prompt_tokens, r.budget_tokens, r.refinement_score,
                  r.quarantined, list(r.feedback_considered)) for r in refinements])
            cur.executemany("UPDATE documents SET analysis = %s WHERE id = %s",
                            [(Jsonb(r.analysis), r.document_id) for r in refinements])
            if calls:
                cur.executemany(
                    "INSERT INTO llm_calls (run_id, asset, collection, document_id, model, link, attempt, "
                    "prompt_tokens, completion_tokens, latency_ms, cost_usd, outcome, error) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(run_id, asset, collection, doc_id, c.model, c.link, c.attempt, c.prompt_tokens,
                      c.completion_tokens, c.latency_ms, c.cost_usd, c.outcome, c.error) for doc_id, c in calls])
            if quarantined:
                cur.executemany(
                    "INSERT INTO refine_quarantine (run_id, collection, document_id, input_hash, model, link, "
                    "raw_text, errors) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(run_id, collection, doc_id, h, q.model, q.link, q.raw, Jsonb(q.errors))
                     for doc_id, h, q in quarantined])
            recorded: dict[str, int] = {}
            if judgements:
                j = judgements
                rows = cur.execute(
                    "INSERT INTO feedback_events (document_id, source, rating, model, prompt_version, schema_version, "
                    "input_hash, tags, score, comment) "
                    "SELECT d, s, r, m, p, v, h, string_to_array(t, ','), sc, c FROM unnest(%s::uuid[], %s::text[], "
                    "%s::int2[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::int2[], %s::text[]) "
                    "AS x(d, s, r, m, p, v, h, t, sc, c) "
                    "ON CONFLICT (document_id, source, model, prompt_version, schema_version, input_hash) "
                    "WHERE source <> 'user' DO NOTHING RETURNING source",
                    ([x.document_id for x in j], [x.source for x in j], [x.rating for x in j], [x.model for x in j],
                     [x.prompt_version for x in j], [x.schema_version for x in j], [x.input_hash for x in j],
                     [",".join(x.tags) for x in j], [x.score for x in j], [x.comment for x in j])).fetchall()
                for (source,) in rows:
                    recorded[source] = recorded.get(source, 0) + 1
        return recorded

    def unrefined_count(self, collection: str, chain: str, prompt_version: str, schema_version: str) -> int:
        """Documents with no refinement, or one made under another chain, prompt or schema
        version. (A changed document is caught by its input hash when the step runs.)"""
        with self.reading() as conn:
            return conn.execute(
                "SELECT count(*) FROM documents d LEFT JOIN refined_documents r ON r.document_id = d.id "
                "WHERE d.collection = %s AND (r.document_id IS NULL OR r.chain <> %s OR r.prompt_version <> %s "
                "OR r.schema_version <> %s)", (collection, chain, prompt_version, schema_version)).fetchone()[0]

    # ------------------------------------------------------------ status and checks

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
            refined = dict(conn.execute(
                "SELECT collection, count(*) FROM refined_documents GROUP BY collection").fetchall())
            quarantined = dict(conn.execute(
                "SELECT collection, count(DISTINCT document_id) FROM refine_quarantine GROUP BY collection").fetchall())
        out: dict[str, dict] = {}
        for name in sorted(set(docs) | set(chunks) | {i[0] for i in issues}):
            out[name] = {"documents": docs.get(name, 0), "chunks": chunks.get(name, 0),
                         "vectors": vectors.get(name, 0), "refined": refined.get(name, 0),
                         "quarantined": quarantined.get(name, 0), "errors": [], "warnings": []}
        for collection, path, severity, reason in issues:
            out[collection]["errors" if severity == "error" else "warnings"].append({"path": path, "reason": reason})
        return out

    def collection_totals(self, collection: str) -> dict[str, int]:
        """What one collection holds now: documents, chunks, chunks with a vector of the active
        model, refined documents."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM documents WHERE collection = %(c)s),"
                " (SELECT count(*) FROM chunks WHERE collection = %(c)s),"
                " (SELECT count(*) FROM chunks c WHERE c.collection = %(c)s AND EXISTS (SELECT 1 FROM embeddings e"
                "   JOIN active_embedding_model a ON a.model_id = e.model_id WHERE e.content_hash = c.content_hash)),"
                " (SELECT count(*) FROM refined_documents WHERE collection = %(c)s)",
                {"c": collection}).fetchone()
        return dict(zip(("documents", "chunks", "vectors", "refined"), map(int, row)))

    def stale_documents(self, collection: str, chunker_version: str) -> int:
        """Documents whose chunks were not made from their current text by this chunker."""
        with self.reading() as conn:
            return conn.execute(
                "SELECT count(*) FROM documents WHERE collection = %s AND (chunked_hash IS DISTINCT "
                "FROM content_hash OR chunker_version IS DISTINCT FROM %s)",
                (collection, chunker_version)).fetchone()[0]

    def text_index_counts(self, collection: str) -> dict[str, int]:
        """The collection's lexemes (from the chunks' tsvectors), BM25 postings and summed
        document frequencies: all three are equal when the text index matches the chunks."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(sum(length(tsv)), 0) FROM chunks WHERE collection = %(c)s),"
                " (SELECT count(*) FROM chunk_terms p JOIN chunks c ON c.id = p.chunk_id WHERE c.collection = %(c)s),"
                " (SELECT coalesce(sum(df), 0) FROM chunk_term_df WHERE collection = %(c)s)",
                {"c": collection}).fetchone()
        return {"lexemes": int(row[0]), "postings": int(row[1]), "document_frequencies": int(row[2])}

    def consistency(self, collection: str, model_id: int | None, chunker_version: str) -> Consistency:
        with self.reading() as conn:
            live = conn.execute("SELECT count(*) FROM chunks WHERE collection = %s", (collection,)).fetchone()[0]
            missing = conn.execute(
                "SELECT count(*), (array_agg(c.id::text))[1:3] FROM chunks c WHERE c.collection = %s "
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
                "SELECT count(*) FROM (SELECT document_id FROM chunks WHERE collection = %s "
                "GROUP BY document_id HAVING count(*) <> max(ordinal) + 1 "
                "OR count(DISTINCT ordinal) <> count(*) OR count(DISTINCT id) <> count(*)) x",
                (collection,)).fetchone()[0]
        stale = self.stale_documents(collection, chunker_version)
        return Consistency(live, missing[0], orphan_vectors, orphan_chunks, duplicates, stale,
                           {"missing_vector_chunk_ids": missing[1] or []})

    def record_step(self, *, run_id: str | None, collection: str, step: str, seconds: float,
                    documents: int = 0, chunks: int = 0, texts: int = 0, tokens: int = 0,
                    counts: dict | None = None, warnings: Sequence[str] = ()) -> None:
        with self.writing() as conn:
            conn.execute(
                "INSERT INTO ingestion_runs (run_id, collection, step, documents_processed, "
                "chunks_processed, texts_embedded, tokens_embedded, seconds, counts, warnings) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (run_id, collection, step, documents, chunks, texts, tokens, seconds,
                 Jsonb(counts or {}), Jsonb(list(warnings))))

