"""Daily metric snapshots through Dagster on a real PostgreSQL: known numbers after a known day,
a past day's backfill that gives back the numbers taken on the day, the row-count history that
cannot drift from the tables, thresholds that fail their checks, and the `refinery snapshot` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import psycopg
import pytest

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.feedback.events import Feedback, record_feedback
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.metrics.monitoring import (
    CRITICAL,
    NO_DATA,
    OK,
    WARNING,
    MonitoringError,
    load_thresholds,
)
from dagster_project.core.metrics.snapshots import read_snapshot, take_snapshot
from dagster_project.core.refine.llm import LLMChain, Price
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST, new_database
from tests.fakes.openai_server import refinement_answer

def today():
    """Asked each time: a module constant taken before midnight (UTC) names yesterday for the rows
    a test writes after it."""
    return datetime.now(timezone.utc).date()


@pytest.fixture
def corpus(tmp_path):
    """A copy of the sample corpus that a test may edit."""
    shutil.copytree(SAMPLE_MANIFEST.parent / "knowledge_base", tmp_path / "knowledge_base")
    shutil.copy(SAMPLE_MANIFEST, tmp_path / "corpus.yaml")
    return tmp_path


@pytest.fixture
def pipeline(db_url, corpus, monkeypatch, tmp_path):
    """The project's definitions against a fresh database, the sample corpus copy and the hash embedder."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("EMBED_PROVIDER", "hash")
    monkeypatch.setenv("CORPUS_MANIFEST", str(corpus / "corpus.yaml"))
    monkeypatch.setenv("MONITORING_FILE", str(write_monitoring(tmp_path, {})))
    monkeypatch.setenv("METRICS_START_DATE", (today() - timedelta(days=30)).isoformat())  # past days to snapshot
    pipeline = Pipeline(db_url)
    yield pipeline
    pipeline.store.close()


def write_monitoring(directory, metrics: dict):
    path = directory / "monitoring.yaml"
    path.write_text(json.dumps({"metrics": metrics}))
    return path


class Pipeline:
    def __init__(self, db_url: str) -> None:
        from dagster_project.core.db.store import VectorStore

        self.db_url = db_url
        self.store = VectorStore(db_url)
        self.instance = dg.DagsterInstance.ephemeral()

    def defs(self):
        from dagster_project.definitions import build_definitions
        from dagster_project.project import Project

        return build_definitions(Project.load())

    def ingest(self, *collections: str) -> None:
        job = self.defs().resolve_job_def("ingest")
        for name in collections or ("product", "sales", "support"):
            assert job.execute_in_process(partition_key=name, instance=self.instance).success

    def snapshot(self, day: date) -> dg.ExecuteInProcessResult:
        result = self.defs().resolve_job_def("snapshot").execute_in_process(
            partition_key=day.isoformat(), instance=self.instance, raise_on_error=True)
        return result

    def rows(self, sql: str, *params):
        with self.store.reading() as conn:
            return conn.execute(sql, params).fetchall()

    def shift_into_the_past(self, days: int) -> None:
        """Move everything that happened so far `days` days back, as if it had happened then."""
        step = f"interval '{days} days'"
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE feedback_events DISABLE TRIGGER feedback_events_append_only")
            conn.execute(f"UPDATE feedback_events SET created_at = created_at - {step}")
            conn.execute("ALTER TABLE feedback_events ENABLE TRIGGER feedback_events_append_only")
            for table, column in (("inventory_changes", "at"), ("ingestion_runs", "finished_at"),
                                  ("llm_calls", "called_at"), ("refinement_history", "refined_at"),
                                  ("metric_snapshots", "computed_at")):
                conn.execute(f"UPDATE {table} SET {column} = {column} - {step}")
            conn.execute(f"UPDATE metric_snapshots SET day = day - {days}")


