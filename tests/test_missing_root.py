"""A collection whose root folder disappears (an unmounted share, a renamed folder): only that
collection fails, saying so; nothing of it leaves the index; the other collections' commands,
observations and runs go on; when the root comes back, the next run changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import dagster as dg
import psycopg
import pytest
from dagster._core.definitions.observe import observe

from tests.conftest import PROJECT_ROOT, new_database, refinery


def held(db_url: str, collection: str) -> dict[str, int]:
    """What the index holds of a collection: documents, chunks, and vectors of its chunks."""
    with psycopg.connect(db_url) as conn:
        documents, chunks, vectors = conn.execute(
            "SELECT (SELECT count(*) FROM documents WHERE collection = %(c)s), "
            "(SELECT count(*) FROM chunks WHERE collection = %(c)s), "
            "(SELECT count(*) FROM embeddings e WHERE e.content_hash IN "
            "   (SELECT content_hash FROM chunks WHERE collection = %(c)s))", {"c": collection}).fetchone()
    return {"documents": documents, "chunks": chunks, "vectors": vectors}


@pytest.fixture
def cli_env(pg_server, tmp_path):
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    return {**os.environ, "DATABASE_URL": new_database(pg_server),
            "DAGSTER_PG_URL": new_database(pg_server, template="template1"),
            "DAGSTER_HOME": str(tmp_path / "dagster_home"), "REFINERY_HOME": str(tmp_path / "refinery_home"),
            "EMBED_PROVIDER": "hash", "CORPUS_MANIFEST": str(tmp_path / "examples" / "corpus.yaml")}


def test_a_missing_root_fails_only_its_collection_and_deletes_nothing(cli_env, tmp_path):
    assert refinery(cli_env, "ingest", "--json").returncode == 0
    before = held(cli_env["DATABASE_URL"], "sales")
    assert before["documents"] == 3 and before["chunks"] > 0 and before["vectors"] > 0
    sales = tmp_path / "examples" / "knowledge_base" / "sales"
    sales.rename(sales.with_name("sales.bak"))
    edited = tmp_path / "examples" / "knowledge_base" / "product" / "search.md"
    edited.write_text(edited.read_text() + "\n\nSaved searches can be pinned to the sidebar.\n")

    ingest = refinery(cli_env, "ingest", "--json")
    assert ingest.returncode == 1, ingest.stderr
    report = json.loads(ingest.stdout)
    failure = report["collections"]["sales"]["failures"]
    assert len(failure) == 1 and "'sales'" in failure[0] and str(sales) in failure[0] and "mount or restore" in failure[0]
    assert report["collections"]["sales"]["documents"]["deleted"] == 0
    assert report["collections"]["product"]["documents"]["changed"] == 1
    assert report["collections"]["product"]["failures"] == report["collections"]["support"]["failures"] == []
    assert held(cli_env["DATABASE_URL"], "sales") == before
    hits = json.loads(refinery(cli_env, "search", "enterprise volume discount approval", "--collection", "sales",
                               "--k", "3", "--json").stdout)
    assert len(hits) == 3 and all(h["collection"] == "sales" for h in hits)

    # Every command that names another collection, or none, works; the missing root is named.
    status = refinery(cli_env, "status")
    assert status.returncode == 0, status.stderr
    assert f"error   collection 'sales': root {sales} is missing" in status.stdout
    collections = json.loads(refinery(cli_env, "status", "--json").stdout)["collections"]
    assert collections["sales"]["documents"] == 3 and str(sales) in collections["sales"]["root_problem"]
    assert collections["product"]["root_problem"] is None and collections["product"]["documents"] == 6
    prune = refinery(cli_env, "prune", "--dry-run", "--json")
    assert prune.returncode == 0 and json.loads(prune.stdout)["collections"] == {}, prune.stderr
    assert refinery(cli_env, "ingest", "--collection", "product", "--json").returncode == 0
    refine = refinery(cli_env, "refine", "--collection", "product", "--dry-run", "--json")
    assert refine.returncode == 0, refine.stderr
    plan = refinery(cli_env, "ingest", "--dry-run", "--json")
    assert plan.returncode == 1
    plans = json.loads(plan.stdout)["collections"]
    assert plans["sales"]["failures"] == failure and plans["support"]["documents"]["unchanged"] == 5
    alone = refinery(cli_env, "ingest", "--dry-run", "--collection", "sales")
    assert alone.returncode == 1 and f"FAILED: collection 'sales': root {sales} is missing" in alone.stdout
    assert held(cli_env["DATABASE_URL"], "sales") == before

    # Back: a no-change run.
    sales.with_name("sales.bak").rename(sales)
    again = refinery(cli_env, "ingest", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["documents"] == {"new": 0, "changed": 0, "unchanged": 14, "deleted": 0} and report["embedded"] == 0
    assert held(cli_env["DATABASE_URL"], "sales") == before


def test_an_emptied_root_or_globs_that_select_nothing_delete_nothing(cli_env, tmp_path):
    """The mount point an unmounted share leaves behind is an empty folder, and an `include:` a
    manifest edit broke selects no file: either would have read as every file deleted."""
    assert refinery(cli_env, "ingest", "--json").returncode == 0
    before = held(cli_env["DATABASE_URL"], "sales")
    sales = tmp_path / "examples" / "knowledge_base" / "sales"
    sales.rename(sales.with_name("sales.bak"))
    sales.mkdir()  # the empty mount point
    ingest = refinery(cli_env, "ingest", "--json")
    assert ingest.returncode == 1, ingest.stderr
    report = json.loads(ingest.stdout)["collections"]
    assert len(report["sales"]["failures"]) == 1 and "holds no file the manifest selects, where 3 documents are " \
        "indexed" in report["sales"]["failures"][0] and "refinery prune" in report["sales"]["failures"][0]
    assert report["sales"]["documents"]["deleted"] == 0 and report["support"]["failures"] == []
    assert held(cli_env["DATABASE_URL"], "sales") == before
    sales.rmdir()
    sales.with_name("sales.bak").rename(sales)

    manifest = tmp_path / "examples" / "corpus.yaml"
    text = manifest.read_text()
    assert 'include: ["**/*.md", "**/*.html"]' in text
    manifest.write_text(text.replace('include: ["**/*.md", "**/*.html"]', "include: ['*.nothing']", 1))
    ingest = refinery(cli_env, "ingest", "--collection", "sales", "--json")
    assert ingest.returncode == 1 and "holds no file the manifest selects" in ingest.stdout, ingest.stdout
    assert held(cli_env["DATABASE_URL"], "sales") == before


@pytest.fixture
def automated(project_env, tmp_path):
    return dg.DagsterInstance.ephemeral(), tmp_path / "examples" / "knowledge_base"


def definitions():
    """The code location as a run or the daemon loads it: anew, from the manifest as it is now."""
    from dagster_project.definitions import build_definitions
    from dagster_project.project import Project

    return build_definitions(Project.load())


def observed(instance, partition: str) -> dg.AssetObservation:
    record = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("corpus_files"), asset_partitions=[partition]), limit=1).records[0]
    return record.asset_observation


def failed_partitions(instance, asset: str) -> list[str]:
    """The partitions the UI's Partitions view shows as failed."""
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.storage.partition_status_cache import get_partition_subsets

    partitions = dg.StaticPartitionsDefinition(["product", "sales", "support"])
    _, failed, _ = asyncio.run(get_partition_subsets(instance, LoadingContextForTest(instance), dg.AssetKey(asset),
                                                     instance, partitions))
    return sorted(failed.get_partition_keys())


