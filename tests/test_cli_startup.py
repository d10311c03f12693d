"""What `refinery ingest` pays before and around its run: the supervisor process of a job command
loads no library (the child loads them once)."""

import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

HEAVY = ("dagster", "psycopg", "openai", "numpy", "pydantic", "sqlalchemy")

SUPERVISOR = f"""
import sys
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
