"""Embeddings from OpenAI or any OpenAI-compatible server: request packing, truncation, concurrency
and errors that say what to fix. Retries (429 Retry-After, 5xx, timeouts) are the `openai` client's."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ingest.tokens import TokenCounter, tiktoken_counter
from ..openai_errors import ErrorExplainer, server_place
from .base import EmbeddingBatch, EmbeddingError, EmbeddingModel, normalize

if TYPE_CHECKING:
    import openai

# `openai` is imported in the functions that call it: its import costs about as much as
# Dagster's, at every command's start and in every parse worker's fork server, and an
# ingest with the hash or local embedder never calls it.

DEFAULT_MODEL = "text-embedding-3-small"
KNOWN_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
MAX_INPUTS_PER_REQUEST = 2048  # the API rejects larger `input` arrays
_PROBE_TEXT = "dimension probe"


class OpenAIEmbedder:
    """`api_key` / `base_url` default to OPENAI_API_KEY / OPENAI_BASE_URL.

    Dimensions come from `dims`, else from `KNOWN_DIMS`, else from the first response: `embed()`
    learns them for free, and reading `.model` before any `embed()` sends one one-input probe.
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        dims: int | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        batch_size: int = MAX_INPUTS_PER_REQUEST,
        max_request_tokens: int = 300_000,
        max_input_tokens: int = 8191,
        concurrency: int = 4,
        max_retries: int = 6,
        timeout: float = 60.0,
        token_counter: TokenCounter | None = None,
    ) -> None:
        import openai
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not api_key and not base_url:
            raise EmbeddingError("set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
        self._name = model
        self._requested_dims = dims
        self._dims = dims or KNOWN_DIMS.get(model)
        self._dims_lock = threading.Lock()
        self.batch_size = max(1, min(batch_size, MAX_INPUTS_PER_REQUEST))
        self.max_request_tokens = max_request_tokens
        self.max_input_tokens = max_input_tokens
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.timeout = timeout
        self.token_counter = token_counter or tiktoken_counter(model)
        self._where = server_place(base_url, "embedding server")
        self._errors = ErrorExplainer(where=self._where, secret=api_key, timeout=timeout, max_retries=max_retries)
        # Local servers usually ignore auth, but the client refuses an empty key.
        self._client = openai.OpenAI(
            api_key=api_key or "no-key", base_url=base_url, max_retries=max_retries, timeout=timeout
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def needs_dims(self) -> bool:
        """True while the size is unknown: reading `.model` now would cost a probe request."""
        return self._dims is None

    def adopt_dims(self, dims: int) -> None:
        """The size learned on an earlier run (stored with its vectors): no probe needed."""
        with self._dims_lock:
            if self._dims is None:
                self._dims = dims

    @property
    def model(self) -> EmbeddingModel:
        if self._dims is None:
            self._request([_PROBE_TEXT], 0)
        assert self._dims is not None
        return EmbeddingModel("openai", self._name, self._dims)

    @property
    def client(self) -> openai.OpenAI:
        """The configured client (the Batch API uses it too)."""
        return self._client

    def explain(self, exc: Exception) -> str:
        return self._errors.scrub(self._explain(exc))

    def batch_bodies(self, texts: Sequence[str]) -> tuple[list[tuple[list[int], dict]], list[str]]:
        """Batch API lines for `texts`: (input positions, request body), truncated and packed like
        live requests; and the warnings."""
        texts, counts, warnings = self._fitted(list(texts))
        extra: dict[str, Any] = {"dimensions": self._requested_dims} if self._requested_dims else {}
        return [(group, {"model": self._name, "input": [texts[i] for i in group], "encoding_format": "float", **extra})
                for group in self._pack(counts)], warnings

    def vectors_of(self, body: dict, expected: int) -> np.ndarray:
        """The unit vectors of a batch line's embeddings response, in input order."""
        data = sorted(body.get("data") or [], key=lambda d: d.get("index", -1))
        if [d.get("index") for d in data] != list(range(expected)):
            raise EmbeddingError(f"{self._where} returned {len(data)} vectors for {expected} inputs in a batch")
        vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") if isinstance(d["embedding"], str)
                   else d["embedding"] for d in data]
        self._check_sizes({len(v) for v in vectors})
        return normalize(np.asarray(vectors, dtype=np.float32))

    def _fitted(self, texts: list[str]) -> tuple[list[str], list[int], list[str]]:
        """Texts cut to the model's input limit, their token counts, and a warning if any was cut."""
        counts = self.token_counter.count(texts)
        warnings = []
        long_rows = [i for i, n in enumerate(counts) if n > self.max_input_tokens]
        for i in long_rows:
            texts[i], counts[i] = self._truncate(texts[i], counts[i])
        if long_rows:
            warnings.append(
                f"{len(long_rows)} text(s) longer than {self.max_input_tokens} tokens were truncated "
                f"for {self._name}; lower CHUNK_MAX_TOKENS to keep whole chunks"
            )
        return texts, counts, warnings

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        texts = list(texts)
        if not texts:
            return EmbeddingBatch(np.zeros((0, self._dims or 0), dtype=np.float32), 0)
        texts, counts, warnings = self._fitted(texts)

        groups = self._pack(counts)
        jobs = [([texts[i] for i in g], sum(counts[i] for i in g)) for g in groups]
        if len(jobs) == 1:
            results = [self._request(*jobs[0])]
        else:
            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs)))
            try:
                futures = [pool.submit(self._request, *job) for job in jobs]
                results = [f.result() for f in futures]
            finally:
                # On failure, don't wait for (or start) the other requests.
                pool.shutdown(wait=False, cancel_futures=True)
        # Groups are contiguous runs of the input, so concatenating keeps input order.
        vectors = np.concatenate([v for v, _ in results])
        return EmbeddingBatch(normalize(vectors), sum(t for _, t in results), warnings)

    def _truncate(self, text: str, count: int) -> tuple[str, int]:
        # Cut by characters in proportion, with margin; re-count since the counter may estimate.
        while count > self.max_input_tokens and len(text) > 1:
            text = text[: max(1, int(len(text) * self.max_input_tokens / count * 0.95))]
            count = self.token_counter.count([text])[0]
        return text, count

    def _pack(self, counts: list[int]) -> list[list[int]]:
        groups: list[list[int]] = []
        current: list[int] = []
        budget = 0
        for i, n in enumerate(counts):
            if current and (len(current) >= self.batch_size or budget + n > self.max_request_tokens):
                groups.append(current)
                current, budget = [], 0
            current.append(i)
            budget += n
        if current:
            groups.append(current)
        return groups

    def _request(self, batch: list[str], counted: int) -> tuple[np.ndarray, int]:
        """One embeddings request: (vectors in batch order, tokens)."""
        import openai
        extra: dict[str, Any] = {"dimensions": self._requested_dims} if self._requested_dims else {}
        failure: str | None = None
        try:
            response = self._client.embeddings.create(model=self._name, input=batch, **extra)
        except openai.OpenAIError as exc:
            failure = self._explain(exc)
        except Exception as exc:  # e.g. a body the client cannot parse
            failure = f"{self._where} sent an unreadable embeddings response ({type(exc).__name__}: {exc})"
        if failure is not None:
            # Raised outside the except block so no chained exception can carry the key.
            raise EmbeddingError(self._errors.scrub(failure))

        data = sorted(response.data, key=lambda d: d.index)
        if [d.index for d in data] != list(range(len(batch))):
            raise EmbeddingError(
                f"{self._where} returned {len(data)} vectors for {len(batch)} inputs; "
                f"it may not support batched input — lower EMBED_BATCH_SIZE"
            )
        self._check_sizes({len(d.embedding) for d in data})
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "total_tokens", None) or counted
        return np.asarray([d.embedding for d in data], dtype=np.float32), int(tokens)

    def _check_sizes(self, sizes: set[int]) -> None:
        """Vectors of the model's size (learned from the first answer when unknown)."""
        with self._dims_lock:
            if self._dims is None and len(sizes) == 1:
                self._dims = sizes.pop()
                sizes = {self._dims}
        if sizes != {self._dims}:
            hint = (
                "it may not support `dimensions`; unset EMBED_DIMS"
                if self._requested_dims
                else f"set EMBED_DIMS to {self._name}'s real size"
            )
            raise EmbeddingError(
                f"{self._where} returned vectors of {sorted(sizes)} dimensions, "
                f"expected {self._dims} for {self._name}: {hint}"
            )

    def _explain(self, exc: Exception) -> str:
        return self._errors.explain(exc, {
            "timeout": "lower EMBED_BATCH_SIZE or check the server's load",
            "connection": "check OPENAI_BASE_URL and that the server is up",
            401: "check OPENAI_API_KEY",
            403: f"check that OPENAI_API_KEY may use {self._name}",
            404: f"check EMBED_MODEL ({self._name}) and OPENAI_BASE_URL (it usually ends in /v1)",
            "rate_limit": "lower EMBED_CONCURRENCY or EMBED_BATCH_SIZE, or check the account's rate limits and quota",
            "server": "the server is failing; try again later",
            "other": "check EMBED_MODEL, EMBED_DIMS and the server's message",
        })
