"""What `refinery ingest` pays before and around its run: the supervisor process of a job command
loads no library (the child loads them once)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT, new_database, write_manifest

HEAVY = ("dagster", "psycopg", "openai", "numpy", "pydantic", "sqlalchemy")

SUPERVISOR = f"""
import sys
from pathlib import Path
from dagster_project.cli.main import main
code = main(["ingest", "--help"])
print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}), "CODE", code)
"""


def test_supervisor_of_a_job_command_imports_no_library():
    env = {k: v for k, v in os.environ.items() if k != "REFINERY_SUPERVISED"}
    done = subprocess.run([sys.executable, "-c", SUPERVISOR], env={**env, "PYTHONPATH": str(PROJECT_ROOT)},
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: refinery ingest" in done.stdout  # the child parsed the arguments and answered
    assert "HEAVY [] CODE 0" in done.stdout, done.stdout


FORK_SERVER_STATE = """
import multiprocessing, sys
from pathlib import Path
from dagster_project.core.ingest.corpus import SourceFile
from dagster_project.core.ingest.pipeline import parse_files

def binary_libraries(answer):
    answer.send(sorted(m for m in ("pypdfium2", "docx", "pptx") if m in sys.modules))

if __name__ == "__main__":
    files = [SourceFile(path=f"page{i}.md", abs_path=Path(f"page{i}.md"), data=f"# Page {i}\\n\\nSome text.".encode())
             for i in range(40)]
    parsed = parse_files(files, workers=2)  # enough files for the worker pool, forked from the fork server
    assert all(p.title for p in parsed), parsed
    context = multiprocessing.get_context("forkserver")
    mine, theirs = context.Pipe()
    process = context.Process(target=binary_libraries, args=(theirs,))  # forked from the same server
    process.start()
    print("LOADED", mine.recv())
    process.join()
"""


def test_fork_server_loads_no_binary_format_library_for_a_text_corpus(tmp_path):
    script = tmp_path / "fork_server_state.py"
    script.write_text(FORK_SERVER_STATE)
    done = subprocess.run([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout


def test_a_job_command_run_beside_another_checkout_runs_the_installed_code(pg_server, tmp_path):
    """`refinery ingest` started in a folder that holds another `dagster_project/` (an old clone,
    a worktree) runs the installed package, in its child and in its parse workers: `python -m`
    put the current folder first on sys.path, and the index flipped between parser versions by
    the folder it was run from (QA)."""
    decoy = tmp_path / "checkout" / "dagster_project"
    decoy.mkdir(parents=True)
    marker = tmp_path / "decoy-imported"
    (decoy / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):  # enough files for the pool of parse workers
        (docs / f"page{i}.md").write_text(f"# Page {i}\n\nThe walrus counts invoice number {i}.\n")
    manifest = write_manifest(tmp_path, {"pages": {"root": str(docs)}})
    env = {k: v for k, v in os.environ.items() if k not in ("REFINERY_SUPERVISED", "PYTHONPATH")}
    env.update(DATABASE_URL=new_database(pg_server), DAGSTER_PG_URL=new_database(pg_server, template="template1"),
               DAGSTER_HOME=str(tmp_path / "dagster_home"), REFINERY_HOME=str(tmp_path / "home"),
               EMBED_PROVIDER="hash", CORPUS_MANIFEST=str(manifest))
    refinery = Path(sys.executable).with_name("refinery")  # the installed console script
    done = subprocess.run([str(refinery), "ingest", "--json"], env=env, cwd=decoy.parent, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "the copy in the current folder was imported"
    assert json.loads(done.stdout)["documents"]["new"] == 30
