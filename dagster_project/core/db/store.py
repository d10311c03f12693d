"""The vector store: every read and write of the ingestion tables, one class per table family
composed into `VectorStore`. Writes go through binary COPY in transactions that hold a
per-collection lock, as the `refinery_writer` role; search runs as the read-only
`refinery_reader` role, or as a tenant's read role (row security: its collections only)."""

from __future__ import annotations

from ..search.hybrid import SearchQueries
from .base import StoreBase
from .batches import BatchTables
from .chunks import ChunkTables
from .documents import DocumentTables
from .embeddings import EmbeddingTables
from .refinements import RefinementTables
from .status import StatusQueries
from .tenants import TenantTables


class VectorStore(DocumentTables, ChunkTables, EmbeddingTables, SearchQueries, RefinementTables, StatusQueries,
                  BatchTables, TenantTables, StoreBase):
    """One pool, every table family's reads and writes (see each family's module)."""
