"""Feedback on refined documents and search hits: the rules the CLI and the database share, the
one insert path (as the `refinery_feedback` role, like any application), listings and summaries,
and what the refiner reads back (reviewers' notes and approved examples)."""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ..db.store import VectorStore

# Mirrors feedback_tags_valid() in sql/0007_feedback.sql.
TAG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,38}[a-z0-9])?$")
MAX_TAGS = 10
MAX_COMMENT_CHARS = 4000
MAX_QUERY_CHARS = 2000
SOURCES = ("user", "validator", "auto")
NOTES_PER_DOCUMENT = 5  # reviewers' notes put in one prompt, newest first
APPROVED_MIN_RATING = 4  # on the 1-5 scale of feedback_training_examples()
EXAMPLE_POOL = 20  # approved examples read per refine run, to pick from per document

# What each constraint means, so the database's refusal reads like the CLI's.
_CONSTRAINT_MESSAGES = {
    "feedback_rating_is_plus_or_minus_one": "the rating must be +1 or -1",
    "feedback_score_from_1_to_5": "the score must be an integer from 1 to 5",
    "feedback_score_agrees_with_rating": "a score of 1-3 goes with rating -1 and 3-5 with +1",
    "feedback_tags_well_formed": (f"tags are at most {MAX_TAGS} lower-case words of letters and digits joined "
                                  "by - or _ (e.g. wrong-facts), up to 40 characters each"),
    "feedback_comment_length": f"the reason is longer than {MAX_COMMENT_CHARS} characters",
    "feedback_events_query_check": f"the query is longer than {MAX_QUERY_CHARS} characters",
}


class FeedbackError(ValueError):
    """Feedback that cannot be recorded; the message says why and what to do."""


@dataclass
class Feedback:
    """One judgement by a person or an application. The target is a document (by id, or by
    collection and path) or a chunk from a search hit; the judged version is the document's
    current refinement unless given."""
    rating: int
    document_id: uuid.UUID | None = None
    collection: str | None = None
    path: str | None = None
    chunk_id: uuid.UUID | None = None
    query: str | None = None
    score: int | None = None
    tags: list[str] = field(default_factory=list)
    comment: str | None = None
    author: str | None = None


def parse_rating(text: str) -> int:
    value = {"+1": 1, "1": 1, "-1": -1, "up": 1, "down": -1}.get(str(text).strip().lower())
    if value is None:
        raise FeedbackError(f"the rating must be +1 or -1 (or up / down), not {text!r}")
    return value


def parse_tags(values: list[str] | None) -> list[str]:
    """Tags as given on a command line: separate words or comma-separated; duplicates dropped."""
    tags: list[str] = []
    for value in values or []:
        for tag in value.split(","):
            if tag.strip() and tag.strip() not in tags:
                tags.append(tag.strip())
    return tags


def check(feedback: Feedback) -> None:
    """The database's rules, checked before it is asked, with the same messages."""
    if feedback.rating not in (-1, 1):
        raise FeedbackError(_CONSTRAINT_MESSAGES["feedback_rating_is_plus_or_minus_one"])
    if feedback.score is not None:
        if feedback.score not in range(1, 6):
            raise FeedbackError(_CONSTRAINT_MESSAGES["feedback_score_from_1_to_5"])
        if (feedback.rating == 1 and feedback.score < 3) or (feedback.rating == -1 and feedback.score > 3):
            raise FeedbackError(_CONSTRAINT_MESSAGES["feedback_score_agrees_with_rating"])
    bad = [t for t in feedback.tags if not TAG_PATTERN.match(t)]
    if bad or len(feedback.tags) > MAX_TAGS:
        shown = f" ({', '.join(repr(t) for t in bad)})" if bad else ""
        raise FeedbackError(_CONSTRAINT_MESSAGES["feedback_tags_well_formed"] + shown)
    if feedback.comment is not None and len(feedback.comment) > MAX_COMMENT_CHARS:
        raise FeedbackError(_CONSTRAINT_MESSAGES["feedback_comment_length"])
    if feedback.query is not None and len(feedback.query) > MAX_QUERY_CHARS:
        raise FeedbackError(_CONSTRAINT_MESSAGES["feedback_events_query_check"])


