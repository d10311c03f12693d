"""The embedded PostgreSQL under any REFINERY_HOME a user may pick: a path with a space works, one
the server's start-up shell cannot take is refused up front, and a start that fails for a reason
other than damage never advises deleting the data directory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import SAMPLE_MANIFEST, enterable, refinery


@pytest.fixture
def workdir():
    path = enterable(Path(tempfile.mkdtemp(prefix="refinery-paths-")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")}
    env.update(REFINERY_HOME=str(home), CORPUS_MANIFEST=str(SAMPLE_MANIFEST), EMBED_PROVIDER="hash")
    return env


def test_a_home_whose_path_holds_a_space_ingests_and_searches(workdir):
    home = workdir / "my corpus (v2)" / "home"
    env = _env(home)
    ingested = refinery(env, "ingest", "--json")
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    hits = refinery(env, "search", "refund policy", "--json")
    assert hits.returncode == 0, hits.stderr
    assert json.loads(hits.stdout), "search found nothing"
    assert (home / "pgdata" / "PG_VERSION").exists()


def test_a_home_the_servers_shell_would_misread_is_refused_with_what_to_do(workdir):
    home = workdir / "price$tag" / "home"
    result = refinery(_env(home), "status")
    assert result.returncode == 2
    assert "REFINERY_HOME" in result.stderr and "choose a path without it" in result.stderr
    assert "delete" not in result.stderr


def test_a_start_that_fails_without_damage_never_advises_deleting_the_data(workdir):
    env = _env(workdir / "home")
    assert refinery(env, "status").returncode == 0  # the server is built, then stops with the command
    with open(workdir / "home" / "pgdata" / "postgresql.auto.conf", "a") as conf:
        conf.write("shared_buffers = 'plenty'\n")  # an operator's typo: the data is intact
    result = refinery(env, "status")
    assert result.returncode == 2 and "did not start" in result.stderr
    assert "shared_buffers" in result.stderr  # the log's line that says why
    assert "delete" not in result.stderr and "keep the directory" in result.stderr
