"""Shared set-up for the benchmarks: a throwaway embedded PostgreSQL and fresh databases."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import psycopg

warnings.filterwarnings("ignore")

from dagster_project.core.db.migrations import migrate  # noqa: E402
from dagster_project.core.db.pg import _with_database, start_embedded  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PEPS = PROJECT_ROOT.parent / "shared" / "corpora" / "peps"
_names = itertools.count()


@contextmanager
def embedded_server():
    home = Path(tempfile.mkdtemp(prefix="refinery-bench-"))
    try:
        yield start_embedded(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def fresh_database(server_url: str, migrated: bool = True) -> str:
    name = f"bench_{next(_names)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    if migrated:
        migrate(url)
    return url


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def print_table(title: str, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for n, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))
