"""A `refinery dev` killed during a run (kill -9 of every process it started: what a reboot or
the OOM killer does) leaves no run that blocks its collection: started again, it marks the dead
run failed, and the daemon builds the collection. Before, the dead run stayed STARTED for ever,
and every later run of that collection waited behind it in the queue (one run per collection)."""

from __future__ import annotations

import shutil
import signal
import time

import psutil

from tests.conftest import PROJECT_ROOT
from tests.dev_server import dev_workdir, refinery_dev, run_status
from tests.test_live_automation import COLLECTIONS, INITIAL_BUILD_TIMEOUT, _materializing_runs, _runs, _wait

SETTINGS = dict(AUTOMATION_SENSOR_DEFAULT="running", AUTOMATION_INTERVAL_SECONDS="5",
                CORPUS_OBSERVE_CRON="* * * * *", FEEDBACK_OBSERVE_CRON="* * * * *")
RUNS_WITH_TAGS = """{ runsOrError(limit: 500) { ... on Runs { results { runId status tags { key value } } } } }"""


def _kill_everything_but_postgres(proc) -> None:
    """SIGKILL `refinery dev` and every process under it (dg dev, webserver, daemon, code server,
    run workers and their step processes); the embedded PostgreSQL runs in a session of its own."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for process in family:
        try:
            if not process.name().startswith("postgres"):
                process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs([p for p in family if p.is_running()], timeout=30)
    proc.wait(timeout=30)


def test_a_killed_refinery_dev_leaves_no_run_that_blocks_its_collection(tmp_path):
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    manifest = tmp_path / "examples" / "corpus.yaml"
    workdir = dev_workdir()
    try:
        with refinery_dev("dev-killed", manifest, workdir=workdir, **SETTINGS) as server:
            def a_run_in_progress_with_its_worker() -> str | None:
                for run in server.graphql(RUNS_WITH_TAGS)["runsOrError"]["results"]:
                    tags = {t["key"]: t["value"] for t in run["tags"]}
                    if run["status"] == "STARTED" and "refinery/pid" in tags and "dagster/partition" in tags:
                        return run["runId"]
                return None

            _wait(server, "a daemon run whose worker has tagged it", INITIAL_BUILD_TIMEOUT,
                  lambda: a_run_in_progress_with_its_worker() is not None)
            ghost = a_run_in_progress_with_its_worker()
            tags = next({t["key"]: t["value"] for t in r["tags"]}
                        for r in server.graphql(RUNS_WITH_TAGS)["runsOrError"]["results"] if r["runId"] == ghost)
            worker, collection = int(tags["refinery/pid"]), tags["dagster/partition"]
            _kill_everything_but_postgres(server.proc)
            assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        restarted = time.time()
        with refinery_dev("dev-killed-restarted", manifest, workdir=workdir, **SETTINGS) as server:
            status = run_status(server, ghost)
            assert status == "FAILURE", f"the dead run is {status} after the restart"
            assert "marked failed" in server.log.read_text()

            def rebuilt() -> bool:  # the dead run's collection: a run of it after the restart, and all built
                new = [r for r in _runs(server) if r["partition"] == collection and r["creationTime"] > restarted]
                runs = {c: _materializing_runs(server, c) for c in COLLECTIONS}
                return any(r["status"] == "SUCCESS" for r in new) and all(
                    any(r["status"] == "SUCCESS" for r in rs) for rs in runs.values())

            seconds = _wait(server, f"a successful run of {collection} after the restart", INITIAL_BUILD_TIMEOUT, rebuilt)
            print(f"\nbuilt {seconds:.0f} s after the restart; runs: "
                  f"{[(r['partition'], r['status']) for r in _runs(server)][:12]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
