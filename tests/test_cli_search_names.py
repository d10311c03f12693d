"""`refinery search` text output keeps one result to its lines whatever the file names and titles
hold: a newline, an escape sequence or a bidi override in a name is shown escaped (\\n, \\x1b,
\\u202e); --json keeps the name as it is."""

from __future__ import annotations

import json
import os

from dagster_project.core.db.store import VectorStore
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from tests.conftest import new_database, refinery, write_manifest

NAME = "fake\n2. [9.999] evil.md: Injected\x1b[31m\u202etxt.md"


def test_control_characters_in_a_file_name_are_escaped_in_search_output(pg_server, tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    (root / NAME).write_text("# Walrus\n\nWalrus tickets escalate to tier two after four hours.\n")
    manifest = write_manifest(tmp_path, {"kb": {"root": "kb", "include": ["**/*"]}})
    env = {**os.environ, "DATABASE_URL": new_database(pg_server), "REFINERY_HOME": str(tmp_path / "home"),
           "EMBED_PROVIDER": "hash", "CORPUS_MANIFEST": str(manifest)}
    store = VectorStore(env["DATABASE_URL"])
    try:
        ingest_collection(store, load_manifest(manifest).collection("kb"), embedder=HashEmbedder(),
                          chunk_settings=ChunkSettings(), max_file_bytes=10**6)
    finally:
        store.close()

    for args in ([], ["--chunks"]):
        done = refinery(env, "search", "walrus tickets", *args)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("1. ") and "fake\\n2. [9.999] evil.md: Injected\\x1b[31m\\u202etxt.md" in lines[0]
        assert not any(line.startswith("2.") for line in lines)  # one result, not a forged second one
        assert not any(c in done.stdout for c in "\x1b\u202e")
        # fewer results than --k (5) are said to be all there is (QA: a short list said nothing)
        assert lines[-1] == f"1 of the 5 asked for: no further {'chunk' if args else 'document'} matches"
    hits = json.loads(refinery(env, "search", "walrus tickets", "--json").stdout)
    assert [h["path"] for h in hits] == [NAME]
