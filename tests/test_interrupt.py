"""Ctrl-C on `refinery ingest`, as a terminal sends it (SIGINT to the whole process group) in the
middle of a run: one line that says what was kept, exit code 130, no traceback; a rerun finishes
the job without redoing what was stored."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

from tests.conftest import PROJECT_ROOT, new_database, write_manifest

PEPS_USED = 300  # enough that chunking runs for a while on 2 cores


def test_ctrl_c_mid_ingest_prints_one_line_and_a_rerun_finishes(pg_server, peps_dir, tmp_path):
    corpus = tmp_path / "peps"
    corpus.mkdir()
    for path in sorted(peps_dir.glob("pep-*.rst"))[:PEPS_USED]:
        shutil.copy(path, corpus / path.name)
    env = dict(os.environ, DATABASE_URL=new_database(pg_server),
               DAGSTER_PG_URL=new_database(pg_server, template="template1"),
               DAGSTER_HOME=str(tmp_path / "dagster_home"), REFINERY_HOME=str(tmp_path / "home"),
               EMBED_PROVIDER="hash",
               CORPUS_MANIFEST=str(write_manifest(tmp_path, {"peps": {"root": "peps", "include": ["*.rst"]}})))
    command = [sys.executable, "-m", "dagster_project.cli", "ingest"]

    # Its own session, like a shell job: the SIGINT below reaches every process of the group.
    proc = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    stderr: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while not any("documents chunked" in line for line in stderr):  # documents stored, chunking under way
            assert proc.poll() is None and time.monotonic() < deadline, "".join(stderr)
            try:
                stderr.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)  # the reader thread drains what is left
    while not lines.empty():
        stderr.append(lines.get())
    text = "".join(stderr)

    assert proc.returncode == 130, text
    assert "Traceback" not in text and "DagsterExecutionInterruptedError" not in text, text
    said = [line for line in stderr if not line.startswith("peps: ")]  # the progress lines aside
    assert len(said) == 1 and said[0].startswith("refinery: stopped by SIGINT: run "), text
    assert "canceled and its pool slots freed; kept " in said[0]
    assert "run `refinery ingest` again to finish the job" in said[0]
    kept_documents = int(said[0].split("kept ")[1].split(" documents")[0])
    assert kept_documents > 0

    rerun = subprocess.run([*command, "--json"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["documents"]["unchanged"] == kept_documents  # parsed once, not again
    status = json.loads(subprocess.run([sys.executable, "-m", "dagster_project.cli", "status", "--json"], env=env,
                                       cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120).stdout)
    peps = status["collections"]["peps"]
    assert peps["documents"] == PEPS_USED - len(peps["errors"]) and peps["chunks"] == peps["vectors"] > 0
