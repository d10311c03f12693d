"""The `llm_batches` and `llm_batch_requests` tables: OpenAI Batch API jobs of the refine and
embeddings steps, kept so that a restarted step collects what it submitted instead of
submitting it again."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class BatchRequest:
    """What one line of a batch answers: a document's refinement, or the vectors of chunk texts."""
    custom_id: str
    document_id: uuid.UUID | None = None
    input_hash: bytes | None = None
    content_hashes: list[bytes] | None = None


@dataclass
class OpenBatch:
    id: int
    model: str
    input_file_id: str
    batch_id: str | None  # None: uploaded, not known to be created yet
    requests: dict[str, BatchRequest] = field(default_factory=dict)  # by custom id


class BatchTables:
    """Reads and writes of Batch API jobs (a part of `VectorStore`)."""

    def open_batches(self, purpose: str, collection: str, key: str) -> list[OpenBatch]:
        """Batches submitted (or being submitted) for this purpose and key, not yet collected."""
        with self.reading() as conn:
            batches = {r[0]: OpenBatch(r[0], r[1], r[2], r[3]) for r in conn.execute(
                "SELECT id, model, input_file_id, batch_id FROM llm_batches WHERE purpose = %s AND collection = %s "
                "AND key = %s AND status IN ('submitting', 'submitted') ORDER BY id", (purpose, collection, key))}
            for batch, custom_id, document_id, input_hash, hashes in conn.execute(
                    "SELECT batch, custom_id, document_id, input_hash, content_hashes FROM llm_batch_requests "
                    "WHERE batch = ANY(%s)", (list(batches),)):
                batches[batch].requests[custom_id] = BatchRequest(
                    custom_id, document_id, None if input_hash is None else bytes(input_hash),
                    None if hashes is None else [bytes(h) for h in hashes])
        return list(batches.values())

    def record_batch_file(self, purpose: str, collection: str, model: str, key: str, input_file_id: str,
                          requests: Sequence[BatchRequest]) -> int:
        """An uploaded input file, before the batch is created from it: a step killed in between
        finds the batch again by this file."""
        with self.writing() as conn, conn.cursor() as cur:
            row = cur.execute(
                "INSERT INTO llm_batches (purpose, collection, model, key, input_file_id, requests) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (purpose, collection, model, key, input_file_id, len(requests))).fetchone()[0]
            cur.executemany("INSERT INTO llm_batch_requests (batch, custom_id, document_id, input_hash, content_hashes) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            [(row, r.custom_id, r.document_id, r.input_hash, r.content_hashes) for r in requests])
        return row

    def record_batch_submitted(self, row: int, batch_id: str) -> None:
        with self.writing() as conn:
            conn.execute("UPDATE llm_batches SET batch_id = %s, status = 'submitted' WHERE id = %s", (batch_id, row))

    def record_batch_finished(self, row: int, status: str, server_status: str | None) -> None:
        """`collected` (its answers are stored, or sent live after it) or `abandoned`."""
        with self.writing() as conn:
            conn.execute("UPDATE llm_batches SET status = %s, server_status = %s, finished_at = now() WHERE id = %s",
                         (status, server_status, row))
