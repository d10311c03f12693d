"""What every embedder shares: the `Embedder` protocol, the model identity and batch types, the
error that says what to fix, normalization and the stored model key's parts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..ingest.tokens import TokenCounter


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
    tokens: int | None  # tokens the model consumed; None: not counted, the caller's counts stand
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


def parse_model_key(key: str) -> tuple[str, str, int]:
    """provider, name, dims of a stored key (a name may itself contain ':', as Ollama's do)."""
    provider, _, rest = key.partition(":")
    name, _, dims = rest.rpartition(":")
    if not provider or not name or not dims.isdigit():
        raise EmbeddingError(f"{key!r} is not an embedding model key (provider:name:dims)")
    return provider, name, int(dims)
