"""The `llm_batches` and `llm_batch_requests` tables: Batch API jobs of the refine step, kept
so that a restarted step collects what it submitted instead of submitting it again."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class OpenBatch:
    id: int
    model: str
    input_file_id: str
    batch_id: str | None  # None: uploaded, not known to be created yet
    requests: dict[str, tuple[uuid.UUID, bytes]] = field(default_factory=dict)  # custom id -> (document, input hash)


class BatchTables:
    """Reads and writes of Batch API jobs (a part of `VectorStore`)."""

    def open_batches(self, collection: str, chain: str, prompt_version: str, schema_version: str) -> list[OpenBatch]:
        """Batches submitted (or being submitted) for this refinement key and not yet collected."""
        with self.reading() as conn:
            batches = {r[0]: OpenBatch(r[0], r[1], r[2], r[3]) for r in conn.execute(
                "SELECT id, model, input_file_id, batch_id FROM llm_batches WHERE collection = %s AND chain = %s "
                "AND prompt_version = %s AND schema_version = %s AND status IN ('submitting', 'submitted') ORDER BY id",
                (collection, chain, prompt_version, schema_version))}
            for batch, custom_id, document_id, input_hash in conn.execute(
                    "SELECT batch, custom_id, document_id, input_hash FROM llm_batch_requests WHERE batch = ANY(%s)",
                    (list(batches),)):
                batches[batch].requests[custom_id] = (document_id, bytes(input_hash))
        return list(batches.values())

    def record_batch_file(self, collection: str, model: str, key: tuple[str, str, str], input_file_id: str,
                          requests: Sequence[tuple[str, uuid.UUID, bytes]]) -> int:
        """An uploaded input file, before the batch is created from it: a step killed in between
        finds the batch again by this file."""
        with self.writing() as conn, conn.cursor() as cur:
            row = cur.execute(
                "INSERT INTO llm_batches (collection, model, chain, prompt_version, schema_version, input_file_id, "
                "requests) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (collection, model, *key, input_file_id, len(requests))).fetchone()[0]
            cur.executemany("INSERT INTO llm_batch_requests (batch, custom_id, document_id, input_hash) "
                            "VALUES (%s, %s, %s, %s)", [(row, *r) for r in requests])
        return row

    def record_batch_submitted(self, row: int, batch_id: str) -> None:
        with self.writing() as conn:
            conn.execute("UPDATE llm_batches SET batch_id = %s, status = 'submitted' WHERE id = %s", (batch_id, row))

    def record_batch_finished(self, row: int, status: str, server_status: str | None) -> None:
        """`collected` (its answers are stored, or sent live after it) or `abandoned`."""
        with self.writing() as conn:
            conn.execute("UPDATE llm_batches SET status = %s, server_status = %s, finished_at = now() WHERE id = %s",
                         (status, server_status, row))
