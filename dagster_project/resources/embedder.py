"""The embedder resource: EMBED_PROVIDER local (default), openai or hash, and the embedder of
any stored model (the active one during a model change)."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from ..core.embed.base import Embedder
from ..core.embed.factory import build_embedder, configured_model_key
from ..core.settings import Settings


class EmbedderResource(dg.ConfigurableResource):
    """Loads a model only when a step embeds: steps that only count tokens stay cheap."""

    _embedders: dict = PrivateAttr(default_factory=dict)

    def get(self, key: str | None = None) -> Embedder:
        """The configured embedder, or with `key` the embedder of that stored model."""
        settings = Settings.from_env()
        if key == configured_model_key(settings):
            key = None  # one instance of the configured model, however it is asked for
        if key not in self._embedders:
            self._embedders[key] = build_embedder(settings, key)
        return self._embedders[key]
