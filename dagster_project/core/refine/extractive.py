"""The extractive refiner: schema-valid refined JSON from the document's own sentences, with no
model. The last link of every chain, and the lightweight path for documents not worth a call."""

from __future__ import annotations

import re
from collections import Counter

from .quality import STOPWORDS, Analysis
from .schema import RefinedDocument

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[^\W\d_][\w'-]*", re.UNICODE)
_PROPER = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-zA-Z0-9]+(?:\s+[A-Z][a-zA-Z0-9]+){0,3})")
CONTENT_TYPES = {"guide", "reference", "faq", "policy", "runbook", "specification", "pricing"}


def _sentences(blocks: list[dict]) -> list[str]:
    out = []
    for block in blocks:
        if block["kind"] not in ("paragraph", "list", "quote"):
            continue
        for sentence in _SENTENCE_SPLIT.split(" ".join(block["text"].split())):
            if 6 <= len(sentence.split()) <= 60:
                out.append(sentence.strip())
    return out


def refine_extractively(title: str, blocks: list[dict], headings: list[dict], doc_type: str | None,
                        analysis: Analysis) -> RefinedDocument:
    stop = STOPWORDS.get(analysis.language, STOPWORDS["en"])
    words = [w.lower() for b in blocks for w in _WORD.findall(b["text"])]
    frequency = Counter(w for w in words if w not in stop and len(w) > 3)
    sentences = _sentences(blocks)

    def score(sentence: str) -> float:
        terms = [w.lower() for w in _WORD.findall(sentence)]
        return sum(frequency.get(t, 0) for t in terms) / (len(terms) ** 0.7 or 1)

    ranked = sorted(range(len(sentences)), key=lambda i: -score(sentences[i]))
    key_points = [sentences[i][:300] for i in sorted(ranked[:5])]
    summary = " ".join(sentences[:3])[:1200] if sentences else ""
    if len(summary) < 20:
        text = " ".join(" ".join(b["text"].split()) for b in blocks)
        summary = (f"{title}: {text}" if text else f"{title}: a document with no body text.")[:1200]
        if len(summary) < 20:
            summary = (summary + " (short document)").ljust(20, ".")
    if not key_points:
        key_points = [summary[:300]]

    topics = [h["title"].lower()[:60] for h in headings if h.get("level", 1) <= 2 and h.get("title")][:4]
    topics += [w for w, _ in frequency.most_common(8) if w not in topics]
    topics = topics[:6] or [title.lower()[:60]]

    proper = Counter(m for b in blocks for m in _PROPER.findall(b["text"]) if m.lower() not in stop)
    entities = [{"name": name[:120], "kind": "other"} for name, n in proper.most_common(10) if n >= 2]

    questions = [h["title"] for h in headings if h.get("title", "").endswith("?")][:3]
    questions += [f"What does {title} say about {h['title'].rstrip('?').lower()}?"
                  for h in headings if h.get("title") and not h["title"].endswith("?")][: 5 - len(questions)]
    if not questions:
        questions = [f"What is {title} about?"]

    content_type = doc_type.lower() if doc_type and doc_type.lower() in CONTENT_TYPES else "other"
    return RefinedDocument(
        title=title[:200], summary=summary, key_points=key_points, topics=topics,
        entities=entities, questions_answered=questions[:6], content_type=content_type,
        language=analysis.language if 2 <= len(analysis.language) <= 8 else "und",
    )