def refine_everything(store, fake):
    """Product by the primary model, sales with one document quarantined, support by the
    lightweight path: 14 refinements, known outcomes."""
    def responder(body):
        if "Title: Lumen plans and pricing" in body["messages"][1]["content"]:
            return '{"summary": "too short"}'
        return refinement_answer(body)

    fake.chat_responder = responder
    chain = LLMChain(models=["primary-model"], base_url=fake.base_url, api_key="sk-test-metrics",
                     prices={"primary-model": Price(1.0, 2.0)}, max_retries=0, timeout=10)
    for collection, thresholds in (("product", RoutingThresholds()), ("sales", RoutingThresholds()),
                                   ("support", RoutingThresholds(min_words=100_000))):
        refine_collection(store, collection, chain, wordpiece_counter(), budget=8000, thresholds=thresholds)
    return chain


def values(snapshot_rows) -> dict:
    return {(v.metric, json.dumps(v.dimensions, sort_keys=True)): (v.value, v.kind) for v in snapshot_rows}


def test_a_past_day_backfill_gives_back_the_numbers_taken_on_the_day(pipeline, corpus, fake_openai):
    store = pipeline.store
    pipeline.ingest()
    chain = refine_everything(store, fake_openai)
    for collection, path, rating in (("product", "search.md", 1), ("product", "getting-started.md", 1),
                                     ("sales", "billing-faq.html", -1)):
        record_feedback(store, Feedback(rating=rating, collection=collection, path=path, comment="judged"))

    taken = pipeline.snapshot(today())
    on_the_day = read_snapshot(store, today())
    got = values(on_the_day)

    def value(metric, **dims):
        return got[(metric, json.dumps(dims, sort_keys=True))][0]

    chunks, vectors, calls, cost = pipeline.rows(
        "SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM embeddings), (SELECT count(*) FROM llm_calls), "
        "(SELECT sum(cost_usd)::float8 FROM llm_calls)")[0]
    assert value("documents") == 14 and value("documents", collection="product") == 6
    assert value("chunks") == chunks and value("vectors") == vectors and value("embedding_coverage") == 1.0
    assert value("texts_embedded") == vectors and value("tokens_embedded") > 0
    assert value("llm_calls") == calls == 6 + 2 + 2 and value("llm_cost_usd") == pytest.approx(cost)
    assert value("refined") == 14
    assert [value("refine_outcomes", outcome=o) for o in ("primary", "fallback", "extractive", "quarantined")] \
        == [8, 0, 5, 1]
    assert value("bypass_rate") == pytest.approx(5 / 14) and value("quarantine_rate") == pytest.approx(1 / 14)
    assert value("feedback_events", source="user") == 3 and value("feedback_approval") == pytest.approx(2 / 3)
    assert value("ingest_errors") == 0
    assert 0 < value("recall_at_5") <= 1 and 0 < value("mrr_at_10") <= 1
    assert 0 < value("search_latency_p50_ms") <= value("search_latency_p95_ms")
    assert got[("recall_at_5", "{}")][1] == "live" and got[("documents", "{}")][1] == "history"
    materialized = taken.asset_materializations_for_node("metric_snapshots")[0].metadata
    assert materialized["documents"].value == 14 and materialized["live_metrics"].value == "measured"

    # That was two days ago. Since then: a file deleted, more feedback, more model calls.
    pipeline.shift_into_the_past(2)
    past = today() - timedelta(days=2)
    (corpus / "knowledge_base" / "product" / "search.md").unlink()
    pipeline.ingest("product")
    record_feedback(store, Feedback(rating=-1, collection="product", path="getting-started.md", comment="late"))
    refine_collection(store, "product", chain, wordpiece_counter(), budget=8000, thresholds=RoutingThresholds())

    backfill = pipeline.snapshot(past)
    assert values(read_snapshot(store, past)) == values(on_the_day)  # history recomputed, live kept
    assert backfill.asset_materializations_for_node("metric_snapshots")[0].metadata["live_metrics"].value \
        == "kept as measured"

    now = take_snapshot(store, today())
    assert now.value("documents") == 13 and now.value("feedback_events") == 1 and now.value("refined") == 1
    assert now.value("feedback_redos") == 1 and now.value("llm_calls") == 1
    assert now.value("texts_embedded") == 0  # a deletion embeds nothing
    # A day between the two: nothing happened, the state carried over.
    between = take_snapshot(store, today() - timedelta(days=1), now=datetime.now(timezone.utc) + timedelta(days=5))
    assert between.value("documents") == 14 and between.value("llm_calls") == 0 and between.value("refined") == 0
    assert between.value("recall_at_5") is None and between.live.startswith("not measured")


