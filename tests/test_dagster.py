"""End to end through Dagster: the `refinery` CLI materializes the ingestion assets against a
Postgres-backed instance, so the runs, their metadata and check results are in Dagster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from dagster_project.core.db.pg import dagster_storage_url
from tests.conftest import PROJECT_ROOT, SAMPLE_MANIFEST, new_database, refinery


@pytest.fixture
def cli_env(pg_server, tmp_path):
    env = dict(os.environ)
    env.update(
        DATABASE_URL=new_database(pg_server),
        DAGSTER_PG_URL=new_database(pg_server, template="template1"),
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        REFINERY_HOME=str(tmp_path / "refinery_home"),
        EMBED_PROVIDER="hash",
        CORPUS_MANIFEST=str(SAMPLE_MANIFEST),
    )
    return env


def test_definitions_load_with_partitions_per_collection():
    from dagster_project.definitions import defs

    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("ingest")
    assert sorted(job.partitions_def.get_partition_keys()) == ["product", "sales", "support"]
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert keys == {"corpus_files", "documents", "chunks", "embeddings", "active_embedding_model", "refined_documents", "feedback_events",
                    "feedback_views", "metric_snapshots"}
    # (Where the snapshot job's days start: tests/test_catalog.py.)


def test_cli_ingest_runs_through_dagster_and_reruns_as_a_no_op(cli_env):
    first = refinery(cli_env, "ingest", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["documents"] == {"new": 14, "changed": 0, "unchanged": 0, "deleted": 0}
    assert report["embedded"] > 100 and report["reused"] == 0
    assert all(c["checks"] and all(c["checks"].values()) for c in report["collections"].values())

    second = json.loads(refinery(cli_env, "ingest", "--json").stdout)
    assert second["embedded"] == 0 and second["reused"] == report["embedded"]
    assert second["documents"]["unchanged"] == 14

    # The runs and their metadata live in the Dagster instance the UI reads.
    os.environ["DAGSTER_PG_URL"] = dagster_storage_url(cli_env["DAGSTER_PG_URL"])
    try:
        with dg.DagsterInstance.from_config(str(PROJECT_ROOT)) as instance:
            runs = instance.get_runs()
            assert len(runs) == 6 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            event = instance.get_latest_materialization_event(dg.AssetKey("embeddings"))
            assert event is not None and event.asset_materialization.partition in {"product", "sales", "support"}
            metadata = event.asset_materialization.metadata
            assert metadata["texts_embedded"].value == 0 and metadata["reused"].value > 0
    finally:
        del os.environ["DAGSTER_PG_URL"]

    status = json.loads(refinery(cli_env, "status", "--json").stdout)
    product = status["collections"]["product"]
    assert product["documents"] == 6 and product["chunks"] == product["vectors"] > 0
    assert product["errors"] == []

    hits = json.loads(refinery(cli_env, "search", "recovery codes for a locked account", "--k", "3",
                               "--collection", "support", "--json").stdout)
    assert len(hits) == 3 and {"path", "heading_path", "text", "score", "legs", "passages"} <= hits[0].keys()
    assert all(h["collection"] == "support" for h in hits)
    assert len({h["path"] for h in hits}) == 3 and all(1 <= len(h["passages"]) <= 3 for h in hits)
    chunks = json.loads(refinery(cli_env, "search", "recovery codes for a locked account", "--k", "3", "--chunks",
                                 "--collection", "support", "--json").stdout)
    assert len(chunks) == 3 and "passages" not in chunks[0]


def test_dry_run_reports_exact_work_and_writes_nothing(cli_env):
    plan = json.loads(refinery(cli_env, "ingest", "--dry-run", "--json").stdout)
    assert plan["dry_run"] is True and plan["documents"]["new"] == 14
    real = json.loads(refinery(cli_env, "ingest", "--json").stdout)
    assert plan["embedded"] == real["embedded"]
    again = json.loads(refinery(cli_env, "ingest", "--dry-run", "--json").stdout)
    assert again["embedded"] == 0 and again["documents"]["unchanged"] == 14


def test_db_url_masks_the_password(cli_env):
    cli_env["DATABASE_URL"] = "postgresql://writer:s3cr3t-pw@db.invalid:5432/refinery"
    out = refinery(cli_env, "db-url")
    # The URL is not reachable; db-url prints it without connecting.
    assert "s3cr3t-pw" not in out.stdout + out.stderr
    assert "writer:***@db.invalid" in out.stdout


def test_cli_refine_through_dagster_with_a_model_then_cached(cli_env, fake_openai):
    from tests.test_refine import valid_answer

    fake_openai.chat_responder = valid_answer
    assert refinery(cli_env, "ingest", "--collection", "support", "--json").returncode == 0
    cli_env.update(LLM_MODEL="gpt-4o-mini", OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test-cli-000000")

    check = json.loads(refinery(cli_env, "llm-check", "--json").stdout)
    assert check["models"][0]["ok"] is True and check["chain"] == ["gpt-4o-mini", "extractive"]

    plan = json.loads(refinery(cli_env, "refine", "--collection", "support", "--dry-run", "--json").stdout)
    assert plan["would_refine"] == 5 and plan["prompt_tokens"] > 0 and plan["estimated_usd"]["gpt-4o-mini"] > 0
    calls_before = len(fake_openai.chat_requests)
    assert calls_before == 1  # the dry run called nothing; the one call is llm-check's

    done = refinery(cli_env, "refine", "--collection", "support", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["refined"] == 5 and report["quarantined"] == 0
    assert sum(report["by_link"].values()) == 5 and report["by_link"].get("primary", 0) >= 1
    assert report["cost_usd"] > 0
    assert report["collections"]["support"]["checks"] == {"every_document_refined": True}

    again = json.loads(refinery(cli_env, "refine", "--collection", "support", "--json").stdout)
    assert again["refined"] == 0 and again["skipped"] == 5
    assert len(fake_openai.chat_requests) == calls_before + report["collections"]["support"]["llm_calls"]

    status = json.loads(refinery(cli_env, "status", "--json").stdout)
    assert status["collections"]["support"]["refined"] == 5
    assert "sk-test-cli" not in done.stdout + done.stderr


def test_cli_shows_progress_as_a_bar_on_a_terminal_and_as_lines_in_a_pipe(cli_env):
    import pty
    import threading

    command = [sys.executable, "-m", "dagster_project.cli", "ingest", "--collection", "support", "--json"]
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    on_terminal = subprocess.run(command, env=cli_env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=slave,
                                 timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    terminal = b"".join(chunks).decode()
    assert on_terminal.returncode == 0, terminal
    assert json.loads(on_terminal.stdout)["documents"]["new"] == 5  # stdout stays clean JSON
    # Each bar is redrawn in place (carriage return, bar, clear to end of line) and ends done.
    assert "\r[########################] support: texts embedded: " in terminal
    assert "\r[########################] support: files parsed: 5/5 (100%)" in terminal
    assert "\x1b[K" in terminal

    in_pipe = refinery(cli_env, "ingest", "--json")  # stderr is a pipe
    assert in_pipe.returncode == 0, in_pipe.stderr
    lines = in_pipe.stderr.splitlines()
    assert "\r" not in in_pipe.stderr and "\x1b" not in in_pipe.stderr
    # Only the new collections have work: files to parse, documents to chunk, texts to embed.
    assert any(line.startswith("product: files parsed: 6/6 (100%) in ") for line in lines), lines
    assert any(line.startswith("sales: texts embedded: ") for line in lines), lines
    assert not any(line.startswith("support:") for line in lines), lines


def test_cli_pools_sets_the_limits_from_the_settings(cli_env):
    cli_env.update(EMBEDDING_POOL_LIMIT="3", LLM_POOL_LIMIT="1")
    shown = refinery(cli_env, "pools", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"embedding_api": {"limit": 3, "running": 0, "waiting": 0},
                                        "llm_api": {"limit": 1, "running": 0, "waiting": 0}}
    cli_env["EMBEDDING_POOL_LIMIT"] = "2"
    assert json.loads(refinery(cli_env, "pools", "--json").stdout)["embedding_api"]["limit"] == 2
