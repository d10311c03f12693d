"""`python -m dagster_project.cli`: the `refinery` command (and the child a job command runs in)."""

import gc
import sys

from .main import main

code = main()
# The process ends next: the interpreter's last garbage collection would walk every object that
# Dagster and the run left behind (measured: 8 s after an empty ingest's output, at load 12) only
# to free memory the exit frees anyway. Exit handlers still run.
gc.freeze()
sys.exit(code)
