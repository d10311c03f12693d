"""Dagster's current tooling loads the project: `dg check defs` (dagster-dg-cli, configured by
pyproject's [tool.dg]) validates the one Definitions that `refinery dev` serves."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def test_dg_check_defs_loads_the_definitions(tmp_path):
    dg = Path(sys.executable).with_name("dg")
    # An empty DAGSTER_HOME: a throwaway instance, so no database is needed to check definitions.
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run([str(dg), "check", "defs"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "All definitions loaded successfully" in output