def test_row_count_history_always_equals_the_tables(store, tmp_path):
    """The statement triggers count every insert and delete, whatever writes them (an edit that
    re-chunks, a removed file, a pruned collection)."""
    root = tmp_path / "kb"
    shutil.copytree(SAMPLE_MANIFEST.parent / "knowledge_base", root)
    manifest = load_manifest(SAMPLE_MANIFEST)
    collections = {n: c.model_copy(update={"root": root / c.root.name}) for n, c in manifest.collections.items()}

    def ingest_all():
        for collection in collections.values():
            ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                              max_file_bytes=10**7)

    def drift():
        with store.reading() as conn:
            return conn.execute(
                "SELECT count(*) FROM ("
                " SELECT 'documents' AS item, collection, count(*) AS n FROM documents GROUP BY collection"
                " UNION ALL SELECT 'chunks', collection, count(*) FROM chunks GROUP BY collection"
                " UNION ALL SELECT 'vectors', model_id::text, count(*) FROM embeddings GROUP BY model_id) truth"
                " FULL JOIN (SELECT item, coalesce(collection, model_id::text) AS collection, sum(delta) AS n"
                "  FROM inventory_changes GROUP BY 1, 2 HAVING sum(delta) <> 0) kept"
                " USING (item, collection) WHERE truth.n IS DISTINCT FROM kept.n").fetchone()[0]

    ingest_all()
    assert drift() == 0
    sync = root / "product" / "sync-and-offline.md"
    sync.write_text("# Sync\n\nA new first paragraph.\n\n" + sync.read_text())
    (root / "support" / "known-issues.txt").unlink()
    ingest_all()
    assert drift() == 0
    store.prune_collections(["product", "support"])
    store.drop_unreferenced_vectors()
    assert drift() == 0
    assert take_snapshot(store, today()).value("documents") == 6 + 4


