"""A `refinery dev` killed during a run (kill -9 of every process it started: what a reboot or
the OOM killer does), or only a run's worker, leaves no run that blocks its collection: started
again, or at the sensor's next tick, it marks the dead run failed, and the daemon builds the
collection. Before, the dead run stayed STARTED for ever, and every later run of that collection
waited behind it in the queue (one run per collection)."""

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


def _a_run_in_progress_with_its_worker(server) -> tuple[str, int, str] | None:
    """(run id, run worker's pid, collection) of a daemon run whose first step has tagged it."""
    for run in server.graphql(RUNS_WITH_TAGS)["runsOrError"]["results"]:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        if run["status"] == "STARTED" and "refinery/pid" in tags and "dagster/partition" in tags:
            return run["runId"], int(tags["refinery/pid"]), tags["dagster/partition"]
    return None


def test_a_run_worker_killed_while_refinery_dev_runs_is_failed_by_the_sensor(tmp_path):
    """The run worker dies with the code server that started it (the OOM killer, a killed
    process group), while `refinery dev` and its daemon stay up. `dg dev` starts a new code
    server only on a reload, so the location stayed unreachable for good: no run started and no
    sensor ticked (measured: 5 minutes, until the test gave up). `refinery dev` now reloads it once
    it is unreachable twice in a row, the refinery_dead_runs sensor (every minute) ends the run
    whose worker is gone (a live code server reports its dead workers itself; this one is gone),
    and the daemon builds the collection again."""
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    with refinery_dev("dev-worker-killed", tmp_path / "examples" / "corpus.yaml", **SETTINGS) as server:
        _wait(server, "a daemon run whose worker has tagged it", INITIAL_BUILD_TIMEOUT,
              lambda: _a_run_in_progress_with_its_worker(server) is not None)
        ghost, worker, collection = _a_run_in_progress_with_its_worker(server)
        code_server = psutil.Process(worker).parent()
        assert "grpc" in " ".join(code_server.cmdline()), code_server.cmdline()
        family = [code_server, psutil.Process(worker), *psutil.Process(worker).children(recursive=True)]
        for process in family:
            process.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=30)
        killed = time.time()
        _wait(server, "the dead run marked failed by the sensor", 300, lambda: run_status(server, ghost) == "FAILURE")
        assert "the code server was unreachable (it died): started a new one" in server.log.read_text()

        def rebuilt() -> bool:
            new = [r for r in _runs(server) if r["partition"] == collection and r["creationTime"] > killed]
            return any(r["status"] == "SUCCESS" for r in new)

        _wait(server, f"a successful run of {collection} after the kill", INITIAL_BUILD_TIMEOUT, rebuilt)


def test_a_killed_refinery_dev_leaves_no_run_that_blocks_its_collection(tmp_path):
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    manifest = tmp_path / "examples" / "corpus.yaml"
    workdir = dev_workdir()
    try:
        with refinery_dev("dev-killed", manifest, workdir=workdir, **SETTINGS) as server:
            _wait(server, "a daemon run whose worker has tagged it", INITIAL_BUILD_TIMEOUT,
                  lambda: _a_run_in_progress_with_its_worker(server) is not None)
            ghost, worker, collection = _a_run_in_progress_with_its_worker(server)
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
