"""The `embeddings`, `embedding_models` and `active_embedding_model` tables: vectors per model
(a cache keyed by text), each model's HNSW index, and which model search serves."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from ..embed.base import EmbeddingModel
from ..ingest.chunking import embed_text
from ..ingest.corpus import Shard

HALFVEC_ABOVE_DIMS = 2000


MODELS = (
    "SELECT m.id, m.key, m.dims, a.model_id IS NOT NULL, a.activated_at, m.dropped_at,"
    " (SELECT count(*) FROM embeddings e WHERE e.model_id = m.id),"
    " to_regclass('embeddings_hnsw_' || m.id) IS NOT NULL"
    " FROM embedding_models m LEFT JOIN active_embedding_model a ON a.model_id = m.id ORDER BY m.id"
)
MISSING_VECTORS_PER_MODEL = (
    "SELECT m.id, c.collection, count(*) FROM embedding_models m CROSS JOIN chunks c"
    " WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = m.id"
    " AND e.content_hash = c.content_hash) GROUP BY m.id, c.collection ORDER BY m.id, c.collection"
)
# A text shared by a pricing-sensitive document goes out redacted (its chunk first), whatever
# the other documents that hold it.
TEXTS_WITHOUT_VECTOR = (
    "SELECT DISTINCT ON (c.content_hash) c.content_hash, c.context, c.text, c.token_count, d.pricing_sensitive "
    "FROM chunks c JOIN documents d ON d.id = c.document_id "
    "WHERE c.collection = %s AND NOT EXISTS (SELECT 1 FROM embeddings e "
    "WHERE e.model_id = %s AND e.content_hash = c.content_hash) ORDER BY c.content_hash, d.pricing_sensitive DESC"
)


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"


def binary_copy_rows(hashes: Sequence[bytes], vectors: np.ndarray) -> bytes:
    """(content_hash bytea, embedding vector) rows in COPY's binary format, built by numpy in
    one piece: converting each vector on its own cost more than the COPY itself."""
    rows, dims = vectors.shape
    size = len(hashes[0]) if rows else 0
    if any(len(h) != size for h in hashes):
        raise ValueError("content hashes of different sizes")  # a bug: they are all one digest
    row = np.dtype([("fields", ">i2"), ("hash_len", ">i4"), ("hash", f"S{size}"), ("vector_len", ">i4"),
                    ("dims", ">i2"), ("unused", ">i2"), ("vector", ">f4", (dims,))])
    table = np.empty(rows, dtype=row)
    table["fields"], table["hash_len"], table["vector_len"] = 2, size, 4 + 4 * dims
    table["hash"] = np.frombuffer(b"".join(hashes), dtype=f"S{size}")
    table["dims"], table["unused"] = dims, 0
    table["vector"] = vectors
    return _COPY_HEADER + table.tobytes() + _COPY_TRAILER


def _in_shard(sql: str, shard: Shard | None) -> str:
    """TEXTS_WITHOUT_VECTOR limited to the chunks of one shard's documents."""
    return sql if shard is None else sql.replace("WHERE c.collection = %s", "WHERE c.collection = %s"
                                                 + shard.chunks_filter("c.document_id"), 1)


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


# pgvector builds the HNSW graph in maintenance_work_mem and, once it no longer fits, goes on
# inserting into the index on disk, many times slower: 300k x 384 hash vectors took 625 s with
# 512 MB against 221 s with 1.2 GB (load 5-6), and a 100k-file corpus (781k vectors) was still
# loading tuples after 36 minutes. So the build gets what its graph needs, up to a cap.
HNSW_M = 16  # pgvector's default, which the index uses
HNSW_BUILD_MEMORY_FLOOR_MB = 64
HNSW_BUILD_MEMORY_CAP_MB = 4096


def hnsw_build_memory_mb(rows: int, dims: int) -> int:
    """maintenance_work_mem (MB) for an HNSW build over `rows` vectors: the vector plus about
    48 bytes per neighbour slot of m (measured on pgvector 0.8: 2.25 KB per 384-d vector at m 16,
    from the build's "no longer fits after N tuples" notice), with a tenth to spare."""
    value = (2 if dims > HALFVEC_ABOVE_DIMS else 4) * dims + 8
    need = rows * (value + 48 * HNSW_M) * 1.1 / 2**20
    return math.ceil(min(HNSW_BUILD_MEMORY_CAP_MB, max(HNSW_BUILD_MEMORY_FLOOR_MB, need)))


def vector_type(dims: int) -> tuple[str, str]:
    """The typed vector the model's index is built on, and its cosine operator class."""
    if dims > HALFVEC_ABOVE_DIMS:
        return f"halfvec({int(dims)})", "halfvec_cosine_ops"
    return f"vector({int(dims)})", "vector_cosine_ops"