def resolve_document(store: VectorStore, spec: str, collection: str | None = None,
                     roots: Mapping[str, Path] | None = None, *, with_feedback_log: bool = False) -> tuple[str, str]:
    """(collection, path) of an indexed document named as its path in the collection, as
    `collection/path`, or as a file on disk under a collection's root. `with_feedback_log`: also
    a document that has left the index but has events (the log outlives documents)."""
    known = store.document_keys() | (feedback_document_keys(store) if with_feedback_log else set())
    spec = spec.strip()
    candidates: list[tuple[str, str]] = []
    if collection:
        candidates += [(collection, spec)] if (collection, spec) in known else []
    else:
        candidates += sorted((c, p) for c, p in known if p == spec)
        head, _, rest = spec.partition("/")
        if rest and (head, rest) in known:
            candidates.append((head, rest))
    on_disk = Path(spec).expanduser()
    if not candidates and roots and on_disk.is_file():
        resolved = on_disk.resolve()
        for name, root in sorted(roots.items()):
            if collection and name != collection:
                continue
            try:
                relative = resolved.relative_to(Path(root).resolve()).as_posix()
            except ValueError:
                continue
            if (name, relative) in known:
                candidates.append((name, relative))
    candidates = list(dict.fromkeys(candidates))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise FeedbackError(f"{spec!r} is in several collections ({', '.join(c for c, _ in candidates)}): "
                            "say which with --collection")
    where = f" in collection {collection!r}" if collection else ""
    options: dict[str, list[str]] = {}  # what a person may have meant to type -> the documents it names
    for c, p in sorted(known):
        if not collection or c == collection:
            options.setdefault(p, []).append(f"{c}/{p}")
            options.setdefault(f"{c}/{p}", []).append(f"{c}/{p}")
    close = list(dict.fromkeys(name for match in difflib.get_close_matches(spec, options, n=3, cutoff=0.5)
                               for name in options[match]))[:3]
    hint = f"; did you mean {', '.join(close)}?" if close else " (refinery status lists what is indexed)"
    log = " or the feedback log" if with_feedback_log else ""
    raise FeedbackError(f"no document {spec!r}{where} in the index{log}{hint}")


def feedback_document_keys(store: VectorStore) -> set[tuple[str, str]]:
    """(collection, path) of every document the feedback log has events on."""
    with store.reading() as conn:
        return {(c, p) for c, p in conn.execute("SELECT DISTINCT collection, path FROM feedback_events")}


def record_feedback(store: VectorStore, feedback: Feedback) -> int:
    """Insert one event as `refinery_feedback`, the role applications use; returns its id. The
    database resolves the target and the judged version, and refuses what its rules refuse."""
    check(feedback)
    try:
        with store.giving_feedback() as conn:
            return conn.execute(
                "INSERT INTO feedback_events (document_id, collection, path, chunk_id, query, rating, score, tags, "
                "comment, author) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (feedback.document_id, feedback.collection, feedback.path, feedback.chunk_id, feedback.query,
                 feedback.rating, feedback.score, feedback.tags, feedback.comment, feedback.author)).fetchone()[0]
    except psycopg.errors.IntegrityError as exc:
        raise FeedbackError(explain_refusal(exc)) from None


def explain_refusal(exc: psycopg.Error) -> str:
    diag = exc.diag
    message = _CONSTRAINT_MESSAGES.get(diag.constraint_name or "") or diag.message_primary or str(exc)
    return message + (f" ({diag.message_hint})" if diag.message_hint else "")


_EVENT_COLUMNS = ("event_id", "created_at", "source", "rating", "score", "tags", "comment", "author", "target",
                  "collection", "path", "chunk_id", "query", "model", "prompt_version", "schema_version",
                  "is_current")


