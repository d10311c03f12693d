"""The `chunks` table: each document's chunks, swapped per document in one transaction (the
unchanged ones kept in place), with the text search configuration that indexes them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..ingest.corpus import Shard


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
    pages: tuple[int, int] | None = None  # first and last page or slide (PDF, Word, PowerPoint)
    card: bool = False  # text of the document card (pipeline.document_card)


@dataclass
class DocumentToChunk:
    id: uuid.UUID
    path: str
    content_hash: bytes
    title: str
    embed_mode: str
    metadata: dict
    blocks: list
    pricing_sensitive: bool = False  # its embedded text is redacted (chunking.embed_text)


_CHANGED_FIELDS = "id, path, content_hash, title, embed_mode, metadata, blocks, pricing_sensitive"
CHANGED_DOCUMENTS = (
    f"SELECT {_CHANGED_FIELDS} FROM documents "
    "WHERE collection = %s AND (chunked_hash IS DISTINCT FROM content_hash "
    "OR chunker_version IS DISTINCT FROM %s) ORDER BY path"
)


_CHUNK_COLUMNS = ("id", "document_id", "collection", "ordinal", "heading_path", "text",
                  "token_count", "content_hash", "context", "ts_config", "first_page", "last_page", "card")


# Chunk rows written or deleted since the last vacuum that make the store vacuum the chunk
# tables itself (vacuum_chunks_if_churned): at least this many, and this share of the live ones.
VACUUM_MIN_ROWS = 1000
VACUUM_MIN_SHARE = 0.1

# What a stored chunk must equal to be kept as it is (its id is of its document, text hash and
# occurrence; the rest can still differ: pages, card, the text search configuration...).
_KEPT_COLUMNS = ("document_id", "collection", "heading_path", "text", "token_count", "content_hash", "context",
                 "ts_config::oid", "first_page", "last_page", "card")
_HASH = _KEPT_COLUMNS.index("content_hash")


def _kept_values(c: ChunkRow, config: int) -> tuple:
    return (c.document_id, c.collection, list(c.heading_path), c.text, c.token_count, c.content_hash, c.context,
            config, *(c.pages or (None, None)), c.card)


# regconfig travels as its oid in binary COPY
_CHUNK_TYPES = ("uuid", "uuid", "text", "int4", "text[]", "text", "int4", "bytea", "text", "oid", "int4", "int4", "bool")


class ChunkTables:
    """Reads and writes of chunks (a part of `VectorStore`)."""

    def document_ids_to_chunk(self, collection: str, chunker_version: str,
                              shard: Shard | None = None) -> list[uuid.UUID]:
        """The ids of documents_to_chunk (of one shard), in its order: the blocks are loaded a
        batch at a time."""
        sql = CHANGED_DOCUMENTS.replace(_CHANGED_FIELDS, "id", 1)
        if shard is not None:
            sql = sql.replace(" ORDER BY path", shard.documents_filter() + " ORDER BY path")
        with self.reading() as conn:
            return [r[0] for r in conn.execute(sql, (collection, chunker_version))]

    def documents_by_id(self, ids: Sequence[uuid.UUID]) -> list[DocumentToChunk]:
        """The documents `ids` names, in that order (a document deleted meanwhile is left out)."""
        with self.reading() as conn:
            rows = conn.execute(f"SELECT {_CHANGED_FIELDS} FROM documents WHERE id = ANY(%s)", (list(ids),)).fetchall()
        by_id = {r[0]: DocumentToChunk(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def documents_to_chunk(self, collection: str, chunker_version: str) -> list[DocumentToChunk]:
        with self.reading() as conn:
            rows = conn.execute(
                CHANGED_DOCUMENTS,
                (collection, chunker_version)).fetchall()
        return [DocumentToChunk(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def replace_chunks(self, collection: str, documents: Sequence[DocumentToChunk],
                       chunks: Sequence[ChunkRow], chunker_version: str,
                       text_search_config: str = "english", *, defer_terms: bool = False) -> dict[str, int]:
        """Swap the chunks of `documents` for `chunks` in one transaction. A stored chunk that
        `chunks` holds unchanged stays as it is (only its ordinal moves), with its BM25 postings:
        a re-chunk that changes a few chunks of a document writes only those (sql/0024). With
        `defer_terms` (after defer_text_index), the new chunks' postings wait for build_text_index."""
        with self.writing(collection) as conn:
            if defer_terms:
                conn.execute("SET LOCAL refinery.defer_terms = 'on'")
            # New chunks may reuse vectors: the vector collector must not run meanwhile.
            conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext('refinery:vectors'))")
            ids = [d.id for d in documents]
            config = self._text_search_config_oid(conn, text_search_config, collection)
            stored = {r[0]: (r[1], tuple(r[2:])) for r in conn.execute(
                f"SELECT id, ordinal, {', '.join(_KEPT_COLUMNS)} FROM chunks WHERE document_id = ANY(%s)", (ids,))}
            kept, moved, added = set(), [], []
            for c in chunks:
                ordinal, values = stored.get(c.id, (None, None))
                if values == _kept_values(c, config):
                    kept.add(c.id)
                    if ordinal != c.ordinal:
                        moved.append(c)
                else:
                    added.append(c)
            old = [values[_HASH] for _, values in stored.values()]
            gone = [i for i in stored if i not in kept]
            if gone:
                conn.execute("DELETE FROM chunks WHERE id = ANY(%s)", (gone,))
            if moved:
                conn.execute("UPDATE chunks c SET ordinal = v.ordinal FROM unnest(%s::uuid[], %s::int4[]) "
                             "AS v(id, ordinal) WHERE c.id = v.id",
                             ([c.id for c in moved], [c.ordinal for c in moved]))
            conn.execute("INSERT INTO collection_text_search VALUES (%s, %s) ON CONFLICT (collection) "
                         "DO UPDATE SET ts_config = EXCLUDED.ts_config", (collection, config))
            if added:
                with conn.cursor().copy(
                    f"COPY chunks ({', '.join(_CHUNK_COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(_CHUNK_TYPES)
                    for c in added:
                        copy.write_row((c.id, c.document_id, c.collection, c.ordinal, c.heading_path,
                                        c.text, c.token_count, c.content_hash, c.context, config,
                                        *(c.pages or (None, None)), c.card))
            conn.execute(
                "UPDATE documents d SET chunked_hash = v.h, chunker_version = %s "
                "FROM unnest(%s::uuid[], %s::bytea[]) AS v(id, h) WHERE d.id = v.id",
                (chunker_version, ids, [d.content_hash for d in documents]))
        new, old_set = {c.content_hash for c in chunks}, set(old)
        return {"new": len(new - old_set), "unchanged": len(new & old_set), "removed": len(old_set - new),
                "rows_kept": len(kept) - len(moved), "rows_moved": len(moved), "rows_written": len(added),
                "rows_deleted": len(gone)}

    def vacuum_chunks_if_churned(self, rows: int) -> bool:
        """VACUUM (ANALYZE) the chunks and their BM25 postings once the chunk rows inserted or
        deleted since the last vacuum are at least VACUUM_MIN_ROWS and VACUUM_MIN_SHARE of the
        chunks. They are counted from the inventory log of sql/0009, by every step and shard
        (exact and transactional, where PostgreSQL's own counters lag by seconds), and are at
        least the `rows` that the calling step just wrote, moved or deleted. Until a vacuum, text
        search's index-only scans visit every dead or not yet all-visible row on the heap, and new
        postings have no planner statistics (the PEPs after a first load: text p50 270 ms, 11.8 ms
        vacuumed); autovacuum may never come, as the embedded server stops with the command that
        started it. Run as refinery_writer, the tables' owner. True if it vacuumed."""
        if rows <= 0:
            return False
        with self.reading() as conn:
            live, churn = conn.execute(
                "SELECT (SELECT count(*) FROM chunks), (SELECT coalesce(sum(abs(i.delta)), 0) FROM inventory_changes i"
                " WHERE i.item = 'chunks' AND i.at > (SELECT coalesce(greatest(last_vacuum, last_autovacuum), '-infinity')"
                " FROM pg_stat_user_tables WHERE relid = 'chunks'::regclass))").fetchone()
        churn = max(churn, rows)
        if churn < VACUUM_MIN_ROWS or churn < VACUUM_MIN_SHARE * live:
            return False
        with self._pool.connection() as conn:
            conn.autocommit = True  # VACUUM runs outside a transaction
            try:
                role = conn.execute("SELECT current_role").fetchone()[0]
                conn.execute("SET ROLE refinery_writer")
                try:
                    conn.execute("VACUUM (ANALYZE) chunks, chunk_terms, chunk_term_df")
                finally:
                    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            finally:
                conn.autocommit = False
        return True

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
    def _text_search_config_oid(conn: psycopg.Connection, name: str, collection: str) -> int:
        oid = _regconfig_oid(conn, name)
        if oid is None:  # the job commands and the documents step check first (corpus.check_text_search_configs)
            raise ValueError(f"collection {collection!r}: text search configuration {name!r} (its `text_search_config` "
                             "in the manifest, or TEXT_SEARCH_CONFIG when it sets none) is not one this PostgreSQL "
                             "has (try english, simple, german...)")
        return oid

    def unknown_text_search_configs(self, names: Sequence[str]) -> list[str]:
        """Those of `names` that are not a text search configuration of this server."""
        with self.reading() as conn:
            return [name for name in dict.fromkeys(names) if _regconfig_oid(conn, name) is None]

    def text_search_configs(self) -> list[str]:
        """Every text search configuration of this server, as a manifest would name it."""
        with self.reading() as conn:
            return [r[0] for r in conn.execute("SELECT oid::regconfig::text FROM pg_ts_config ORDER BY 1")]

    def chunks_per_collection(self) -> dict[str, int]:
        with self.reading() as conn:
            return dict(conn.execute("SELECT collection, count(*) FROM chunks GROUP BY collection "
                                     "ORDER BY collection").fetchall())

    def chunk_hashes(self, collection: str, exclude_documents: set[uuid.UUID]) -> set[bytes]:
        with self.reading() as conn:
            return {bytes(r[0]) for r in conn.execute(
                "SELECT DISTINCT content_hash FROM chunks WHERE collection = %s AND NOT document_id = ANY(%s)",
                (collection, list(exclude_documents)))}

    def count_texts(self, collection: str) -> int:
        with self.reading() as conn:
            return conn.execute("SELECT count(DISTINCT content_hash) FROM chunks WHERE collection = %s",
                                (collection,)).fetchone()[0]


def _regconfig_oid(conn: psycopg.Connection, name: str) -> int | None:
    """The configuration's oid, or None if the server has none by that name (or it is no name at all)."""
    try:
        with conn.transaction():
            return conn.execute("SELECT %s::regconfig::oid", (name,)).fetchone()[0]
    except (psycopg.errors.UndefinedObject, psycopg.errors.InvalidName, psycopg.errors.SyntaxError):
        return None
