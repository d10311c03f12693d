"""Symlinked folders in a collection: one outside the root is refused with an error that says
what to do, or entered (once, without loops) with follow_external_symlinks: true; one inside
the root is not entered (its files are indexed under their own path) and says so. Nothing is
skipped silently: every folder not entered is in the ingest's report and in `refinery status`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from tests.conftest import new_database, refinery, write_manifest


def build(tmp_path: Path) -> Path:
    """kb/ (the root) with a real folder and a link to it; outside/ with two links to it from
    kb/, and inside outside/ a loop (to the folder holding kb) and a link back into kb/."""
    root, outside = tmp_path / "kb", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    (root / "real" / "inner.md").write_text("# Inner\n\nHeron audits run monthly in the real folder.\n")
    (root / "alias").symlink_to("real", target_is_directory=True)
    (outside / "sub").mkdir(parents=True)
    (outside / "ext.md").write_text("# External\n\nOcelot releases ship from the external folder.\n")
    (outside / "sub" / "deep.md").write_text("# Deep\n\nPangolin notes live two levels down.\n")
    (outside / "up").symlink_to("..", target_is_directory=True)  # holds kb/: a loop
    (outside / "back").symlink_to(root / "real", target_is_directory=True)
    (root / "extdir").symlink_to(outside, target_is_directory=True)
    (root / "more").symlink_to(outside, target_is_directory=True)
    (root / "skipme").symlink_to(outside, target_is_directory=True)
    return root


def ingest(store, tmp_path: Path, **settings):
    manifest = write_manifest(tmp_path, {"kb": {"root": "kb", "exclude": ["skipme/**"], **settings}})
    collection = load_manifest(manifest).collection("kb")
    return ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                             max_file_bytes=10**6)["documents"]


def state(store) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """(indexed paths, {reported path: (severity, reason)}) as `refinery status` reads them."""
    with store.reading() as conn:
        paths = {r[0] for r in conn.execute("SELECT path FROM documents WHERE collection = 'kb'")}
    status = store.status(store.model_id(HashEmbedder().model))["kb"]
    issues = {i["path"]: (kind, i["reason"]) for kind in ("errors", "warnings") for i in status[kind]}
    return paths, issues


def test_folder_symlinks_without_follow_external_symlinks(store, tmp_path):
    build(tmp_path)
    report = ingest(store, tmp_path)
    paths, issues = state(store)
    assert paths == {"real/inner.md"}
    assert set(issues) == {"alias/", "extdir/", "more/"}  # skipme/ is excluded: silent
    kind, reason = issues["extdir/"]
    assert kind == "errors" and "outside the collection root" in reason
    assert "follow_external_symlinks: true" in reason and str(tmp_path / "outside") in reason
    kind, reason = issues["alias/"]
    assert kind == "warnings" and "indexed under real/" in reason and "exclude the link" in reason
    assert {i.path: i.severity for i in report.issues} == {"alias/": "warning", "extdir/": "error", "more/": "error"}
    assert report.counts["failed"] == 2 and report.counts["skipped"] == 1


def test_a_link_to_the_roots_parent_is_outside_the_root_not_a_loop(store, tmp_path):
    """QA: `up -> ..` in the root was reported as a loop (a warning); it leads outside the root, so
    without follow_external_symlinks it is refused like any outside folder (an error)."""
    root = build(tmp_path)
    (root / "up").symlink_to("..", target_is_directory=True)
    ingest(store, tmp_path)
    kind, reason = state(store)[1]["up/"]
    assert kind == "errors" and "outside the collection root: refused" in reason
    ingest(store, tmp_path, follow_external_symlinks=True)  # allowed out, it is a loop: not entered
    kind, reason = state(store)[1]["up/"]
    assert kind == "warnings" and "loops back" in reason


def test_folder_symlinks_with_follow_external_symlinks(store, tmp_path):
    root = build(tmp_path)
    ingest(store, tmp_path, follow_external_symlinks=True)
    paths, issues = state(store)
    # The outside folder is indexed once, under the first link's path; its loop is not entered.
    assert paths == {"real/inner.md", "extdir/ext.md", "extdir/sub/deep.md"}
    assert {p: k for p, (k, _) in issues.items()} == {
        "alias/": "warnings", "extdir/back/": "warnings", "extdir/up/": "warnings", "more/": "warnings"}
    assert "loops back" in issues["extdir/up/"][1] and "indexed under extdir/" in issues["more/"][1]

    # A rerun changes nothing; removing the link removes its files and its reports.
    assert ingest(store, tmp_path, follow_external_symlinks=True).counts["unchanged"] == 3
    os.unlink(root / "more")
    (root / "extdir").unlink()
    ingest(store, tmp_path, follow_external_symlinks=True)
    paths, issues = state(store)
    assert paths == {"real/inner.md"} and set(issues) == {"alias/"}


def test_cli_ingest_json_and_status_name_the_refused_folder(pg_server, tmp_path):
    build(tmp_path)
    manifest = write_manifest(tmp_path, {"kb": {"root": "kb", "exclude": ["skipme/**"]}})
    env = {**os.environ, "DATABASE_URL": new_database(pg_server),
           "DAGSTER_PG_URL": new_database(pg_server, template="template1"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "REFINERY_HOME": str(tmp_path / "refinery_home"),
           "EMBED_PROVIDER": "hash", "CORPUS_MANIFEST": str(manifest)}
    ingested = refinery(env, "ingest", "--json")
    report = json.loads(ingested.stdout)
    assert {e["path"] for e in report["errors"]} == {"extdir/", "more/"}, ingested.stderr
    status = refinery(env, "status")
    assert "extdir/" in status.stdout and "follow_external_symlinks" in status.stdout
    assert "alias/" in status.stdout
