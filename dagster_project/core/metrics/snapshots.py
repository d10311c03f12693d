"""Daily metric snapshots: a day's size, coverage, cost, refinement, feedback and retrieval
figures. History metrics are computed from the event and history tables as of the day's end
(UTC), so a backfill of a past day gives the numbers a snapshot taken on the day gave; live
metrics (embedding coverage, retrieval quality, search latency) can only be measured now, and are
kept as measured."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from datetime import time as clock
from pathlib import Path

import numpy as np
from psycopg.types.json import Jsonb

from ..db.store import VectorStore
from ..embed.base import Embedder
from ..search.evaluation import QuestionsError, evaluate, load_questions

FIRST_DAY_FILE = "first_day"  # under REFINERY_HOME: the UTC day the project was first loaded
APPROVAL_WINDOW_DAYS = 7  # feedback approval: user judgements of the last seven days
# What each metric means. (history): recomputed from the logs as of the day's end. (live): measured
# when the day is snapshotted. (day): what happened during the day; otherwise the state at its end.
METRICS = {
    "documents": "documents in the index (history; total and per collection)",
    "chunks": "chunks in the index (history; total and per collection)",
    "vectors": "vectors stored: the total of the model active at the day's end, and per model (history)",
    "embedding_coverage": "share of live chunks with a vector of the active model, counted in the store "
                          "(live; total and per collection)",
    "texts_embedded": "texts sent to the embedder (history, day)",
    "tokens_embedded": "tokens sent to the embedder (history, day)",
    "llm_calls": "LLM calls (history, day; total and per model)",
    "llm_prompt_tokens": "LLM prompt tokens (history, day)",
    "llm_completion_tokens": "LLM completion tokens (history, day)",
    "llm_cost_usd": "LLM dollars from the price table (history, day; total and per model)",
    "refined": "documents refined (history, day)",
    "refine_outcomes": "documents refined per outcome: primary, fallback, extractive, quarantined (history, day)",
    "bypass_rate": "share of refined documents that took the lightweight path, no call (history, day)",
    "quarantine_rate": "share of refined documents whose every model answer failed validation (history, day)",
    "feedback_redos": "refinements redone for people's negative feedback (history, day)",
    "feedback_events": "feedback events recorded (history, day; total and per source)",
    "feedback_approval": f"share of positive user judgements of refined documents over the last "
                         f"{APPROVAL_WINDOW_DAYS} days (history)",
    "ingest_errors": "files that could not be ingested, as of each collection's latest documents step "
                     "(history; total and per collection)",
    "recall_at_5": "golden questions with their document in the top 5 of hybrid search (live)",
    "mrr_at_10": "mean reciprocal rank of the first right document in the top 10 of hybrid search (live)",
    "search_latency_p50_ms": "median hybrid search time over the golden questions, query embedded (live)",
    "search_latency_p95_ms": "95th percentile hybrid search time over the golden questions (live)",
}
LIVE_METRICS = ("embedding_coverage", "recall_at_5", "mrr_at_10", "search_latency_p50_ms", "search_latency_p95_ms")
RETRIEVAL_METRICS = LIVE_METRICS[1:]  # measured through search (measure_live); coverage is counted in the store


def first_day(home: Path) -> date:
    """The UTC day the project was first loaded with this home, recorded then and read ever after
    (so the metric days start where the project's data does and stay put across loads)."""
    path = Path(home) / FIRST_DAY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{FIRST_DAY_FILE}.{os.getpid()}")
        draft.write_text(datetime.now(timezone.utc).date().isoformat() + "\n")
        try:  # a link appears whole: the first of concurrent loads records the day, the others read it
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    text = path.read_text().strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{path} must hold the first metric day as YYYY-MM-DD, not {text!r}: fix it, "
                         "or set METRICS_START_DATE") from None


@dataclass
class MetricValue:
    metric: str
    value: float
    dimensions: dict = field(default_factory=dict)
    kind: str = "history"  # history | live


