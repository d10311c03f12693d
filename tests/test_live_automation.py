"""Automation as deployed: `refinery dev` (webserver + daemon, embedded PostgreSQL, hash embedder)
with a one-minute observe cron. Nobody launches a run: the daemon builds every collection, then
an edit and a deletion in one collection reach search by themselves, and no other collection
is ingested again. (tests/test_automation.py evaluates the same conditions in process.)"""

from __future__ import annotations

import json
import shutil
import time

from tests.conftest import PROJECT_ROOT
from tests.dev_server import Server, refinery_dev

COLLECTIONS = ("product", "sales", "support")
SOURCES = {"corpus_files", "feedback_events"}  # observed, one run per collection, every minute
# The initial build of three collections on a loaded 2-core machine, then the next cron minute,
# an observation run and one collection's update.
INITIAL_BUILD_TIMEOUT = 420
UPDATE_TIMEOUT = 360
EDIT = "Exports to the Quillfeather archive format keep every page's revision history."
DELETED_TEXT = "Spell check underlines every word on Windows on ARM"

RUNS = """{ runsOrError(limit: 500) { ... on Runs { results {
    runId status creationTime tags { key value } assetSelection { path } } } } }"""


def _runs(server: Server) -> list[dict]:
    runs = server.graphql(RUNS)["runsOrError"]["results"]
    for run in runs:
        run["partition"] = next((t["value"] for t in run["tags"] if t["key"] == "dagster/partition"), None)
        run["assets"] = {"/".join(a["path"]) for a in run["assetSelection"] or []}
    return runs


def _materializing_runs(server: Server, collection: str) -> list[dict]:
    return [r for r in _runs(server) if r["partition"] == collection and r["assets"] - SOURCES]


def _search(server: Server, query: str) -> list[str]:
    result = server.refinery("search", query, "--mode", "text", "--collection", "support", "--k", "10", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return [hit["path"] for hit in json.loads(result.stdout)]


def _wait(server: Server, what: str, timeout: float, done) -> float:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            server.fail(f"after {timeout:.0f}s, still waiting for {what}; runs: "
                        f"{[(r['partition'], sorted(r['assets']), r['status']) for r in _runs(server)][:20]}")
        time.sleep(3)
    return time.monotonic() - start


def test_the_running_daemon_observes_the_corpus_and_updates_only_the_changed_collection(tmp_path):
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    support = tmp_path / "examples" / "knowledge_base" / "support"
    with refinery_dev("automation", tmp_path / "examples" / "corpus.yaml", AUTOMATION_SENSOR_DEFAULT="running",
                      CORPUS_OBSERVE_CRON="* * * * *", FEEDBACK_OBSERVE_CRON="* * * * *",
                      AUTOMATION_INTERVAL_SECONDS="5") as server:
        def built() -> bool:
            runs = {c: _materializing_runs(server, c) for c in COLLECTIONS}
            failed = [r for rs in runs.values() for r in rs if r["status"] in ("FAILURE", "CANCELED")]
            if failed:
                server.fail(f"an automation run failed: {failed[0]}")
            return all(rs and all(r["status"] == "SUCCESS" for r in rs) for rs in runs.values())

        _wait(server, "the daemon's first build of every collection", INITIAL_BUILD_TIMEOUT, built)
        first_runs = {c: {r["runId"] for r in _materializing_runs(server, c)} for c in COLLECTIONS}
        assert "known-issues.txt" in _search(server, DELETED_TEXT)
        assert _search(server, "Quillfeather") == []

        edited = support / "import-export.rst"
        edited.write_text(edited.read_text() + f"\n\n{EDIT}\n")
        (support / "known-issues.txt").unlink()
        seconds = _wait(server, "search to serve the edit and drop the deleted file", UPDATE_TIMEOUT,
                        lambda: _search(server, "Quillfeather") == ["import-export.rst"]
                        and "known-issues.txt" not in _search(server, DELETED_TEXT))
        print(f"\nedit to searchable through the daemon: {seconds:.0f} s")

        for collection in ("product", "sales"):  # observed every minute, never updated again
            assert {r["runId"] for r in _materializing_runs(server, collection)} == first_runs[collection]
        assert len(_materializing_runs(server, "support")) > len(first_runs["support"])


def test_a_collection_added_to_the_manifest_while_dev_runs_is_built_by_the_daemon(tmp_path):
    """The collections are the code location's partitions, read when it loads: `refinery dev`
    reloads it when corpus.yaml changes, so the daemon builds a collection added meanwhile."""
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    manifest = tmp_path / "examples" / "corpus.yaml"
    full = manifest.read_text()
    # Start with support only: product is added while the server runs.
    manifest.write_text(full.split("  product:")[0] + "  support:" + full.split("  support:")[1].split("  sales:")[0])
    with refinery_dev("automation-added", manifest, AUTOMATION_SENSOR_DEFAULT="running",
                      CORPUS_OBSERVE_CRON="* * * * *", FEEDBACK_OBSERVE_CRON="* * * * *",
                      AUTOMATION_INTERVAL_SECONDS="5") as server:
        def built(collection: str):
            def done() -> bool:
                runs = _materializing_runs(server, collection)
                failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
                if failed:
                    server.fail(f"an automation run failed: {failed[0]}")
                return bool(runs) and all(r["status"] == "SUCCESS" for r in runs)
            return done

        _wait(server, "the daemon's first build of support", INITIAL_BUILD_TIMEOUT, built("support"))
        manifest.write_text(full.split("  sales:")[0])  # product and support
        seconds = _wait(server, "the daemon to build the added collection", UPDATE_TIMEOUT, built("product"))
        print(f"\ncollection added to searchable through the daemon: {seconds:.0f} s")
        result = server.refinery("search", "offline", "--collection", "product", "--mode", "text", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout), "the added collection is not searchable"
        assert "changed: code location reloaded" in server.log.read_text()