def list_feedback(store: VectorStore, *, collection: str | None = None, path: str | None = None,
                  source: str | None = None, event_id: int | None = None, limit: int = 50) -> list[dict]:
    """The newest events first, with whether the refinement each judged is still the current one."""
    where, params = [], []
    for column, value in (("collection", collection), ("path", path), ("source", source), ("event_id", event_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    sql = (f"SELECT {', '.join(_EVENT_COLUMNS)} FROM feedback_judgements"
           f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY event_id DESC LIMIT %s")
    with store.reading() as conn:
        rows = conn.execute(sql, (*params, limit)).fetchall()
    return [dict(zip(_EVENT_COLUMNS, row)) for row in rows]


def _rows(store: VectorStore, sql: str, params: tuple = ()) -> list[dict]:
    with store.reading() as conn:
        cursor = conn.execute(sql, params)
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def feedback_summary(store: VectorStore) -> list[dict]:
    return _rows(store, "SELECT * FROM feedback_summary ORDER BY model, prompt_version")


def refiner_stats(store: VectorStore) -> list[dict]:
    return _rows(store, "SELECT * FROM get_refiner_stats()")


def example_counts(store: VectorStore) -> dict[str, int]:
    with store.reading() as conn:
        return {
            "positive_examples": conn.execute("SELECT count(*) FROM feedback_positive_examples").fetchone()[0],
            "negative_examples": conn.execute("SELECT count(*) FROM feedback_negative_examples").fetchone()[0],
            "training_examples": conn.execute("SELECT count(*) FROM feedback_training_examples(1000000, %s)",
                                              (APPROVED_MIN_RATING,)).fetchone()[0],
        }


def feedback_versions(store: VectorStore, collections: list[str]) -> dict[str, str]:
    """Per collection, a data version that changes with every judgement from a person or an
    application (the newest id and the count; "none" before the first). The pipeline's own
    judgements (validator, auto) are left out: they ask for no redo, and the refine step that
    writes them must not trigger itself again."""
    with store.reading() as conn:
        rows = conn.execute("SELECT collection, max(id), count(*) FROM feedback_events "
                            "WHERE source = 'user' AND collection = ANY(%s) GROUP BY collection",
                            (collections,)).fetchall()
    found = {collection: f"{newest}-{count}" for collection, newest, count in rows}
    return {name: found.get(name, "none") for name in collections}


# ------------------------------------------------------------------ what the refiner reads back

@dataclass(frozen=True)
class ReviewNote:
    event_id: int
    comment: str | None
    tags: tuple[str, ...]
    score: int | None

    def text(self) -> str:
        parts = [f"[{', '.join(self.tags)}]"] if self.tags else []
        if self.score is not None:
            parts.append(f"(score {self.score}/5)")
        parts.append(self.comment or "rejected without a reason")
        return " ".join(parts)


@dataclass(frozen=True)
class ApprovedExample:
    document_id: uuid.UUID
    collection: str
    pricing_sensitive: bool
    refined: dict


def review_notes(store: VectorStore, inputs: Mapping[uuid.UUID, bytes]) -> dict[uuid.UUID, list[ReviewNote]]:
    """People's negative feedback on refinements of these documents made from the same input
    (document id -> input hash), newest first: what the next refinement should correct."""
    if not inputs:
        return {}
    ids = list(inputs)
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT f.document_id, f.id, f.comment, f.tags, f.score FROM feedback_events f "
            "JOIN unnest(%s::uuid[], %s::bytea[]) AS i(document_id, input_hash) "
            "  ON i.document_id = f.document_id AND i.input_hash = f.input_hash "
            "WHERE f.source = 'user' AND f.rating = -1 AND f.target = 'document' ORDER BY f.document_id, f.id DESC",
            (ids, [inputs[i] for i in ids])).fetchall()
    notes: dict[uuid.UUID, list[ReviewNote]] = {}
    for document_id, event_id, comment, tags, score in rows:
        notes.setdefault(document_id, []).append(ReviewNote(event_id, comment, tuple(tags), score))
    return notes


def approved_examples(store: VectorStore, limit: int = EXAMPLE_POOL) -> list[ApprovedExample]:
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT document_id, collection, pricing_sensitive, refined FROM feedback_training_examples(%s, %s)",
            (limit, APPROVED_MIN_RATING)).fetchall()
    return [ApprovedExample(*row) for row in rows]


def pick_examples(pool: list[ApprovedExample], document_id: uuid.UUID, collection: str, n: int) -> list[ApprovedExample]:
    """Up to n approved examples of other documents, from the same collection first."""
    others = [e for e in pool if e.document_id != document_id]
    return sorted(others, key=lambda e: e.collection != collection)[:n]


@dataclass(frozen=True)
class FeedbackPolicy:
    """How the refine step judges its own output and learns from people's feedback."""
    auto_min_score: float = 0.8  # a model refinement scoring this much (score_refinement) is approved (auto)
    prompt_examples: int = 2  # approved examples in a prompt redone for feedback