@dataclass
class Snapshot:
    day: date
    values: list[MetricValue]  # as stored for the day
    live: str  # measured | kept | not measured (...)

    def value(self, metric: str, **dimensions) -> float | None:
        return next((v.value for v in self.values if v.metric == metric and v.dimensions == dimensions), None)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, clock(), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def history_metrics(store: VectorStore, day: date) -> list[MetricValue]:
    """The day's history metrics, from the logs alone (nothing about the current state)."""
    start, end = day_bounds(day)
    window = end - timedelta(days=APPROVAL_WINDOW_DAYS)
    p = {"start": start, "end": end, "window": window}
    with store.reading() as conn:
        inventory = conn.execute(
            "SELECT i.item, i.collection, m.key, sum(i.delta)::bigint FROM inventory_changes i "
            "LEFT JOIN embedding_models m ON m.id = i.model_id WHERE i.at < %(end)s "
            "GROUP BY 1, 2, 3 HAVING sum(i.delta) <> 0 ORDER BY 1, 2, 3", p).fetchall()
        # The model search served at the day's end: the last switch before it (the first recorded
        # one for a day before any: it was serving when the record began).
        active = conn.execute(
            "SELECT m.key FROM embedding_model_switches s JOIN embedding_models m ON m.id = s.to_model_id "
            "ORDER BY s.switched_at < %(end)s DESC, CASE WHEN s.switched_at < %(end)s THEN s.id ELSE -s.id END DESC "
            "LIMIT 1", p).fetchone()
        embedded = conn.execute(
            "SELECT coalesce(sum(texts_embedded), 0)::bigint, coalesce(sum(tokens_embedded), 0)::bigint "
            "FROM ingestion_runs WHERE step = 'embeddings' AND finished_at >= %(start)s AND finished_at < %(end)s",
            p).fetchone()
        llm = conn.execute(
            "SELECT model, count(*), sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint, "
            "sum(cost_usd)::float8 FROM llm_calls WHERE called_at >= %(start)s AND called_at < %(end)s "
            "GROUP BY model ORDER BY model", p).fetchall()
        refined = conn.execute(
            "SELECT CASE WHEN quarantined THEN 'quarantined' ELSE link END, route = 'lightweight', feedback_redo, "
            "count(*) FROM refinement_history WHERE refined_at >= %(start)s AND refined_at < %(end)s "
            "GROUP BY 1, 2, 3", p).fetchall()
        feedback = conn.execute(
            "SELECT source, count(*) FROM feedback_events WHERE created_at >= %(start)s AND created_at < %(end)s "
            "GROUP BY source ORDER BY source", p).fetchall()
        approval = conn.execute(
            "SELECT count(*) FILTER (WHERE rating = 1), count(*) FROM feedback_events WHERE source = 'user' "
            "AND target = 'document' AND created_at >= %(window)s AND created_at < %(end)s", p).fetchone()
        # A collection's errors count until another collection's documents step prunes it (its
        # documents gone after its own latest step).
        errors = conn.execute(
            "WITH latest AS (SELECT DISTINCT ON (collection) collection, finished_at, "
            "  coalesce((counts->>'failed')::bigint, 0) AS failed FROM ingestion_runs "
            "  WHERE step = 'documents' AND finished_at < %(end)s ORDER BY collection, finished_at DESC) "
            "SELECT collection, failed FROM latest l WHERE NOT EXISTS (SELECT 1 FROM inventory_changes i "
            "  WHERE i.item = 'documents' AND i.collection = l.collection AND i.delta < 0 "
            "  AND i.at > l.finished_at AND i.at < %(end)s) "
            "OR (SELECT coalesce(sum(delta), 0) FROM inventory_changes i WHERE i.item = 'documents' "
            "    AND i.collection = l.collection AND i.at < %(end)s) > 0 ORDER BY collection", p).fetchall()

    out: list[MetricValue] = []

    def add(metric: str, value: float, **dimensions) -> None:
        out.append(MetricValue(metric, float(value), dimensions))

    for item, key in (("documents", "collection"), ("chunks", "collection"), ("vectors", "model")):
        parts = [(c if item != "vectors" else m, n) for i, c, m, n in inventory if i == item]
        # The total of vectors is the active model's: a candidate's or a retired model's vectors
        # (per model below) serve no search, and would hide missing ones.
        add(item, sum(n for name, n in parts if item != "vectors" or (active and name == active[0])))
        for name, n in parts:
            add(item, n, **{key: name})
    add("texts_embedded", embedded[0])
    add("tokens_embedded", embedded[1])
    add("llm_calls", sum(r[1] for r in llm))
    add("llm_prompt_tokens", sum(r[2] for r in llm))
    add("llm_completion_tokens", sum(r[3] for r in llm))
    add("llm_cost_usd", round(sum(r[4] for r in llm), 8))
    for model, calls, _, _, cost in llm:
        add("llm_calls", calls, model=model)
        add("llm_cost_usd", round(cost, 8), model=model)
    total = sum(n for *_, n in refined)
    add("refined", total)
    for outcome in ("primary", "fallback", "extractive", "quarantined"):
        add("refine_outcomes", sum(n for o, _, _, n in refined if o == outcome), outcome=outcome)
    add("feedback_redos", sum(n for _, _, redo, n in refined if redo))
    if total:
        add("bypass_rate", sum(n for _, light, _, n in refined if light) / total)
        add("quarantine_rate", sum(n for o, _, _, n in refined if o == "quarantined") / total)
    add("feedback_events", sum(n for _, n in feedback))
    for source, n in feedback:
        add("feedback_events", n, source=source)
    if approval[1]:
        add("feedback_approval", approval[0] / approval[1])
    add("ingest_errors", sum(n for _, n in errors))
    for collection, n in errors:
        add("ingest_errors", n, collection=collection)
    return out


