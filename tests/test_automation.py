"""Automation: editing one file of one collection, with no hand-started run, leads the automation
to update that collection's documents, chunks, embeddings and refined JSON, and nothing of the
other collections; a re-observation that finds nothing new requests nothing; the re-ingestion
schedule asks for every collection."""

from __future__ import annotations

import time
from datetime import datetime

import dagster as dg
import pytest
from dagster._core.definitions.observe import observe

from dagster_project.core.ingest import corpus as corpus_module

AUTOMATED = ("documents", "chunks", "embeddings", "refined_documents")


@pytest.fixture
def automated(project_env, tmp_path):
    from dagster_project.definitions import build_definitions
    from dagster_project.project import Project

    defs = build_definitions(Project.load())
    return defs, dg.DagsterInstance.ephemeral(), tmp_path / "examples" / "knowledge_base"


def requested(defs, instance, cursor):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return {key: sorted(result.get_requested_partitions(dg.AssetKey(key))) for key in AUTOMATED}, result.cursor


def run_requested(defs, instance, wanted: dict[str, list[str]]) -> None:
    """What the sensor would launch: one run per collection over the requested assets."""
    for partition in sorted({p for parts in wanted.values() for p in parts}):
        keys = [dg.AssetKey(k) for k, parts in wanted.items() if partition in parts]
        job = dg.define_asset_job("automation_test", selection=dg.AssetSelection.assets(*keys))
        resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("automation_test")
        assert resolved.execute_in_process(partition_key=partition, instance=instance).success


def test_an_edit_in_one_collection_updates_only_that_collection(automated):
    defs, instance, corpus = automated
    source = defs.resolve_assets_def("corpus_files")

    # First tick: every collection is new, everything is requested once.
    wanted, cursor = requested(defs, instance, None)
    assert all(parts == ["product", "sales", "support"] for parts in wanted.values()), wanted
    run_requested(defs, instance, wanted)
    observe([source], instance=instance)

    # Observed again with nothing changed: nothing to do.
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted == {key: [] for key in AUTOMATED}
    observe([source], instance=instance)
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted == {key: [] for key in AUTOMATED}

    # One support file edited: the next observation sees a new data version for `support` only.
    faq = next((corpus / "support").glob("*.rst"))
    faq.write_text(faq.read_text() + "\n\nA new paragraph about exporting a workspace to a ZIP archive.\n")
    observe([source], instance=instance)
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted == {key: ["support"] for key in AUTOMATED}
    run_requested(defs, instance, wanted)

    wanted, _ = requested(defs, instance, cursor)
    assert wanted == {key: [] for key in AUTOMATED}


def test_an_observation_reads_only_the_files_changed_since_the_ingest(automated, monkeypatch):
    """Observing stats the files and reads only those whose signature moved since the documents
    step stored it: otherwise each observation (every 5 minutes by default) reads the whole corpus."""
    defs, instance, corpus = automated
    time.sleep(corpus_module.RACY_SECONDS + 0.1)  # a file written just now has no signature yet
    wanted, cursor = requested(defs, instance, None)
    run_requested(defs, instance, wanted)
    reads = []
    real = corpus_module.file_hash
    monkeypatch.setattr(corpus_module, "file_hash", lambda path: reads.append(path) or real(path))
    source = defs.resolve_assets_def("corpus_files")
    observe([source], instance=instance)
    assert reads == []
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted == {key: [] for key in AUTOMATED}

    faq = next((corpus / "support").glob("*.rst"))
    faq.write_text(faq.read_text() + "\n\nA new paragraph about exporting a workspace.\n")
    observe([source], instance=instance)
    assert reads == [faq]
    wanted, _ = requested(defs, instance, cursor)
    assert wanted == {key: ["support"] for key in AUTOMATED}


def test_a_first_observation_after_a_build_starts_nothing(automated):
    """The daemon evaluates between a run and the next observations (which wait for the run): they
    find the versions the run read, not a change. Without the `documents` and `refined_documents`
    steps recording what they read, these observations redid every collection."""
    defs, instance, _ = automated
    wanted, cursor = requested(defs, instance, None)
    run_requested(defs, instance, wanted)
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted == {key: [] for key in AUTOMATED}
    observe([defs.resolve_assets_def("corpus_files"), defs.resolve_assets_def("feedback_events")],
            instance=instance)
    wanted, _ = requested(defs, instance, cursor)
    assert wanted == {key: [] for key in AUTOMATED}


def test_the_sensor_observes_the_sources_on_their_crons(automated):
    """The sensor's target includes the observable sources: without them, the daemon never
    observes the corpus and nothing reruns by itself."""
    defs, instance, _ = automated
    sensor = defs.resolve_sensor_def("refinery_automation")
    targeted = sensor.asset_selection.resolve(defs.resolve_asset_graph())
    assert {dg.AssetKey("corpus_files"), dg.AssetKey("feedback_events")} <= targeted
    for source in ("corpus_files", "feedback_events"):
        assert "cron" in defs.resolve_assets_def(source).automation_conditions_by_key[dg.AssetKey(source)].get_label()


def test_automation_sensor_runs_by_default_and_reingestion_is_switchable(automated):
    defs, _, _ = automated
    sensor = defs.resolve_sensor_def("refinery_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    schedule = defs.resolve_schedule_def("reingest_all_collections")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 1, 3),
                                   repository_def=defs.get_repository_def()) as ctx:
        requests = schedule.evaluate_tick(ctx).run_requests
    assert sorted(r.partition_key for r in requests) == ["product", "sales", "support"]
