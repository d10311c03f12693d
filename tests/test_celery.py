"""The Celery executor for real: a redis-server from Debian's package as the broker, a
`dagster-celery` worker process, and the two shards of a collection ingested as two runs at once
whose steps the worker executes; the index is the one a single in-process shard builds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST, new_database, write_manifest
from tests.test_shards import TABLES, ingest_in_parallel, snapshot

REDIS = shutil.which("redis-server")


def ingest_job():
    """The ingest job as the worker rebuilds it (same environment: manifest, database, executor)."""
    from dagster_project.definitions import INGEST_JOB, build_definitions

    return build_definitions().resolve_job_def(INGEST_JOB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """End a process we started and everything it started (its own session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def celery_env(pg_server, tmp_path, monkeypatch):
    if REDIS is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (pip install '.[celery]')")
    port = free_port()
    redis = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, start_new_session=True)
    root = tmp_path / "kb"
    shutil.copytree(SAMPLE_MANIFEST.parent / "knowledge_base", root)
    (tmp_path / "dagster_home").mkdir()
    env = {"DATABASE_URL": new_database(pg_server), "EMBED_PROVIDER": "hash", "RUN_EXECUTOR": "celery",
           "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0", "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "CORPUS_MANIFEST": str(write_manifest(tmp_path, {"kb": {"root": str(root), "shards": 2}})),
           "REFINERY_HOME": str(tmp_path / "home"), "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "ignore",
           # `dagster-celery worker start` runs `celery` from the PATH: the venv's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("LLM_MODEL", "OPENAI_API_KEY", "CHUNK_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    celery = Path(sys.executable).with_name("dagster-celery")
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen([str(celery), "worker", "start", "-A", "dagster_celery.app",
                                   "-y", str(PROJECT_ROOT / "deploy" / "celery" / "celery.yaml")],
                                  env=os.environ.copy(), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, f"worker did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield env, root, log
    finally:
        stop(worker)
        stop(redis)


def run_shard(key: str) -> None:
    """One run of the ingest job for `key`, as a launched run executes it: its own process, the
    instance in DAGSTER_HOME, the executor RUN_EXECUTOR names. Prints what the test checks."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(ingest_job), instance=instance, tags={"dagster/partition": key})
        print(json.dumps({
            "success": result.success,
            "failures": [e.message for e in result.all_events if e.is_step_failure],
            "on_celery": sorted({e.step_key for e in result.all_events if e.event_type_value == "ENGINE_EVENT"
                                 and "Submitting celery task" in (e.message or "")}),
            "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()}}))


def test_two_shards_run_on_a_celery_worker_and_build_the_index_of_one(celery_env, pg_server, tmp_path):
    env, root, log = celery_env
    runs = [subprocess.Popen([sys.executable, "-m", "tests.test_celery", key], cwd=PROJECT_ROOT,
                             env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for key in ("kb/0", "kb/1")]  # at once: both runs' steps wait in the one queue
    for run in runs:
        try:
            out, err = run.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            run.kill()
            pytest.fail(f"a run did not finish in 10 minutes; worker log:\n{log.read_text()[-3000:]}")
        assert run.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["success"], (result["failures"], log.read_text()[-3000:])
        assert result["on_celery"] == ["chunks", "documents", "embeddings"]  # every step went through the broker
        assert result["checks"] and all(result["checks"].values()), result["checks"]
    assert log.read_text().count("Task execute_plan[") >= 6  # received and succeeded by the worker

    from dagster_project.core.settings import Settings
    from dagster_project.project import Project

    one = new_database(pg_server)  # the same files as one shard, in process, with the job's chunk settings
    ingest_in_parallel(one, write_manifest(tmp_path / "dagster_home", {"kb": {"root": str(root)}}),
                       Project.load(Settings.from_env()).chunk_settings)
    expected, got = snapshot(one), snapshot(env["DATABASE_URL"])
    for table in TABLES:
        assert got[table] == expected[table], table
    assert len(got["documents"]) == sum(1 for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    run_shard(sys.argv[1])
