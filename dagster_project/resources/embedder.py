"""The embedder resource: EMBED_PROVIDER local (default), openai or hash."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from ..core.embedders import Embedder, build_embedder
from ..core.settings import Settings


class EmbedderResource(dg.ConfigurableResource):
    """Loads the model only when a step embeds: steps that only count tokens stay cheap."""

    _embedder: Embedder | None = PrivateAttr(default=None)

    def get(self) -> Embedder:
        if self._embedder is None:
            self._embedder = build_embedder(Settings.from_env())
        return self._embedder
