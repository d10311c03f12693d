"""Chunks as the embedder and the search see them: within the token budget, counted exactly,
one heading path each, code kept whole or cut on lines, overlap from prose only, and stable
when a paragraph is inserted."""

from __future__ import annotations

import random

import pytest

from dagster_project.core.ingest.chunking import ChunkSettings, chunk_blocks
from dagster_project.core.ingest.parsing import Block, parse_document
from dagster_project.core.ingest.tokens import wordpiece_counter
from tests.conftest import SAMPLE_MANIFEST

KB = SAMPLE_MANIFEST.parent / "knowledge_base"
WORDS = ("sync offline journal device server conflict merge account workspace invite member "
         "permission export import search index backup region latency webhook token retry "
         "notebook page editor history comment mention folder archive restore").split()


@pytest.fixture(scope="module")
def counter():
    return wordpiece_counter()


def prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def long_section(seed: int = 7, paragraphs: int = 30, path=("Guide", "Long")) -> list[Block]:
    rng = random.Random(seed)
    return [Block("paragraph", f"Paragraph {i}: " + prose(rng, rng.randint(25, 60)), list(path))
            for i in range(paragraphs)]


def code_block(lines: int, path: list[str], tag: str = "step") -> Block:
    body = "\n".join(f"    result_{i} = run_{tag}(config, attempt={i}, retries=3)  # {tag} {i}"
                     for i in range(lines))
    return Block("code", f"def pipeline(config):\n{body}\n    return result_0", path)


def sample_blocks() -> list[list[Block]]:
    docs = []
    for path in sorted(KB.rglob("*")):
        if path.is_file() and path.suffix in (".md", ".rst", ".html", ".txt"):
            docs.append(parse_document(path.name, path.read_bytes()).blocks)
    return docs


@pytest.mark.parametrize("max_tokens,overlap", [(128, 16), (128, 32), (256, 0)])
def test_every_chunk_fits_the_budget_and_its_count_is_exact(counter, max_tokens, overlap):
    settings = ChunkSettings(max_tokens=max_tokens, overlap_tokens=overlap, context_tokens=0)
    rng = random.Random(1)
    synthetic = [
        long_section(),
        # One paragraph far over budget, with and without sentence ends.
        [Block("paragraph", " ".join(prose(rng, 30) for _ in range(40)), ["Huge"])],
        [Block("paragraph", " ".join(rng.choice(WORDS) for _ in range(900)), ["No sentences"])],
        [code_block(120, ["Code"])],
    ]
    drafts = [d for blocks in sample_blocks() + synthetic for d in chunk_blocks(blocks, settings, counter)]
    assert len(drafts) > 50
    counts = counter.count([d.text for d in drafts])
    for draft, exact in zip(drafts, counts):
        assert draft.token_count == exact, draft.text[:80]
        assert draft.token_count <= max_tokens, draft.text[:80]


@pytest.mark.parametrize("block", [
    Block("paragraph", "同步服务在设备离线时会保存所有编辑并在重新连接后上传。" * 40, ["中文"]),
    Block("code", "x=a(b).c(d,e);" * 60, ["JS"]),
    # The table rule of the sample's sharing-and-permissions.md, at a 64-token budget.
    Block("table", "| Role | Can do |\n|" + "-" * 8 + "|" + "-" * 32 + "|" + "-" * 72 + "|", ["Roles"]),
], ids=["cjk", "minified", "table-rule"])
def test_text_without_spaces_still_fits_the_budget(counter, block):
    settings = ChunkSettings(max_tokens=64, overlap_tokens=16, context_tokens=0)
    drafts = chunk_blocks([block], settings, counter)
    assert all(d.token_count <= settings.max_tokens for d in drafts), [d.token_count for d in drafts]