class EmbeddingTables:
    """Reads and writes of vectors, models, their indexes and the active model (a part of `VectorStore`)."""

    def ensure_model(self, model: EmbeddingModel) -> int:
        with self.writing() as conn:
            row = conn.execute(
                "INSERT INTO embedding_models (key, provider, name, dims) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET dropped_at = NULL RETURNING id",
                (model.key, model.provider, model.name, model.dims)).fetchone()
        return row[0]

    def active_model_key(self) -> str | None:
        """The model search serves (None before anything was embedded)."""
        with self.reading() as conn:
            row = conn.execute("SELECT m.key FROM active_embedding_model a "
                               "JOIN embedding_models m ON m.id = a.model_id").fetchone()
        return row[0] if row else None

    def holds_vectors(self, model_id: int | None) -> bool:
        with self.reading() as conn:
            return model_id is not None and conn.execute(
                "SELECT EXISTS (SELECT 1 FROM embeddings WHERE model_id = %s)", (model_id,)).fetchone()[0]

    def activate_built_model(self, model_id: int) -> str | None:
        """A model that holds vectors becomes active when no model is, or when the active one holds
        none (its first build failed: before this check, a model became active before embedding
        anything, and search was stuck on it). Later models wait for a switch. Returns "" when
        this one was activated on a fresh install, the replaced model's key when it healed a stuck
        one, None when nothing changed."""
        with self.writing() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:active-model'))")
            row = conn.execute(
                "SELECT a.model_id, m.key, EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = a.model_id) "
                "FROM active_embedding_model a JOIN embedding_models m ON m.id = a.model_id").fetchone()
            previous, previous_key, served = row if row else (None, None, False)
            if previous == model_id or served or not conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM embeddings WHERE model_id = %s)", (model_id,)).fetchone()[0]:
                return None
            conn.execute(
                "INSERT INTO active_embedding_model (model_id) VALUES (%s) ON CONFLICT (only_row) "
                "DO UPDATE SET model_id = EXCLUDED.model_id, activated_at = now()", (model_id,))
            reason = "first model built" if previous is None else "the active model held no vector"
            conn.execute("INSERT INTO embedding_model_switches (from_model_id, to_model_id, gates) "
                         "VALUES (%s, %s, %s)", (previous, model_id, Jsonb({"reason": reason})))
        return previous_key or ""

    def models(self) -> list[StoredModel]:
        """Every embedding model with its vectors, its live chunks without one (per collection),
        its index, and whether it is active."""
        with self.reading() as conn:
            rows = conn.execute(
                MODELS
            ).fetchall()
            live = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
            missing: dict[int, dict[str, int]] = {}
            for model_id, collection, n in conn.execute(  # every model at once
                    MISSING_VECTORS_PER_MODEL):
                missing.setdefault(model_id, {})[collection] = n
        return [StoredModel(model_id, key, dims, active, activated_at, dropped_at, vectors, indexed, live,
                            missing.get(model_id, {}))
                for model_id, key, dims, active, activated_at, dropped_at, vectors, indexed in rows]

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

    def texts_to_embed(self, collection: str, model_id: int, batch: int,
                       shard: Shard | None = None) -> Iterator[list[tuple[bytes, str, int]]]:
        """Distinct chunk texts of the collection that have no vector for this model, with their
        token counts, `batch` at a time from a server-side cursor: a first load of a million
        texts never sits in memory. The cursor reads one snapshot, taken before the first batch."""
        closing = False
        try:
            with self.reading() as conn, conn.cursor(name="texts_to_embed") as cursor:
                cursor.itersize = batch
                cursor.execute(_in_shard(TEXTS_WITHOUT_VECTOR, shard), (collection, model_id))
                while rows := cursor.fetchmany(batch):
                    try:
                        yield [(bytes(h), embed_text(ctx, t, sensitive), n) for h, ctx, t, n, sensitive in rows]
                    except GeneratorExit:
                        closing = True
                        raise
        except psycopg.OperationalError:
            # The caller stopped reading because the connection died (its own error says so):
            # closing the cursor on it must not raise again, least of all from a finalizer.
            if not closing:
                raise

    def text_counts(self, collection: str, model_id: int, shard: Shard | None = None) -> tuple[int, int]:
        """(distinct chunk texts, of which without a vector for the model) in one pass."""
        chunks = shard.chunks_filter() if shard else ""
        with self.reading() as conn:
            # A join, not a NOT EXISTS per text: one hash or merge join over a million texts.
            return tuple(conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE e.content_hash IS NULL) "
                f"FROM (SELECT DISTINCT content_hash FROM chunks WHERE collection = %s{chunks}) t "
                "LEFT JOIN embeddings e ON e.model_id = %s AND e.content_hash = t.content_hash",
                (collection, model_id)).fetchone())

    def embedded_hashes(self, model_key: str, hashes: set[bytes]) -> set[bytes]:
        """The subset of `hashes` that already has a vector for the model."""
        with self.reading() as conn:
            return {bytes(r[0]) for r in conn.execute(
                "SELECT e.content_hash FROM embeddings e JOIN embedding_models m ON m.id = e.model_id "
                "WHERE m.key = %s AND e.content_hash = ANY(%s)", (model_key, list(hashes)))}

    def write_embeddings(self, model_id: int, hashes: Sequence[bytes], vectors: np.ndarray) -> int:
        """Store vectors; a text embedded meanwhile by a concurrent run is kept as it is."""
        with self.writing() as conn:
            conn.execute("CREATE TEMP TABLE embeddings_stage (content_hash bytea, embedding vector) ON COMMIT DROP")
            with conn.cursor().copy("COPY embeddings_stage FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.write(binary_copy_rows(hashes, vectors))
            written = conn.execute(
                "INSERT INTO embeddings (model_id, content_hash, embedding) "
                "SELECT %s, content_hash, embedding FROM embeddings_stage ON CONFLICT DO NOTHING",
                (model_id,)).rowcount
            if written:  # a chunk deleted while its text was embedded leaves a vector to collect
                conn.execute("INSERT INTO vector_gc_due DEFAULT VALUES")
            return written

    def drop_unreferenced_vectors(self) -> int:
        """Drop vectors (of every model) whose text no chunk holds any more.

        Vectors are a cache keyed by text, so this runs once chunking has settled (in the
        embeddings step), not when a document goes: a renamed file, or a paragraph moved to
        another file, finds its vector still there. Search never sees such vectors in the
        meantime, because it reaches vectors only through live chunks."""
        with self.writing() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:vectors'))")
            # Only after a chunk delete (sql/0016). The mark goes first: a delete committed after
            # it leaves a new one, so the next pass collects what this one cannot see.
            if not conn.execute("DELETE FROM vector_gc_due").rowcount:
                return 0
            return conn.execute(
                "DELETE FROM embeddings e WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks c WHERE c.content_hash = e.content_hash)").rowcount

    def has_index(self, model_id: int) -> bool:
        with self.reading() as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                (f"embeddings_hnsw_{model_id}",)).fetchone()[0]

    def ensure_index(self, model_id: int, dims: int, warnings: list[str] | None = None) -> bool:
        """The model's HNSW cosine index; built once, after the first bulk load (building it
        over loaded rows is far faster than maintaining it row by row), with the memory its graph
        needs (hnsw_build_memory_mb). True if built now. pgvector's notice that the graph did not
        fit anyway (beyond the cap) goes to `warnings`."""
        if self.has_index(model_id):
            return False
        vtype, ops = vector_type(dims)
        notices: list[str] = []

        def keep(diagnostic) -> None:
            if "maintenance_work_mem" in (diagnostic.message_primary or ""):
                notices.append(f"HNSW build: {diagnostic.message_primary} (raise the server's maintenance_work_mem "
                               f"above {HNSW_BUILD_MEMORY_CAP_MB} MB to build it faster)")

        try:
            with self.writing() as conn:
                conn.add_notice_handler(keep)
                try:
                    # Two first loads at once (a backfill of every partition): one builds, the other
                    # waits, then finds the index (an advisory lock does not refresh the catalog
                    # view, hence the DuplicateTable case below).
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:index:' || %s))", (model_id,))
                    rows = conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s",
                                        (model_id,)).fetchone()[0]
                    # In kB; never below what the server is configured with (an operator's larger setting wins).
                    conn.execute("SELECT set_config('maintenance_work_mem', greatest(%s::bigint * 1024, (SELECT "
                                 "setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'))::text, true)",
                                 (hnsw_build_memory_mb(rows, dims),))
                    conn.execute(
                        f"CREATE INDEX embeddings_hnsw_{int(model_id)} ON embeddings "
                        f"USING hnsw ((embedding::{vtype}) {ops}) WHERE model_id = {int(model_id)}")
                finally:
                    conn.remove_notice_handler(keep)
        except psycopg.errors.DuplicateTable:
            return False
        if warnings is not None:
            warnings.extend(notices)
        return True

    def vector_count(self, model_id: int) -> int:
        with self.reading() as conn:
            return conn.execute("SELECT count(*) FROM embeddings WHERE model_id = %s", (model_id,)).fetchone()[0]

    def drop_index(self, model_id: int) -> None:
        """Before a load much larger than what is indexed: rebuilding after it beats inserting
        row by row into the graph. Search keeps working meanwhile, by exact scan."""
        with self.writing() as conn:
            conn.execute(f"DROP INDEX IF EXISTS embeddings_hnsw_{int(model_id)}")