def test_the_automation_goes_on_for_the_other_collections(automated, db_url):
    from tests.test_automation import requested, run_requested

    instance, corpus = automated
    defs = definitions()
    wanted, cursor = requested(defs, instance, None)
    run_requested(defs, instance, wanted)
    observe([defs.resolve_assets_def("corpus_files")], instance=instance)
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted["documents"] == []
    before = held(db_url, "sales")
    sales_version = observed(instance, "sales").data_version
    (corpus / "sales").rename(corpus / "sales.bak")
    (corpus / "product" / "search.md").write_text("# Search\n\nSearch now understands quoted phrases.\n")

    # The sensor's runs: one observation per collection, each with the code location loaded anew.
    defs = definitions()
    source = defs.resolve_assets_def("corpus_files")
    runs = [observe([source], instance=instance, partition_key=p, raise_on_error=False)
            for p in ("product", "sales", "support")]
    # A failed observation run would leave the partition "Failed" after later observations succeed.
    assert failed_partitions(instance, "corpus_files") == []
    assert all(run.success for run in runs)
    missing = observed(instance, "sales")
    # Its last version, with the problem: nothing of sales runs (it would fail, and delete nothing).
    assert missing.data_version == sales_version and "mount or restore" in missing.metadata["problem"].value
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted == {key: ["product"] for key in wanted}
    job = dg.Definitions.merge(defs, dg.Definitions(jobs=[dg.define_asset_job(
        "documents_only", selection=dg.AssetSelection.assets("documents", "chunks", "embeddings"))])
    ).resolve_job_def("documents_only")
    assert job.execute_in_process(partition_key="product", instance=instance).success
    # Run by hand (Materialize in the UI): it fails saying why, and deletes nothing.
    failed = job.execute_in_process(partition_key="sales", instance=instance, raise_on_error=False)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    assert f"root {corpus / 'sales'} is missing" in failure.step_failure_data.user_failure_data.description
    assert held(db_url, "sales") == before
    assert failed_partitions(instance, "documents") == ["sales"]

    # Back: the same version, so nothing is asked for; the next run changes nothing.
    (corpus / "sales.bak").rename(corpus / "sales")
    assert observe([source], instance=instance, partition_key="sales").success
    assert observed(instance, "sales").data_version == sales_version
    wanted, cursor = requested(defs, instance, cursor)
    assert wanted["documents"] == []
    result = job.execute_in_process(partition_key="sales", instance=instance)
    documents = result.asset_materializations_for_node("documents")[0].metadata
    assert (documents["new"].value, documents["changed"].value, documents["deleted"].value) == (0, 0, 0)
    assert held(db_url, "sales") == before
    assert failed_partitions(instance, "documents") == failed_partitions(instance, "corpus_files") == []


