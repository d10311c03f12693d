"""Questions to hits with the embedding model search serves: the one search path of the CLI and
of `refinery serve` (the model is loaded once; each query picks its mode, filters and tenant)."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from functools import partial

from .hybrid import SEARCH_MODES, DocumentResult, SearchHit


class SearchError(ValueError):
    """A search that cannot run as asked; the message says what to change."""


class Searcher:
    """`search(query, ...)` over a store, embedding queries with the store's active model."""

    def __init__(self, settings, store, *, vectors: bool = True) -> None:
        """`vectors=False`: text search only, no embedder loaded."""
        self.settings, self.store = settings, store
        self.model_id, self.dims, self.embedder, self.model_key = None, 0, None, None
        if store.unknown_text_search_configs([settings.text_search_config]):  # the query is read in it
            from ..ingest.corpus import valid_text_search_configs

            raise SearchError(f"bad setting: TEXT_SEARCH_CONFIG={settings.text_search_config!r} is not a text search "
                              f"configuration of this PostgreSQL; {valid_text_search_configs(store)}")
        self._embedding = nullcontext()
        if vectors:
            from ..embed.factory import build_embedder
            from ..ingest.pipeline import adopt_stored_size

            active = store.active_model_key()  # what search serves, whatever EMBED_* says
            # An active model with no vector: an install whose first build failed, healed by the next ingest.
            if active is None or not store.holds_vectors(store.model_id_by_key(active)):
                raise SearchError("nothing is embedded yet: run `refinery ingest` first (if it failed, "
                                  "its error says what to fix)")
            self.model_key = active
            if active.startswith("local:"):  # a torch model in one process: one query at a time
                self._embedding = threading.Lock()
            self.embedder = build_embedder(settings, active)
            adopt_stored_size(store, self.embedder)
            self.model_id = store.model_id_by_key(active)
            self.dims = self.embedder.model.dims

    def embed(self, query: str):
        with self._embedding:
            vector = self.embedder.embed([query]).vectors[0]
        if not vector.any():
            raise SearchError("the query has no words the embedder can use: try other words")
        return vector

    def search(self, query: str, *, mode: str = "hybrid", k: int = 5, filters: dict | None = None,
               tenant: str | None = None, passages: int | None = None) -> list[SearchHit] | list[DocumentResult]:
        """The k best documents, each with up to `passages` of its best chunks; `passages=None`:
        the k best chunks."""
        if mode not in SEARCH_MODES:
            raise SearchError(f"unknown search mode {mode!r}: use one of {', '.join(SEARCH_MODES)}")
        if not query.strip():
            raise SearchError("the query is empty: say what you are looking for")
        if passages is not None and passages < 1:
            raise SearchError(f"passages must be at least 1, not {passages}")
        vector = None
        if mode != "text":
            if self.embedder is None:
                raise SearchError(f"mode {mode!r} needs the embedder, which this searcher did not load")
            vector = self.embed(query)
        run = self.store.search if passages is None else partial(self.store.search_documents, passages=passages)
        return run(self.model_id, self.dims, vector, k=k, filters=filters, mode=mode, query_text=query,
                   text_search_config=self.settings.text_search_config, tenant=tenant)


def passage_record(hit: SearchHit) -> dict:
    return {"heading_path": hit.heading_path, "text": hit.text, "score": round(hit.score, 4), "chunk_id": hit.chunk_id,
            "legs": hit.legs, "pages": list(hit.pages) if hit.pages else None, "locator": hit.locator}


def hit_record(hit: SearchHit | DocumentResult) -> dict:
    """A hit as applications and `--json` see it. A document carries its best passage's fields at
    the top too, so a reader of chunk hits reads documents unchanged."""
    if isinstance(hit, SearchHit):
        return {"collection": hit.collection, "path": hit.path, "title": hit.title, **passage_record(hit)}
    return {"collection": hit.collection, "path": hit.path, "title": hit.title, **passage_record(hit.passages[0]),
            "score": round(hit.score, 4), "passages": [passage_record(h) for h in hit.passages]}
