"""The hash embedder (tests and benchmarks rely on it) and the configured-model key."""

from __future__ import annotations

import numpy as np

from dagster_project.core.embed.factory import configured_model_key
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.settings import Settings


def test_hash_embedder_is_deterministic_unit_length_and_similarity_aware():
    embedder = HashEmbedder(dims=128)
    texts = ["Conflict copies get a yellow border", "a conflict copy has a yellow border", "invoices in euros", ""]
    first, second = embedder.embed(texts).vectors, HashEmbedder(dims=128).embed(texts).vectors
    assert np.array_equal(first, second) and first.shape == (4, 128)
    assert np.allclose(np.linalg.norm(first[:3], axis=1), 1.0, atol=1e-5)
    assert not first[3].any()  # empty text: zero vector, not NaN
    assert first[0] @ first[1] > first[0] @ first[2] + 0.3


def test_configured_key_matches_the_embedder_that_is_built():
    assert configured_model_key(Settings(embed_provider="hash", embed_dims=96)) == HashEmbedder(dims=96).model.key
    assert configured_model_key(Settings(embed_provider="openai", embed_model="text-embedding-3-large")) \
        == "openai:text-embedding-3-large:3072"
