"""The analyzer: a deterministic look at a document (length, language, structure, quality
scores, content type) that decides whether a model call is worth it."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")
STOPWORDS = {
    "en": {"the", "and", "of", "to", "a", "in", "is", "that", "for", "it", "as", "with", "be", "on", "this",
           "are", "by", "or", "an", "not", "can", "you", "your", "from", "if", "at", "which", "will"},
    "de": {"der", "die", "und", "das", "ist", "nicht", "mit", "den", "ein", "eine", "zu", "von", "auf", "für"},
    "fr": {"le", "la", "les", "et", "des", "est", "une", "un", "pour", "que", "dans", "pas", "sur", "du"},
    "es": {"el", "la", "los", "las", "y", "que", "es", "una", "un", "para", "por", "con", "del", "se"},
}


@dataclass(frozen=True)
class Analysis:
    words: int
    sentences: int
    headings: int
    language: str
    coherence: float  # 0-1: sentences of a readable length, prose rather than fragments
    completeness: float  # 0-1: enough text, structure and closure to stand on its own
    informativeness: float  # 0-1: vocabulary richness and content words over filler
    content_type: str  # prose | code | list | table | mixed
    quality: float  # mean of the three scores

    def as_dict(self) -> dict:
        return asdict(self)


def detect_language(words: list[str]) -> str:
    lowered = [w.lower() for w in words[:2000]]
    scores = {lang: sum(1 for w in lowered if w in stop) for lang, stop in STOPWORDS.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] >= max(3, len(lowered) * 0.02) else "und"


def analyze(title: str, blocks: list[dict], headings: list) -> Analysis:
    texts = [b["text"] for b in blocks]
    kinds = Counter(b["kind"] for b in blocks)
    text = "\n".join(texts)
    words = _WORD.findall(text)
    n_words = len(words)
    sentences = max(1, len(_SENTENCE.findall(text)))
    lowered = [w.lower() for w in words]
    language = detect_language(words)
    stop = STOPWORDS.get(language, set())

    mean_sentence = n_words / sentences
    coherence = _clip(1.0 - abs(math.log(max(mean_sentence, 1) / 18)) / 2.5)
    completeness = _clip(0.5 * min(1.0, n_words / 400) + 0.3 * min(1.0, len(headings) / 3)
                         + 0.2 * (1.0 if title.strip() else 0.0))
    content = [w for w in lowered if w not in stop and len(w) > 2]
    richness = len(set(content)) / max(1, len(content)) ** 0.85 if content else 0.0
    informativeness = _clip(0.5 * min(1.0, richness * 2) + 0.5 * (len(content) / max(1, n_words)) / 0.6)

    total = sum(kinds.values()) or 1
    dominant, count = kinds.most_common(1)[0] if kinds else ("paragraph", 0)
    if count / total < 0.6:
        content_type = "mixed"
    else:
        content_type = {"paragraph": "prose", "code": "code", "list": "list", "table": "table"}.get(dominant, "mixed")
    quality = round((coherence + completeness + informativeness) / 3, 3)
    return Analysis(n_words, sentences, len(headings), language, round(coherence, 3), round(completeness, 3),
                    round(informativeness, 3), content_type, quality)


def _clip(x: float) -> float:
    return max(0.0, min(1.0, x))


@dataclass(frozen=True)
class RoutingThresholds:
    min_words: int = 60  # below this a model call is not worth its cost
    min_quality: float = 0.35


def route(analysis: Analysis, thresholds: RoutingThresholds) -> str | None:
    """None: send to the model chain; otherwise the reason for the lightweight path."""
    if analysis.words < thresholds.min_words:
        return f"too small ({analysis.words} words < {thresholds.min_words})"
    if analysis.quality < thresholds.min_quality:
        return f"low quality ({analysis.quality:.2f} < {thresholds.min_quality})"
    return None


_ALL_STOPWORDS = set().union(*STOPWORDS.values())


def _stems(text: str) -> list[str]:
    """Content words, cut to five letters: a crude stem that lets "summaries" meet "summary"."""
    return [w.lower()[:5] for w in _WORD.findall(text) if len(w) > 3 and w.lower() not in _ALL_STOPWORDS]


def score_refinement(refined, source_text: str) -> float:
    """0-1, the auto judge of the feedback loop: how much of what the summary and key points say
    is grounded in the text the refinement was made from (their content words found there), and
    how complete it is (key points, topics, questions answered). Cheap and deterministic."""
    claims = _stems(" ".join([refined.summary, *refined.key_points]))
    source = set(_stems(source_text))
    grounding = sum(1 for w in claims if w in source) / len(claims) if claims else 0.0
    completeness = (min(1.0, len(refined.key_points) / 3) + min(1.0, len(refined.topics) / 2)
                    + min(1.0, len(refined.questions_answered) / 2)) / 3
    return round(0.7 * grounding + 0.3 * completeness, 3)