PARTITION_STATS = """query($key: AssetKeyInput!) { assetNodes(assetKeys: [$key]) {
    partitionStats { numFailed numMaterialized } } }"""


def test_the_running_daemon_goes_on_while_a_root_is_missing(tmp_path):
    """As deployed (`refinery dev`, the daemon on a one-minute observe cron): with sales' folder
    gone, an edit in support still reaches search, and sales' observations succeed, say why and
    start nothing; once the folder is back, nothing in the UI is marked failed."""
    from tests.dev_server import refinery_dev
    from tests.test_live_automation import (
        COLLECTIONS,
        EDIT,
        INITIAL_BUILD_TIMEOUT,
        SOURCES,
        UPDATE_TIMEOUT,
        _materializing_runs,
        _runs,
        _search,
        _wait,
    )

    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    corpus = tmp_path / "examples" / "knowledge_base"
    with refinery_dev("automation-missing-root", tmp_path / "examples" / "corpus.yaml",
                      AUTOMATION_SENSOR_DEFAULT="running", CORPUS_OBSERVE_CRON="* * * * *",
                      FEEDBACK_OBSERVE_CRON="* * * * *", AUTOMATION_INTERVAL_SECONDS="5") as server:
        def since(moment: float, collection: str, observations: bool) -> list[dict]:
            runs = [r for r in _runs(server) if r["partition"] == collection and r["creationTime"] > moment]
            return [r for r in runs if bool(r["assets"] - SOURCES) != observations]

        def observed_since(moment: float) -> bool:
            """No run failed, none of sales ran but observations, and one of those succeeded."""
            failed = [r for r in _runs(server) if r["status"] == "FAILURE"]
            if failed or since(moment, "sales", observations=False):
                server.fail(f"a run failed or sales ran: {(failed or since(moment, 'sales', observations=False))[0]}")
            return any(r["status"] == "SUCCESS" for r in since(moment, "sales", observations=True))

        def built() -> bool:
            runs = {c: _materializing_runs(server, c) for c in COLLECTIONS}
            return all(rs and all(r["status"] == "SUCCESS" for r in rs) for rs in runs.values())

        _wait(server, "the daemon's first build of every collection", INITIAL_BUILD_TIMEOUT, built)
        removed = time.time()
        (corpus / "sales").rename(corpus / "sales.bak")
        edited = corpus / "support" / "import-export.rst"
        edited.write_text(edited.read_text() + f"\n\n{EDIT}\n")
        _wait(server, "sales observed without its folder, and support's edit in search", UPDATE_TIMEOUT,
              lambda: observed_since(removed) and _search(server, "Quillfeather") == ["import-export.rst"])
        assert f"corpus_files - collection 'sales': root {corpus / 'sales'} is missing" in server.log.read_text()
        status = json.loads(server.refinery("status", "--json").stdout)["collections"]["sales"]
        assert status["documents"] == 3 and "is missing" in status["root_problem"]
        hits = server.refinery("search", "enterprise volume discount", "--collection", "sales", "--json")
        assert hits.returncode == 0 and len(json.loads(hits.stdout)) == 3, hits.stderr[-2000:]

        restored = time.time()
        (corpus / "sales.bak").rename(corpus / "sales")
        _wait(server, "sales observed with its folder back", UPDATE_TIMEOUT, lambda: observed_since(restored))
        for asset in ("corpus_files", "documents"):
            stats = server.graphql(PARTITION_STATS, {"key": {"path": [asset]}})["assetNodes"][0]["partitionStats"]
            assert stats["numFailed"] == 0, (asset, stats)
        status = json.loads(server.refinery("status", "--json").stdout)["collections"]["sales"]
        assert status["documents"] == 3 and status["root_problem"] is None