def measure_coverage(store: VectorStore) -> list[MetricValue]:
    """The share of live chunks that have a vector of the active model, counted in the store now
    (total and per collection): chunks a run stored but never embedded (it died between its
    chunks and embeddings steps) count as missing. None without a chunk."""
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT c.collection, count(*), count(e.content_hash) FROM chunks c "
            "LEFT JOIN embeddings e ON e.content_hash = c.content_hash "
            "AND e.model_id = (SELECT model_id FROM active_embedding_model) "
            "GROUP BY c.collection ORDER BY c.collection").fetchall()
    live = sum(n for _, n, _ in rows)
    if not live:
        return []
    return [MetricValue("embedding_coverage", sum(v for _, _, v in rows) / live, kind="live"),
            *(MetricValue("embedding_coverage", v / n, {"collection": c}, "live") for c, n, v in rows)]


def golden_set_retrieval(store: VectorStore, embedder: Embedder, questions: list,
                         text_search_config: str = "english") -> tuple[dict, Callable[[str], list]]:
    """Recall and MRR of hybrid search with the embedder's model on the golden questions, and the
    search it ran (query vectors ready), for timing."""
    from ..ingest.pipeline import adopt_stored_size

    adopt_stored_size(store, embedder)
    model_id = store.model_id(embedder.model)
    texts = list(dict.fromkeys(q.text for q in questions))
    vectors = dict(zip(texts, embedder.embed(texts).vectors))

    def search(text: str):
        return store.search_documents(model_id, embedder.model.dims, vectors[text], k=10, mode="hybrid",
                                      query_text=text, text_search_config=text_search_config, passages=1)

    return evaluate(questions, lambda text: [(d.collection, d.path) for d in search(text)]), search