def test_chunks_never_mix_heading_paths(counter):
    settings = ChunkSettings(max_tokens=256, overlap_tokens=32, context_tokens=0)
    rng = random.Random(3)
    sections = {("Guide", "Alpha"): "alphaword", ("Guide", "Bravo"): "bravoword",
                ("Guide", "Bravo", "Charlie"): "charlieword", ("Guide", "Delta"): "deltaword"}
    blocks = []
    for path, marker in sections.items():
        # Small sections that would fit in one chunk together, and one long one.
        count = 12 if marker == "bravoword" else 2
        blocks += [Block("paragraph", f"{marker} {prose(rng, 30)}", list(path)) for _ in range(count)]
    drafts = chunk_blocks(blocks, settings, counter)
    assert {tuple(d.heading_path) for d in drafts} == set(sections)
    for draft in drafts:
        own = sections[tuple(draft.heading_path)]
        assert own in draft.text
        others = [m for m in sections.values() if m != own and m in draft.text]
        assert others == [], (draft.heading_path, others)
    # Document order is kept: sections come out in the order they were written.
    order = [tuple(d.heading_path) for d in drafts]
    assert sorted(set(order), key=order.index) == list(sections)


def test_code_block_that_fits_stays_whole_in_one_chunk(counter):
    settings = ChunkSettings(max_tokens=256, overlap_tokens=32, context_tokens=0)
    code = code_block(4, ["API", "Example"])
    assert counter.count([code.text])[0] <= settings.max_tokens - settings.overlap_tokens
    blocks = long_section(seed=11, paragraphs=6, path=("API", "Example")) + [code] + \
        long_section(seed=12, paragraphs=6, path=("API", "Example"))
    drafts = chunk_blocks(blocks, settings, counter)
    assert len(drafts) > 2
    holding = [d for d in drafts if "def pipeline(config):" in d.text]
    assert len(holding) == 1
    assert code.text in holding[0].text
    # No other chunk carries a piece of it.
    assert not any("run_step(config" in d.text for d in drafts if d is not holding[0])


def test_oversize_code_is_cut_on_line_boundaries_without_overlap(counter):
    settings = ChunkSettings(max_tokens=128, overlap_tokens=32, context_tokens=0)
    code = code_block(60, ["Reference", "Pipeline"])
    assert counter.count([code.text])[0] > 4 * settings.max_tokens
    drafts = chunk_blocks([code], settings, counter)
    assert len(drafts) > 4
    lines = code.text.split("\n")
    for draft in drafts:
        # Every chunk is whole lines of the block, in order.
        chunk_lines = draft.text.split("\n")
        start = lines.index(chunk_lines[0])
        assert lines[start:start + len(chunk_lines)] == chunk_lines
    # Nothing repeated (no overlap taken from code), nothing lost.
    assert "\n".join(d.text for d in drafts) == code.text


def test_overlap_repeats_the_end_of_the_previous_prose_chunk(counter):
    settings = ChunkSettings(max_tokens=128, overlap_tokens=24, context_tokens=0)
    blocks = long_section(seed=5)
    drafts = chunk_blocks(blocks, settings, counter)
    assert len(drafts) > 5
    paragraphs = {b.text for b in blocks}
    for previous, draft in zip(drafts, drafts[1:]):
        tail = draft.text.split("\n\n")[0]
        assert tail not in paragraphs, "chunk starts without overlap"
        assert previous.text.endswith(" " + tail)
        assert 0 < counter.count([tail])[0] <= settings.overlap_tokens


def test_no_overlap_is_taken_from_code(counter):
    settings = ChunkSettings(max_tokens=128, overlap_tokens=32, context_tokens=0)
    path = ["Snippets"]
    blocks = [code_block(2, path, tag=f"job{i}") for i in range(12)]
    drafts = chunk_blocks(blocks, settings, counter)
    assert len(drafts) > 3
    # The chunks are exactly the code blocks, each whole, none repeated.
    pieces = [piece for d in drafts for piece in d.text.split("\n\n")]
    assert pieces == [b.text for b in blocks]


def test_no_overlap_crosses_a_heading(counter):
    settings = ChunkSettings(max_tokens=128, overlap_tokens=32, context_tokens=0)
    first = long_section(seed=1, paragraphs=6, path=("One",))
    second = long_section(seed=2, paragraphs=6, path=("Two",))
    drafts = chunk_blocks(first + second, settings, counter)
    opening = next(d for d in drafts if d.heading_path == ["Two"])
    assert opening.text.startswith(second[0].text)


