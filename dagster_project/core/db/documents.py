"""The `documents` and `ingest_errors` tables: parsed documents and file issues per collection,
written by binary COPY; pruning the collections a manifest no longer names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from psycopg.types.json import Jsonb

from ..ingest.corpus import Shard


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
    file_stat: bytes | None = None  # the file's signature when content_hash was taken (corpus.file_signature)
    pricing_version: str | None = None  # the rules that decided pricing_sensitive (redaction.PRICING_VERSION)


@dataclass
class FileIssue:
    path: str
    severity: str  # error | warning
    reason: str


# What pruning a collection deletes, counted per collection; a vector counts when no chunk of a
# remaining collection uses its text.
OUTSIDE_COUNTS = (
    ("documents", "SELECT collection, count(*) FROM documents WHERE collection = ANY(%(g)s) GROUP BY 1"),
    ("chunks", "SELECT collection, count(*) FROM chunks WHERE collection = ANY(%(g)s) GROUP BY 1"),
    ("vectors", "SELECT c.collection, count(DISTINCT (e.model_id, e.content_hash)) FROM chunks c "
                "JOIN embeddings e ON e.content_hash = c.content_hash WHERE c.collection = ANY(%(g)s) "
                "AND NOT EXISTS (SELECT 1 FROM chunks o WHERE o.content_hash = c.content_hash "
                "AND NOT o.collection = ANY(%(g)s)) GROUP BY 1"),
    ("refined", "SELECT collection, count(*) FROM refined_documents WHERE collection = ANY(%(g)s) GROUP BY 1"),
    ("file_issues", "SELECT collection, count(*) FROM ingest_errors WHERE collection = ANY(%(g)s) GROUP BY 1"),
)


_DOC_COLUMNS = ("id", "collection", "path", "content_hash", "size_bytes", "format", "title",
                "category", "doc_type", "status", "embed_mode", "pricing_sensitive", "metadata",
                "headings", "blocks", "source_version", "file_stat", "pricing_version")


_DOC_TYPES = ("uuid", "text", "text", "bytea", "int8", "text", "text", "text", "text", "text",
              "text", "bool", "jsonb", "jsonb", "jsonb", "text", "bytea", "text")


class DocumentTables:
    """Reads and writes of documents and file issues (a part of `VectorStore`)."""

    def document_versions(self, collection: str) -> dict[str, tuple[bytes, str]]:
        """path -> (content hash, source version) of every stored document of the collection."""
        with self.reading() as conn:
            rows = conn.execute("SELECT path, content_hash, source_version FROM documents WHERE collection = %s",
                                (collection,)).fetchall()
        return {path: (bytes(h), v) for path, h, v in rows}

    def file_signatures(self, collection: str) -> dict[str, tuple[bytes, bytes]]:
        """path -> (file signature, content hash) of the stored documents that have a signature."""
        with self.reading() as conn:
            rows = conn.execute("SELECT path, file_stat, content_hash FROM documents "
                                "WHERE collection = %s AND file_stat IS NOT NULL", (collection,)).fetchall()
        return {path: (bytes(s), bytes(h)) for path, s, h in rows}

    def record_signatures(self, collection: str, signatures: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Store (path, signature, content hash) for documents whose bytes are unchanged; a row
        whose hash moved on meanwhile keeps its own."""
        if not signatures:
            return
        with self.writing(collection) as conn:
            conn.execute(
                "UPDATE documents d SET file_stat = s.sig FROM unnest(%s::text[], %s::bytea[], %s::bytea[]) "
                "AS s(path, sig, hash) WHERE d.collection = %s AND d.path = s.path AND d.content_hash = s.hash",
                ([p for p, _, _ in signatures], [s for _, s, _ in signatures], [h for _, _, h in signatures],
                 collection))

    def documents_to_recheck_pricing(self, collection: str, version: str, batch: int,
                                     shard: Shard | None = None) -> Iterator[list[tuple]]:
        """(id, metadata, title, blocks) of the documents whose pricing_sensitive was decided
        by rules other than `version` (or never: rows older than sql/0023), `batch` at a time."""
        with self.reading() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM documents WHERE collection = %s AND pricing_version IS DISTINCT FROM %s"
                + (shard.documents_filter() if shard else "") + " ORDER BY path", (collection, version))]
        for start in range(0, len(ids), batch):
            with self.reading() as conn:
                yield conn.execute("SELECT id, metadata, title, blocks FROM documents WHERE id = ANY(%s)",
                                   (ids[start:start + batch],)).fetchall()

    def record_pricing(self, collection: str, decisions: Sequence[tuple[uuid.UUID, bool]], version: str) -> int:
        """Store each document's pricing_sensitive as decided under `version`. A document that is
        or was sensitive is re-chunked: its chunks' embedded text is redacted by those rules.
        Returns how many documents changed their value."""
        if not decisions:
            return 0
        with self.writing(collection) as conn:
            return conn.execute(
                "WITH v AS (SELECT * FROM unnest(%s::uuid[], %s::bool[]) AS v(id, sensitive)), "
                "old AS (SELECT d.id, d.pricing_sensitive FROM documents d JOIN v USING (id) FOR UPDATE OF d) "
                "UPDATE documents d SET pricing_sensitive = v.sensitive, pricing_version = %s, "
                "chunked_hash = CASE WHEN v.sensitive OR old.pricing_sensitive THEN NULL ELSE d.chunked_hash END "
                "FROM v JOIN old USING (id) WHERE d.id = v.id AND d.pricing_version IS DISTINCT FROM %s "
                "RETURNING old.pricing_sensitive IS DISTINCT FROM v.sensitive",
                ([i for i, _ in decisions], [s for _, s in decisions], version, version)).fetchall().count((True,))

    def document_keys(self) -> set[tuple[str, str]]:
        with self.reading() as conn:
            return {(c, p) for c, p in conn.execute("SELECT collection, path FROM documents")}

    def holds_collection(self, collection: str, tenant: str | None = None) -> bool:
        """Whether the collection has a document the tenant may read (any tenant's: None)."""
        with self.reading(tenant) as conn:
            return conn.execute("SELECT EXISTS (SELECT 1 FROM documents WHERE collection = %s)",
                                (collection,)).fetchone()[0]

    def document_ids(self, collection: str, paths: Sequence[str]) -> list[uuid.UUID]:
        with self.reading() as conn:
            return [r[0] for r in conn.execute(
                "SELECT id FROM documents WHERE collection = %s AND path = ANY(%s)", (collection, list(paths)))]

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
        for what, sql in OUTSIDE_COUNTS:
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
                conn.execute("DELETE FROM collection_tenants WHERE collection = ANY(%s)", (gone,))
        if counts:
            self.drop_unreferenced_vectors()
            self.vacuum_chunks_if_churned(sum(c["chunks"] for c in counts.values()))
        return counts

    def apply_documents(self, collection: str, upserts: Sequence[DocumentRow],
                        deleted_paths: Sequence[str], issues: Sequence[FileIssue],
                        examined_paths: Sequence[str], present_paths: Sequence[str] | None,
                        shard: Shard | None = None) -> int:
        """Upsert parsed documents, delete vanished ones with their chunks (so search can never
        return them again), and replace the file issues of the files examined now (files left
        unchanged keep theirs; files gone lose theirs): all in one transaction. `present_paths`
        None: a batch of a bigger load, whose last batch names the files present; with a `shard`,
        the files present in that shard (other shards' issues are theirs).
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
                                        Jsonb(row.headings), Jsonb(row.blocks), row.source_version,
                                        row.file_stat, row.pricing_version))
                updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _DOC_COLUMNS[1:])
                conn.execute(
                    f"INSERT INTO documents ({', '.join(_DOC_COLUMNS)}) "
                    f"SELECT {', '.join(_DOC_COLUMNS)} FROM documents_stage "
                    # A re-parsed row may chunk differently (embed_mode, title): re-chunk it.
                    f"ON CONFLICT (id) DO UPDATE SET {updates}, chunked_hash = NULL, updated_at = now()"
                )
            if present_paths is None:
                conn.execute("DELETE FROM ingest_errors WHERE collection = %s AND path = ANY(%s)",
                             (collection, list(examined_paths)))
            else:
                conn.execute(
                    "DELETE FROM ingest_errors WHERE collection = %s AND (path = ANY(%s) OR NOT path = ANY(%s))"
                    + (shard.documents_filter() if shard else ""),
                    (collection, list(examined_paths), list(present_paths)))
            if issues:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO ingest_errors (collection, path, severity, reason) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        [(collection, i.path, i.severity, i.reason) for i in issues])
        return removed