def test_a_threshold_breach_fails_its_check_with_its_severity(pipeline, corpus, tmp_path, monkeypatch):
    (corpus / "knowledge_base" / "product" / "broken.md").write_text("---\ntitle: [unclosed\n---\nBody text.\n")
    monitoring = write_monitoring(tmp_path, {
        "documents": {"target": 100, "warning": 50, "critical": 20},  # 14 documents: ERROR
        "chunks": {"target": 1000, "warning": 500, "critical": 10},  # WARN
        "ingest_errors": {"target": 0, "warning": 0, "critical": 5, "direction": "lower"},  # 1 error: WARN
        "embedding_coverage": {"target": 1, "warning": 0.99, "critical": 0.9},  # fine
        "llm_cost_usd": {"target": 1, "warning": 5, "critical": 20},  # 0: fine
        "feedback_approval": {"target": 0.9, "warning": 0.8, "critical": 0.5},  # no feedback: no data
    })
    monkeypatch.setenv("MONITORING_FILE", str(monitoring))
    pipeline.ingest()
    # The week before, for the table and the chart.
    for back in (3, 1):
        take_snapshot(pipeline.store, today() - timedelta(days=back), now=datetime.now(timezone.utc))
    result = pipeline.snapshot(today())
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    verdict = {name: (e.passed, e.severity, e.metadata["status"].value) for name, e in checks.items()}
    assert verdict == {
        "documents_within_thresholds": (False, dg.AssetCheckSeverity.ERROR, CRITICAL),
        "chunks_within_thresholds": (False, dg.AssetCheckSeverity.WARN, WARNING),
        "ingest_errors_within_thresholds": (False, dg.AssetCheckSeverity.WARN, WARNING),
        "embedding_coverage_within_thresholds": (True, dg.AssetCheckSeverity.WARN, OK),
        "llm_cost_usd_within_thresholds": (True, dg.AssetCheckSeverity.WARN, OK),
        "feedback_approval_within_thresholds": (True, dg.AssetCheckSeverity.WARN, NO_DATA),
    }
    documents = checks["documents_within_thresholds"].metadata
    assert documents["value"].value == "14"  # text: a check's numbers are plotted by run time, not by day
    assert documents["day"].value == today().isoformat()  # the partition the verdict belongs to
    week = documents["trend"].value.records
    assert [r.data["day"] for r in week] == [(today() - timedelta(days=i)).isoformat() for i in range(8)]
    # The documents arrived today: the days before had none (and two days ago was never snapshotted).
    assert [r.data["value"] for r in week[:4]] == [14.0, 0.0, None, 0.0]
    # Bars on one scale, up to the target (100): today's 14 is 2.8 of 20 characters.
    assert [r.data["trend"] for r in week[:4]] == ["██▊", "▏", "", "▏"]
    approval = checks["feedback_approval_within_thresholds"].metadata["trend"].value.records
    assert all(r.data["trend"] == "" for r in approval)  # nothing to draw


def test_monitoring_file_errors_name_the_metric(tmp_path):
    cases = {
        "metrics: {recall_at_50: {target: 1, warning: 0.9, critical: 0.8}}": "unknown metric",
        "metrics: {recall_at_5: {target: 1, warning: 0.9}}": "must all be numbers",
        "metrics: {recall_at_5: {target: 0.5, warning: 0.9, critical: 0.8}}": "target is worse than the warning",
        "metrics: {ingest_errors: {target: 0, warning: 0, critical: 0}}": "say `direction: higher` or `lower`",
        "metrics: {recall_at_5: {target: 1, warning: 0.9, critical: 0.95, direction: higher}}":
            "critical must not be above warning",
        "metrics: [\n": "not valid YAML",
    }
    for text, message in cases.items():
        path = tmp_path / "monitoring.yaml"
        path.write_text(text)
        with pytest.raises(MonitoringError, match=message):
            load_thresholds(path)
    shipped = load_thresholds(PROJECT_ROOT / "monitoring.yaml")
    recall, latency = shipped["recall_at_5"], shipped["search_latency_p95_ms"]
    assert [recall.status(v) for v in (0.97, 0.9, 0.85, 0.5, None)] == [OK, OK, WARNING, CRITICAL, NO_DATA]
    assert [latency.status(v) for v in (10, 300, 5000)] == [OK, WARNING, CRITICAL]


def test_cli_snapshot(pg_server, tmp_path):
    env = dict(os.environ)
    env.update(DATABASE_URL=new_database(pg_server), DAGSTER_PG_URL=new_database(pg_server, template="template1"),
               DAGSTER_HOME=str(tmp_path / "dagster_home"), REFINERY_HOME=str(tmp_path / "refinery_home"),
               EMBED_PROVIDER="hash", CORPUS_MANIFEST=str(SAMPLE_MANIFEST),
               MONITORING_FILE=str(write_monitoring(tmp_path, {"documents": {"target": 10, "warning": 5,
                                                                              "critical": 1}})))

    def refinery(*args):
        return subprocess.run([sys.executable, "-m", "dagster_project.cli", "snapshot", *args], env=env,
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)

    for day, message in (("2026-02-30", "--day must be a date as YYYY-MM-DD"),
                         ((today() + timedelta(days=1)).isoformat(), "has not begun yet"),
                         ("2020-01-01", "is before the first metric day")):
        out = refinery("--day", day)
        assert out.returncode == 2 and message in out.stderr and out.stdout == "", out.stderr

    out = refinery("--json")  # an empty index: the documents check fails critically
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["day"] == today().isoformat() and report["success"] is True
    assert {"metric": "documents", "dimensions": {}, "value": 0.0, "kind": "history"} in report["metrics"]
    assert report["checks"]["documents_within_thresholds"]["severity"] == "ERROR"
    assert report["live_metrics"].startswith("not measured")


