"""What the Dagster catalog says about each asset is true: table names and columns match the
migrated database, every asset has kinds and owners, descriptions carry no Markdown backticks,
check results name the partition they were computed on (and are partitioned like their asset),
materializations record the collection's totals beside the run's changes, the switch gates say
skipped rather than passed without a candidate, and the metric days start where the project does."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import psycopg
import pytest

COLLECTION = "support"
SUPPORT_DOCUMENTS = 5


@pytest.fixture
def project(project_env):
    from dagster_project.definitions import build_definitions
    from dagster_project.project import Project

    project = Project.load()
    return project, build_definitions(project)


def _every_asset(defs):
    return defs.resolve_asset_graph().asset_nodes


def test_table_assets_name_their_tables_and_columns_as_the_database_has_them(project, db_url):
    _, defs = project
    tables = {}
    for node in _every_asset(defs):
        metadata = node.metadata
        if "dagster/column_schema" in metadata:
            tables[str(metadata["dagster/table_name"]).split(".")[-1]] = metadata["dagster/column_schema"]
    assert set(tables) == {"documents", "chunks", "embeddings", "active_embedding_model", "refined_documents",
                           "feedback_events", "metric_snapshots"}
    short = {"timestamp with time zone": "timestamptz"}
    with psycopg.connect(db_url) as conn:
        for table, schema in tables.items():
            actual = conn.execute(
                "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                (table,)).fetchall()
            assert [(c.name, c.type) for c in schema.columns] == [(n, short.get(t, t)) for n, t in actual], table


def test_every_asset_has_kinds_owners_and_plain_descriptions(project):
    _, defs = project
    for node in _every_asset(defs):
        name = node.key.to_user_string()
        assert node.kinds, f"{name} has no kinds"
        # (Dagster's observable sources take no owners.)
        assert node.owners or not node.is_materializable, f"{name} has no owners"
        assert node.description and "`" not in node.description, name
        for check in defs.resolve_assets_def(node.key).check_specs if node.is_materializable else ():
            assert check.description and "`" not in check.description, check.name
    schedules = {s.name: s for s in defs.schedules}
    assert set(schedules) == {"daily_metric_snapshot", "reingest_all_collections"}
    assert all(s.description and "`" not in s.description for s in schedules.values())
    assert defs.resolve_assets_def("active_embedding_model").group_names_by_key[
        dg.AssetKey("active_embedding_model")] == "search"


def test_automation_conditions_say_why_an_asset_was_requested():
    from dagster_project.assets.corpus import MISSING_AT_START, ON_SOURCE_CHANGE, ON_UPSTREAM_CHANGE

    for condition in (MISSING_AT_START, ON_SOURCE_CHANGE, ON_UPSTREAM_CHANGE):
        assert condition.get_label(), condition


def test_checks_are_partitioned_like_their_asset(project):
    _, defs = project
    for node in _every_asset(defs):
        if not node.is_materializable:
            continue
        for spec in defs.resolve_assets_def(node.key).check_specs:
            assert spec.partitions_def == node.partitions_def, spec.name


def test_checks_and_materializations_describe_the_collection_they_ran_on(project):
    _, defs = project
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("ingest")
    for run in range(2):  # the second run changes nothing
        result = job.execute_in_process(partition_key=COLLECTION, instance=instance)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 5
        for evaluation in checks:
            assert evaluation.partition == COLLECTION, evaluation.check_name
            assert evaluation.metadata["collection"].value == COLLECTION, evaluation.check_name
        steps = {e.asset_key.to_user_string(): e.materialization.metadata
                 for e in result.get_asset_materialization_events()}
        documents, chunks, embeddings = steps["documents"], steps["chunks"], steps["embeddings"]
        assert documents["new"].value == (SUPPORT_DOCUMENTS if run == 0 else 0)
        total_chunks = chunks["total_chunks"].value
        # The collection as each step left it: after a run that changed nothing, every step
        # still shows what the collection holds.
        for metadata in (documents, chunks, embeddings) if run == 1 else (embeddings,):
            assert metadata["total_documents"].value == SUPPORT_DOCUMENTS
            assert metadata["total_chunks"].value == total_chunks > 0
            assert metadata["total_vectors"].value == total_chunks
            assert metadata["embedding_coverage"].value == 1.0
        assert documents["dagster/row_count"].value == SUPPORT_DOCUMENTS
        assert chunks["dagster/row_count"].value == embeddings["dagster/row_count"].value == total_chunks
    # What the UI reads: the latest check result of this collection's partition.
    key = dg.AssetCheckKey(dg.AssetKey("embeddings"), "every_live_chunk_has_vector")
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert record.event.asset_check_evaluation.partition == COLLECTION


def test_without_a_candidate_the_switch_gates_are_skipped_not_passed(project):
    _, defs = project
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("ingest").execute_in_process(partition_key=COLLECTION, instance=instance).success
    result = defs.resolve_job_def("switch_embedding_model").execute_in_process(instance=instance)
    assert result.success
    assert result.get_asset_check_evaluations() == []  # no verdict at all
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["gates"].value.startswith("skipped: no candidate")
    keys = [dg.AssetCheckKey(dg.AssetKey("active_embedding_model"), name)
            for name in ("candidate_covers_every_live_chunk", "candidate_retrieves_at_least_as_well")]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    # Planned and never evaluated in a run that succeeded: the UI shows it skipped.
    assert {records[k].status.value for k in keys} == {"PLANNED"}
    spec = {s.name: s for s in defs.resolve_assets_def("active_embedding_model").check_specs}
    assert spec["candidate_covers_every_live_chunk"].blocking


def test_metric_days_start_the_day_the_project_was_first_loaded(project_env, tmp_path):
    from dagster_project.project import Project

    today = datetime.now(timezone.utc).date()
    project_env.delenv("METRICS_START_DATE", raising=False)
    first = Project.load().daily_partitions.get_partition_keys()
    assert first == [today.isoformat()]  # a fresh install: no empty past
    # Stable: a later load (on a later day) starts on the recorded day.
    home = tmp_path / "home"
    (home / "first_day").write_text((today - timedelta(days=3)).isoformat() + "\n")
    assert Project.load().daily_partitions.get_partition_keys()[0] == (today - timedelta(days=3)).isoformat()
    project_env.setenv("METRICS_START_DATE", "2026-01-01")
    assert Project.load().metrics_start_date == date(2026, 1, 1)
