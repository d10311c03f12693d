"""Heading-aware, token-budgeted chunking with content-defined boundaries.

Each section (blocks sharing a heading path) is chunked on its own. Inside a section, blocks
are packed up to the budget, and a chunk also ends after any block whose own hash picks it
as a boundary once the chunk has a minimum size. Boundaries therefore depend on the text
around them, not on where the section starts: inserting a paragraph moves only the chunk it
lands in, and the chunks after it keep their exact text (and their vectors)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from ..refine.redaction import redact_pricing
from .formats.tables import is_pipe_rule
from .hashing import content_hash
from .parsing import Block
from .tokens import COUNT_BATCH_CHARS, TokenCounter

# v2: chunks carry their title + heading path context; v3: tables split by rows with their header,
# no chunk without a letter or digit (the closing fence of a long code block, a table rule),
# document cards in a section of their own; v4: card chunks marked (hybrid search's card leg)
CHUNKER_VERSION = "heading-cdc-v4"
CARD_KIND = "card"  # a document's descriptive metadata (pipeline.document_card): a chunk of its own
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_WORD = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class ChunkSettings:
    max_tokens: int = 256  # of the embedded text: context + chunk
    overlap_tokens: int = 32
    context_tokens: int = 32  # at most this much of the title + heading path is embedded with a chunk
    text_search_config: str = "english"  # PostgreSQL configuration of the chunks' full-text vectors

    def __post_init__(self) -> None:
        if self.overlap_tokens * 2 > self.max_tokens:
            raise ValueError(
                f"CHUNK_OVERLAP_TOKENS={self.overlap_tokens} must be at most half of "
                f"CHUNK_MAX_TOKENS={self.max_tokens}"
            )
        if self.max_tokens - self.overlap_tokens - self.context_tokens < 16:
            raise ValueError(f"CHUNK_MAX_TOKENS={self.max_tokens} leaves no room for text after "
                             f"{self.context_tokens} tokens of context and {self.overlap_tokens} of overlap: "
                             f"set it to at least {self.context_tokens + self.overlap_tokens + 16} "
                             "or lower CHUNK_OVERLAP_TOKENS")

    def version(self, counter: TokenCounter) -> str:
        """Everything that changes chunk text; part of each row and of the asset's code version."""
        return (f"{CHUNKER_VERSION}:max={self.max_tokens}:overlap={self.overlap_tokens}:"
                f"context={self.context_tokens}:ts={self.text_search_config}:tok={counter.name}")


def embed_text(context: str, text: str, pricing_sensitive: bool = False) -> str:
    """What is embedded (and hashed) for a chunk: its context line, then its text as written;
    of a pricing-sensitive document, with every number redacted. Every embedder gets that text,
    local ones too: a chunk's hash names one text whatever the model, and the BM25 half of
    hybrid search still finds the exact numbers in the stored text."""
    joined = f"{context}\n\n{text}" if context else text
    return redact_pricing(joined) if pricing_sensitive else joined


def chunk_context(title: str, heading_path: list[str], settings: ChunkSettings, counter: TokenCounter) -> tuple[str, int]:
    """"Title > Section > Subsection", within the context budget: inner headings give way first,
    then the line is cut."""
    parts = [p for p in [title, *heading_path] if p]
    while True:
        context = " > ".join(parts)
        tokens = counter.count([context])[0] if context else 0
        if tokens <= settings.context_tokens or len(parts) <= 2:
            break
        parts = [parts[0], *parts[2:]] if len(parts) > 2 else parts
    while tokens > settings.context_tokens:
        context = context[: max(1, int(len(context) * settings.context_tokens / tokens * 0.9))]
        tokens = counter.count([context])[0]
    return context, tokens


@dataclass(frozen=True)
class ChunkDraft:
    heading_path: list[str]
    text: str
    token_count: int
    pages: tuple[int, int] | None = None  # first and last page (or slide) the chunk's text is on
    card: bool = False  # the document card's text (CARD_KIND)


@dataclass
class _Unit:
    kind: str
    text: str
    tokens: int
    page: int | None = None


def _is_boundary(text: str) -> bool:
    return content_hash(text)[0] % 3 == 0


