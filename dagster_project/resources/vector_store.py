"""The vector store resource: PostgreSQL + pgvector (embedded by default, or DATABASE_URL)."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from ..core.db.pg import resolve_database_urls
from ..core.db.store import VectorStore
from ..core.settings import Settings


class PgVectorStore(dg.ConfigurableResource):
    """Connection pool, migrations from sql/, binary COPY writes and read-only search.

    With no DATABASE_URL in the environment it starts (or joins) the embedded PostgreSQL under
    REFINERY_HOME."""

    _store: VectorStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from ..pools import tag_run_worker

        urls = resolve_database_urls(Settings.from_env())
        self._store = VectorStore(urls.vector_store)
        if context.instance is not None:  # every asset step opens the store: its run names its worker
            tag_run_worker(context.instance, context.dagster_run)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> VectorStore:
        assert self._store is not None, "PgVectorStore is used outside of a run"
        return self._store
