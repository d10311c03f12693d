"""Vectors written by the numpy-built binary COPY come back exactly as given, with their hashes."""

from __future__ import annotations

import numpy as np
from pgvector.psycopg import register_vector

from dagster_project.core.embed.base import EmbeddingModel
from dagster_project.core.ingest.hashing import content_hash


def test_vectors_round_trip_exactly_through_the_binary_copy(store):
    model_id = store.ensure_model(EmbeddingModel("test", "copy", 5))
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, 5)).astype(np.float32)
    vectors[0] = [0.0, -0.0, 1e-38, 3.4e38, -1.5]  # extremes and signed zero
    hashes = [content_hash(str(i)) for i in range(300)]
    hashes[1] = hashes[1][:-1] + b"\x00"  # a trailing zero byte is part of the hash
    assert store.write_embeddings(model_id, hashes, vectors) == 300
    with store.reading() as conn:
        register_vector(conn)
        stored = {bytes(h): v for h, v in conn.execute(
            "SELECT content_hash, embedding FROM embeddings WHERE model_id = %s", (model_id,))}
    assert set(stored) == set(hashes)
    for h, v in zip(hashes, vectors):
        assert np.array_equal(stored[h].to_numpy(), v)
    # A second write of the same texts keeps what is stored (a concurrent run's vectors win).
    assert store.write_embeddings(model_id, hashes[:10], vectors[:10] + 1) == 0