def chunk_blocks(blocks: list[Block], settings: ChunkSettings, counter: TokenCounter) -> list[ChunkDraft]:
    budget = settings.max_tokens - settings.overlap_tokens - settings.context_tokens
    sections: list[tuple[list[str], list[Block]]] = []
    for block in blocks:
        if sections and sections[-1][0] == block.heading_path and CARD_KIND not in (block.kind, sections[-1][1][-1].kind):
            sections[-1][1].append(block)
        else:
            sections.append((block.heading_path, [block]))
    counts = counter.count([b.text for b in blocks])
    count_iter = iter(counts)
    drafts: list[ChunkDraft] = []
    for heading_path, section_blocks in sections:
        units: list[_Unit] = []
        for block in section_blocks:
            tokens = next(count_iter)
            if tokens <= budget:
                units.append(_Unit(block.kind, block.text, tokens, block.page))
            else:
                units.extend((block.kind == "table" and _split_table(block, budget, counter))
                             or _split_oversize(block, budget, counter))
        packed = _pack_section(heading_path, units, settings, budget, counter)
        if section_blocks[0].kind == CARD_KIND:  # a card is a section of its own
            packed = [replace(d, card=True) for d in packed]
        drafts.extend(packed)
    # Markup alone (a closing ``` cut off a long code block, a table rule) is nothing to find.
    return [d for d in drafts if _WORD.search(d.text)]


def _pack_section(heading_path, units, settings, budget, counter) -> list[ChunkDraft]:
    minimum = budget // 4
    groups: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    for unit in units:
        if current and size + unit.tokens > budget:
            groups.append(current)
            current, size = [], 0
        current.append(unit)
        size += unit.tokens
        if size >= minimum and _is_boundary(unit.text):
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)

    texts = ["\n\n".join(u.text for u in group) for group in groups]
    tails, tail_counts = _overlap_tails([g[-1] for g in groups[:-1]], settings.overlap_tokens, counter)
    drafts = []
    for i, (group, text) in enumerate(zip(groups, texts)):
        tokens = sum(u.tokens for u in group)
        if i > 0 and tails[i - 1]:
            text = tails[i - 1] + "\n\n" + text
            tokens += tail_counts[i - 1]
        pages = [u.page for u in group if u.page is not None]
        drafts.append(ChunkDraft(list(heading_path), text, tokens, (min(pages), max(pages)) if pages else None))
    return drafts


def _overlap_tails(units: list[_Unit], overlap_tokens: int, counter: TokenCounter) -> tuple[list[str], list[int]]:
    """The last words of each chunk, repeated at the start of the next, within the overlap
    budget; never from code or a table, which would be cut mid-statement or mid-row."""
    if not units or overlap_tokens == 0:
        return [""] * len(units), [0] * len(units)
    texts = [u.text if u.kind not in ("code", "table") else "" for u in units]
    take = [int(overlap_tokens * 0.6)] * len(units)  # ~0.6 words per token for prose
    tails, counts = [], []
    for _ in range(3):  # shrink the few tails that came out over budget
        tails = [_last_words(t, n) for t, n in zip(texts, take)]
        counts = counter.count(tails)
        over = [i for i, c in enumerate(counts) if c > overlap_tokens]
        if not over:
            break
        for i in over:
            take[i] = int(take[i] * overlap_tokens / counts[i]) - 1
    return [t if c <= overlap_tokens else "" for t, c in zip(tails, counts)], [
        c if c <= overlap_tokens else 0 for c in counts
    ]


def _last_words(text: str, n: int) -> str:
    """The last n words, if the text has more than n: split only that far (splitting every
    chunk into all its words held ~10x the corpus in memory)."""
    if n <= 0:
        return ""
    words = text.rsplit(None, n)
    return " ".join(words[-n:]) if n < len(words) else ""