def test_inserting_a_paragraph_at_the_start_changes_at_most_two_chunks(counter):
    settings = ChunkSettings(max_tokens=128, overlap_tokens=16, context_tokens=0)
    blocks = long_section(seed=7, paragraphs=30)
    before = {d.text for d in chunk_blocks(blocks, settings, counter)}
    assert len(before) > 10
    for seed in range(5):
        rng = random.Random(100 + seed)
        inserted = Block("paragraph", "Inserted notice: " + prose(rng, rng.randint(8, 70)), ["Guide", "Long"])
        after = {d.text for d in chunk_blocks([inserted] + blocks, settings, counter)}
        assert any(inserted.text in t for t in after)
        assert len(after - before) <= 2, f"seed {seed}: {len(after - before)} new chunk texts"
        assert len(before - after) <= 2


def test_overlap_over_half_the_budget_is_refused():
    with pytest.raises(ValueError, match="at most half"):
        ChunkSettings(max_tokens=64, overlap_tokens=40)
    ChunkSettings(max_tokens=64, overlap_tokens=32, context_tokens=0)  # exactly half is allowed


def test_chunker_version_changes_with_every_setting_that_changes_chunk_text(counter):
    base = ChunkSettings(max_tokens=256, overlap_tokens=32, context_tokens=0).version(counter)
    assert ChunkSettings(max_tokens=256, overlap_tokens=32, context_tokens=0).version(counter) == base
    assert ChunkSettings(max_tokens=512, overlap_tokens=32, context_tokens=0).version(counter) != base
    assert ChunkSettings(max_tokens=256, overlap_tokens=16, context_tokens=0).version(counter) != base
    assert len({ChunkSettings(m, o).version(counter) for m in (128, 256) for o in (0, 32)}) == 4


def test_long_text_without_spaces_is_cut_into_pieces_that_fit():

    counter = wordpiece_counter()
    blob = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(40_000))  # 40k CJK characters, no space
    chunks = chunk_blocks([Block("paragraph", blob, ["H"])], ChunkSettings(max_tokens=128, overlap_tokens=0, context_tokens=0), counter)
    assert all(c.token_count <= 128 for c in chunks)
    assert "".join(c.text for c in chunks) == blob  # nothing lost or repeated
    image = "![shot](data:image/png;base64," + "iVBORw0KGgo" * 2000 + ")"
    doc = parse_document("page.md", f"# Page\n\nSee {image} here.\n".encode())
    assert len(doc.blocks[0].text) < 100 and "data:image/png;base64," in doc.blocks[0].text


def test_texts_longer_than_a_counting_batch_count_as_if_encoded_whole(counter):
    """Long texts are encoded in slices (memory): cut before whitespace, their counts add up exactly."""
    from dagster_project.core.ingest.tokens import COUNT_BATCH_CHARS

    rng = random.Random(7)
    words = ["glacier", "naïve", "don't", "x", "co-operate", "3.14", "e-mail", "\n\n", "\t"]
    long_text = " ".join(rng.choice(words) for _ in range(COUNT_BATCH_CHARS // 2))
    assert len(long_text) > 2 * COUNT_BATCH_CHARS
    whole = len(counter._tokenizer.encode(long_text, add_special_tokens=False).ids)
    assert counter.count(["short one", long_text, ""]) == [2, whole, 0]


def test_parallel_chunking_gives_the_same_chunks_in_order(counter):
    """Enough documents for the process pool: every batch comes back with exactly the chunks
    (ids, texts, counts, hashes) the chunker makes in this process, in order."""
    import uuid

    from dagster_project.core.ingest.pipeline import PARALLEL_PARSE_MIN_FILES, chunk_batches
    from dagster_project.core.db.chunks import DocumentToChunk

    rng = random.Random(11)
    documents = [DocumentToChunk(uuid.UUID(int=i), f"doc{i}.md", bytes(32), f"Doc {i}", "full", {},
                                 [{"kind": "paragraph", "text": prose(rng, rng.randint(20, 400)),
                                   "path": ["Guide", f"Part {j % 3}"]} for j in range(rng.randint(1, 12))])
                 for i in range(PARALLEL_PARSE_MIN_FILES * 2)]
    batches = [documents[i:i + 7] for i in range(0, len(documents), 7)]
    settings = ChunkSettings()
    parallel = list(chunk_batches(batches, "docs", settings, counter, workers=2))
    serial = list(chunk_batches(batches, "docs", settings, counter, workers=1))
    assert len(parallel) == len(batches)
    assert parallel == serial
    assert sum(map(len, parallel)) > len(documents)
