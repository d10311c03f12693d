"""`python -m dagster_project.cli`: the `refinery` command."""

import sys

from .main import main

sys.exit(main())