def test_coverage_is_counted_in_the_store_and_vectors_are_the_active_models(pipeline, tmp_path, monkeypatch):
    """A run killed between its chunks and embeddings steps leaves live chunks without a vector
    (here: the vectors of one collection deleted, as that run never wrote them). The snapshot
    counts them, though every embeddings step on record verified full coverage, and its check
    fails with the severity monitoring.yaml gives; a rerun heals it. `vectors` is the active
    model's: a candidate's vectors beside them are counted per model only."""
    from dagster_project.core.metrics.monitoring import load_thresholds

    shipped = load_thresholds(PROJECT_ROOT / "monitoring.yaml")["embedding_coverage"]
    monkeypatch.setenv("MONITORING_FILE", str(write_monitoring(tmp_path, {"embedding_coverage": {
        "target": shipped.target, "warning": shipped.warning, "critical": shipped.critical}})))
    pipeline.ingest()
    monkeypatch.setenv("EMBED_DIMS", "128")  # a candidate model, built beside the active one
    pipeline.ingest()
    monkeypatch.delenv("EMBED_DIMS")
    store = pipeline.store
    active = store.model_id_by_key(store.active_model_key())
    with psycopg.connect(pipeline.db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM embeddings e USING chunks c WHERE c.content_hash = e.content_hash "
                     "AND c.collection = 'support' AND e.model_id = %s", (active,))
    (live, covered, support), = pipeline.rows(
        "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = %s "
        "AND e.content_hash = c.content_hash)), count(*) FILTER (WHERE c.collection = 'support') FROM chunks c",
        active)
    assert 0 < covered < live and support == live - covered
    active_vectors, every_vector = pipeline.rows(
        "SELECT count(*) FILTER (WHERE model_id = %s), count(*) FROM embeddings", active)[0]
    assert every_vector > active_vectors

    def verdict(result):
        check, = [e for e in result.get_asset_check_evaluations()
                  if e.check_name == "embedding_coverage_within_thresholds"]
        return check.passed, check.severity, check.metadata["status"].value

    result = pipeline.snapshot(today())
    now = read_snapshot(store, today())
    got = values(now)
    coverage = covered / live
    assert got[("embedding_coverage", "{}")] == (pytest.approx(coverage), "live")
    assert got[("embedding_coverage", json.dumps({"collection": "support"}))][0] == 0.0
    assert got[("embedding_coverage", json.dumps({"collection": "product"}))][0] == 1.0
    status = shipped.status(coverage)
    assert status in (WARNING, CRITICAL)
    assert verdict(result) == (False, dg.AssetCheckSeverity.ERROR if status == CRITICAL else dg.AssetCheckSeverity.WARN,
                               status)
    assert got[("vectors", "{}")][0] == active_vectors
    assert sum(v for (metric, dims), (v, _) in got.items() if metric == "vectors" and dims != "{}") == every_vector

    pipeline.ingest("support")  # the rerun embeds what the killed run did not
    healed = pipeline.snapshot(today())
    assert read_snapshot(store, today()) and values(read_snapshot(store, today()))[("embedding_coverage", "{}")][0] == 1.0
    assert verdict(healed) == (True, dg.AssetCheckSeverity.WARN, OK)