def measure_retrieval(store: VectorStore, embedder: Embedder, questions_path: Path,
                      text_search_config: str = "english") -> tuple[list[MetricValue], str | None]:
    """Recall@5 and MRR@10 of hybrid search on the golden questions, then the latency of each
    question's search (query vector ready, caches warm from the first pass). Returns the values,
    or none and the reason they could not be measured. `embedder` is the active model's."""
    from ..ingest.pipeline import adopt_stored_size

    adopt_stored_size(store, embedder)
    if store.model_id(embedder.model) is None:
        return [], f"nothing is embedded with {embedder.model.key} yet"
    try:
        questions = load_questions(questions_path, store.document_keys())
    except QuestionsError as exc:
        return [], str(exc)
    quality, search = golden_set_retrieval(store, embedder, questions, text_search_config)
    latencies = []
    for text in dict.fromkeys(q.text for q in questions):
        started = time.perf_counter()
        search(text)
        latencies.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(latencies, [50, 95])
    return [MetricValue("recall_at_5", quality["recall@5"], kind="live"),
            MetricValue("mrr_at_10", quality["mrr@10"], kind="live"),
            MetricValue("search_latency_p50_ms", round(float(p50), 3), kind="live"),
            MetricValue("search_latency_p95_ms", round(float(p95), 3), kind="live")], None


def take_snapshot(store: VectorStore, day: date, *, now: datetime | None = None,
                  measure_live: Callable[[], tuple[list[MetricValue], str | None]] | None = None) -> Snapshot:
    """Compute and store one day's snapshot, replacing that day's history metrics. Live metrics
    are measured for today, and for yesterday if it has none yet (a snapshot taken just after
    midnight); an older day keeps what was measured on it, and has none if it was never snapshotted."""
    today = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
    if day > today:
        raise ValueError(f"{day} has not begun yet (today is {today} UTC)")
    values = history_metrics(store, day)
    stored_live = {v.metric for v in read_snapshot(store, day) if v.kind == "live"}

    def on_the_day(metrics) -> bool:  # today, or yesterday when it has none of them yet
        return day == today or (day == today - timedelta(days=1) and not stored_live & set(metrics))

    live: list[MetricValue] = measure_coverage(store) if on_the_day(["embedding_coverage"]) else []
    if measure_live is None:
        status = "not measured (no search set up)"
    elif on_the_day(RETRIEVAL_METRICS):
        retrieval, reason = measure_live()
        status = "measured" if retrieval else f"not measured ({reason})"
        live += retrieval
    else:
        status = "kept as measured" if stored_live & set(RETRIEVAL_METRICS) \
            else "not measured (a past day: live metrics are measured on the day)"
    write_snapshot(store, day, values, live)
    return Snapshot(day, read_snapshot(store, day), status)


def write_snapshot(store: VectorStore, day: date, history: list[MetricValue],
                   live: list[MetricValue] | None) -> None:
    """The day's rows, idempotently: its history rows are replaced, and the live rows of each
    metric newly measured. Snapshots of one day take turns."""
    rows = history + (live or [])
    measured = sorted({v.metric for v in live or []})
    with store.writing() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('refinery-snapshot:' || %s))", (day.isoformat(),))
        cur.execute("DELETE FROM metric_snapshots WHERE day = %s AND (kind = 'history' OR metric = ANY(%s))",
                    (day, measured))
        cur.executemany(
            "INSERT INTO metric_snapshots (day, metric, dimensions, value, kind) VALUES (%s, %s, %s, %s, %s)",
            [(day, v.metric, Jsonb(v.dimensions), v.value, v.kind) for v in rows])


def read_snapshot(store: VectorStore, day: date) -> list[MetricValue]:
    with store.reading() as conn:
        rows = conn.execute("SELECT metric, value, dimensions, kind FROM metric_snapshots WHERE day = %s "
                            "ORDER BY metric, dimensions::text", (day,)).fetchall()
    return [MetricValue(metric, value, dimensions, kind) for metric, value, dimensions, kind in rows]


def metric_series(store: VectorStore, metric: str, first: date, last: date, **dimensions) -> dict[date, float]:
    """One metric's stored values from `first` to `last`, by day (days without a value left out)."""
    with store.reading() as conn:
        rows = conn.execute("SELECT day, value FROM metric_snapshots WHERE metric = %s AND dimensions = %s "
                            "AND day BETWEEN %s AND %s ORDER BY day",
                            (metric, Jsonb(dimensions), first, last)).fetchall()
    return dict(rows)
