"""Retrieval evaluation at document level: a golden questions file, recall@1/5/10, MRR@10 and
nDCG@10 per search mode, and the questions that missed."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .searcher import SearchError

KS = (1, 5, 10)
# An entry shown in an error, cut while it is written: YAML aliases share one list between many
# places, and a 464-byte file's entry printed whole is 43 million items (it ran out of memory).
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60
SHOWN_CHARS = 120  # of a question in a line of output; --json keeps it whole


class QuestionsError(ValueError):
    """The questions file is unusable; the message names the entry and the problem."""


@dataclass(frozen=True)
class Question:
    text: str
    documents: tuple[tuple[str, str], ...]  # (collection, path) of every document that answers it


def load_questions(path: str | Path, known_documents: set[tuple[str, str]]) -> list[Question]:
    """`questions: [{question, documents: [path...], collection}]`; every document must be in the
    index, so a typo cannot pass for a miss."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuestionsError(f"questions file {path} not found") from None
    except UnicodeDecodeError as exc:
        raise QuestionsError(f"questions file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise QuestionsError(f"cannot read the questions file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise QuestionsError(f"questions file {path} is not valid YAML: {exc}") from None
    entries = raw.get("questions") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise QuestionsError(f"{path} must have a non-empty list `questions:`")
    questions = []
    for number, entry in enumerate(entries, start=1):
        where = f"{path}, question {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("question"), str) or not entry["question"].strip():
            raise QuestionsError(f"{where}: each entry needs `question: <text>` (got {_SHORT.repr(entry)})")
        documents = entry.get("documents")
        collection = entry.get("collection")
        if (not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents)
                or not isinstance(collection, str)):
            raise QuestionsError(f"{where}: needs `documents: [path, ...]` and `collection: <name>`")
        unknown = [d for d in documents if (collection, d) not in known_documents]
        if unknown:
            raise QuestionsError(f"{where}: not in the index: {', '.join(f'{collection}/{d}' for d in unknown)} "
                                 "(check the path and collection, or ingest first)")
        if any("\x00" in text for text in (entry["question"], collection, *documents)):
            raise QuestionsError(f"{where}: contains a NUL character (\\0): remove it")
        questions.append(Question(entry["question"].strip(), tuple((collection, d) for d in documents)))
    return questions


def evaluate(questions: list[Question], retrieve: Callable[[str], list[tuple[str, str]]]) -> dict:
    """`retrieve(question)` returns distinct documents, best first (at least 10 when it can). A
    question that search refuses (no word the embedder can use) stops it with the question's
    number, as a malformed entry does: metrics that silently left it out would not compare with
    other runs."""
    sums = {f"recall@{k}": 0.0 for k in KS} | {"mrr@10": 0.0, "ndcg@10": 0.0}
    missed = []
    for number, question in enumerate(questions, start=1):
        try:
            ranked = retrieve(question.text)[:10]
        except SearchError as exc:
            raise QuestionsError(f"question {number} ({shortened(question.text)!r}): {exc}, or remove the entry") from None
        relevant = set(question.documents)
        for k in KS:
            sums[f"recall@{k}"] += len(relevant & set(ranked[:k])) / len(relevant)
        first = next((i for i, d in enumerate(ranked) if d in relevant), None)
        sums["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked) if d in relevant)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
        sums["ndcg@10"] += dcg / ideal
        if first is None or first >= 5:
            missed.append({"question": question.text, "expected": ["/".join(d) for d in question.documents],
                           "got": ["/".join(d) for d in ranked[:5]]})
    n = len(questions)
    return {"questions": n, **{name: round(total / n, 4) for name, total in sums.items()}, "missed_top5": missed}


def shortened(text: str) -> str:
    """A question on one line of output: whitespace runs as one space, at most SHOWN_CHARS characters."""
    line = " ".join(text.split())
    return line if len(line) <= SHOWN_CHARS else line[:SHOWN_CHARS] + "…"


def distinct_documents(hits) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for hit in hits:
        seen.setdefault((hit.collection, hit.path), None)
    return list(seen)
