"""Scale behaviour on a real PostgreSQL: file hashing streamed, unchanged files known by their
stat signature without being read (and every real change still seen), parsed documents stored
batch by batch while the next batch parses."""

from __future__ import annotations

import os
import time

import psycopg

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest import pipeline
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import RACY_SECONDS, load_manifest, scan_collection
from dagster_project.core.ingest.hashing import content_hash
from dagster_project.core.ingest.pipeline import ingest_collection, sync_documents
from tests.conftest import write_manifest

MAX = 10_000_000


def make_corpus(tmp_path, files: int = 6):
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(files):
        (root / f"doc{i:02d}.md").write_text(f"# Title {i}\n\nParagraph {i} about shards and scale.\n")
    return root, load_manifest(write_manifest(tmp_path, {"docs": {"root": "docs"}})).collection("docs")


def ingest(store, collection):
    return ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                             max_file_bytes=MAX)


def test_scan_streams_hashes_and_trusts_an_unchanged_signature_without_reading(tmp_path):
    root, collection = make_corpus(tmp_path, 2)
    time.sleep(RACY_SECONDS + 0.1)
    files = {f.path: f for f in scan_collection(collection, MAX)}
    assert all(f.data is None for f in files.values())  # no file's bytes kept by the scan
    first = files["doc00.md"]
    assert first.content_hash == content_hash((root / "doc00.md").read_bytes()) and first.signature is not None
    # A stored hash under the same signature is taken as is: the file is not read again.
    planted = b"\x01" * 32
    again = {f.path: f for f in scan_collection(collection, MAX, {"doc00.md": (first.signature, planted)})}
    assert again["doc00.md"].content_hash == planted
    # A file written just now has no signature yet: its timestamps could still hide a change.
    (root / "doc01.md").write_text("# Fresh\n\nJust written.\n")
    assert {f.path: f for f in scan_collection(collection, MAX)}["doc01.md"].signature is None


def test_no_change_rerun_records_signatures_and_still_sees_an_edit_that_hides_its_mtime(store, tmp_path):
    root, collection = make_corpus(tmp_path)
    ingest(store, collection)
    assert store.file_signatures("docs") == {}  # all written within the racy window
    time.sleep(RACY_SECONDS + 0.1)
    report = sync_documents(store, collection, max_file_bytes=MAX)
    assert report.counts["unchanged"] == 6
    assert len(store.file_signatures("docs")) == 6

    # Same size, mtime put back (what cp -p or rsync -t leave): only ctime tells.
    target = root / "doc03.md"
    info = target.stat()
    target.write_text(target.read_text().replace("shards", "SHARDS"))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert target.stat().st_size == info.st_size and target.stat().st_mtime_ns == info.st_mtime_ns
    time.sleep(RACY_SECONDS + 0.1)  # past the racy window too: the signature alone must tell
    reports = ingest(store, collection)
    assert reports["documents"].counts["changed"] == 1 and reports["documents"].counts["unchanged"] == 5
    with store.reading() as conn:
        text = conn.execute("SELECT text FROM chunks c JOIN documents d ON d.id = c.document_id "
                            "WHERE d.path = 'doc03.md'").fetchone()[0]
    assert "SHARDS" in text


def test_parsed_documents_are_stored_batch_by_batch_during_parsing(store, db_url, tmp_path, monkeypatch):
    root, collection = make_corpus(tmp_path, 10)
    (root / "broken.md").write_bytes(b"\xff\xfe\x00 not text")
    (tmp_path / "gone.md").write_text("x")
    monkeypatch.setattr(pipeline, "PARSE_TX_FILES", 2)
    stored_while_parsing = []

    def progress(done, total):
        if done == total - 1:
            with psycopg.connect(db_url) as conn:
                stored_while_parsing.append(conn.execute("SELECT count(*) FROM documents").fetchone()[0])

    report = sync_documents(store, collection, max_file_bytes=MAX, progress=progress)
    assert stored_while_parsing and stored_while_parsing[0] >= 2  # earlier batches already committed
    assert report.counts["new"] == 10
    first_issues = store.status(None)["docs"]["errors"] + store.status(None)["docs"]["warnings"]
    assert [i["path"] for i in first_issues] == ["broken.md"]  # its batch's issue kept
    (root / "doc04.md").unlink()
    report = sync_documents(store, collection, max_file_bytes=MAX)
    assert report.counts["deleted"] == 1 and report.counts["unchanged"] == 9
    assert len(store.document_versions("docs")) == 9