def _split_table(block: Block, budget: int, counter: TokenCounter) -> list[_Unit]:
    """A pipe table over budget, by rows, each piece led by the header row and its rule; a row
    too long for a piece by itself is cut as prose under the header. [] when the block is not
    a pipe table or its header takes over half the budget (then it is cut as prose)."""
    lines = block.text.split("\n")
    if len(lines) < 3 or not is_pipe_rule(lines[1]):
        return []
    header = "\n".join(lines[:2])
    room = budget - counter.count([header])[0] - 2  # the newlines around rows may count
    if room < budget // 2:
        return []
    pieces: list[list[str]] = []
    size = 0
    for row, tokens in zip(lines[2:], counter.count(lines[2:])):
        if tokens > room:
            cuts = _split_oversize(Block("paragraph", row, block.heading_path, block.page), room, counter)
            pieces.extend([u.text] for u in cuts)
            size = room + 1  # the next row starts a new piece
            continue
        if pieces and size + tokens + 1 <= room:
            pieces[-1].append(row)
            size += tokens + 1
        else:
            pieces.append([row])
            size = tokens
    texts = [header + "\n" + "\n".join(rows) for rows in pieces]
    units = [_Unit("table", t, n, block.page) for t, n in zip(texts, counter.count(texts))]
    return [p for u in units for p in ([u] if u.tokens <= budget else _refit(u, budget, counter))]


def _split_oversize(block: Block, budget: int, counter: TokenCounter) -> list[_Unit]:
    """A block over budget: code by lines, prose by sentences, then by words, and a "word"
    with no space in it (CJK prose, minified code, a table rule) by characters."""
    units: list[_Unit] = []
    current = ""
    size = 0
    for piece, tokens, glue in _expand(block, budget, counter):
        if current and size + tokens > budget:
            units.append(_Unit(block.kind, current, size))
            current, size = "", 0
        current = current + glue + piece if current else piece
        size += tokens
    if current:
        units.append(_Unit(block.kind, current, size))
    # Joining pieces can merge tokens at the seams; recount so every unit's count is exact.
    for unit, exact in zip(units, counter.count([u.text for u in units])):
        unit.tokens, unit.page = exact, block.page
    return [p for u in units for p in ([u] if u.tokens <= budget else _refit(u, budget, counter))]


def _expand(block: Block, budget: int, counter: TokenCounter) -> Iterator[tuple[str, int, str]]:
    """(piece, tokens, glue) of a block over budget, each piece within it; the glue goes before
    the piece when it is not first in its unit. A generator, and words are taken a batch at a
    time: one huge line would otherwise be held as millions of words at once (~25x its size)."""
    if block.kind == "code":
        pieces, joiner = block.text.split("\n"), "\n"
    else:
        pieces, joiner = _SENTENCE_END.split(block.text), " "
    for piece, tokens in zip(pieces, counter.count(pieces)):
        if tokens <= budget:
            yield piece, tokens, joiner
            continue
        glue = joiner
        for words in _word_batches(piece):
            for word, word_tokens in zip(words, counter.count(words)):
                if word_tokens <= budget:
                    yield word, word_tokens, glue
                else:  # the cut pieces of one word rejoin with nothing between them
                    cuts = _split_characters(word, word_tokens, budget, counter)
                    yield from ((cut, n, glue if j == 0 else "") for j, (cut, n) in enumerate(cuts))
                glue = " "


def _word_batches(text: str) -> Iterator[list[str]]:
    """text.split(" "), in lists of about COUNT_BATCH_CHARS characters."""
    start = 0
    while (end := text.find(" ", start + COUNT_BATCH_CHARS)) >= 0:
        yield text[start:end].split(" ")
        start = end + 1
    yield text[start:].split(" ")


def _split_characters(text: str, tokens: int, budget: int, counter: TokenCounter) -> list[tuple[str, int]]:
    """Cut a space-less run into pieces that each fit the budget: one cut at the measured
    characters-per-token rate, then only the pieces still over budget are cut again."""
    size = max(1, int(len(text) * budget / max(tokens, 1) * 0.9))
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    out: list[tuple[str, int]] = []
    for piece, count in zip(pieces, counter.count(pieces)):
        if count <= budget or len(piece) == 1:
            out.append((piece, count))
        else:
            out.extend(_split_characters(piece, count, budget, counter))
    return out


def _refit(unit: _Unit, budget: int, counter: TokenCounter) -> list[_Unit]:
    return [_Unit(unit.kind, t, n, unit.page) for t, n in _split_characters(unit.text, unit.tokens, budget, counter)]
