"""A collection full of files that cannot (or should not) be indexed: each is reported with a
reason a user can act on, none stops the run or hangs it, the good files are searchable, and a
file that breaks after it was indexed keeps its last good version. Also the slips around them:
a huge one-line file (memory), a manifest listing fewer collections, a broken manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project.core.db.store import VectorStore
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from tests.conftest import SAMPLE_MANIFEST, new_database, write_manifest

MAX_FILE_BYTES = 5000

GOOD = {
    "good.md": "# Glacier backups\n\nNightly glacier backups keep thirty days of snapshots in cold storage.\n",
    "guides/nested.md": "# Lantern sync\n\nThe lantern sync daemon retries uploads with exponential backoff.\n",
    "with space.md": "# Spaced name\n\nPelican invoices are archived every quarter by the finance robot.\n",
    "quote's \"name\".md": "# Quoted name\n\nWalrus tickets escalate to tier two after four hours of silence.\n",
    "naïve-ünïcode.md": "# Unicode name\n\nFlamingo exports are written as zstd compressed tarballs.\n",
}
# Parsed with a warning: indexed anyway.
INDEXED_WITH_WARNING = {
    "latin1.md": ("UTF-8", b"# Caf\xe9 rules\n\nOtter receipts use the caf\xe9 ledger template.\n"),
    "empty.md": ("empty", b""),  # a document with no text: it holds nothing searchable
    # Metadata PostgreSQL's jsonb refuses (NaN, NUL) once failed the whole collection's step.
    "nan-front-matter.md": ("not a JSON number", b"---\npriority: .nan\nweight: .inf\n2024: year\n"
                            b"reviewed: 2024-05-01\n---\n# Puffin\n\nPuffin rosters rotate every fortnight.\n"),
    "nul-front-matter.md": ("NUL", b'---\ntitle: "Stork\\0 notes"\n---\n\nStork permits renew each spring.\n'),
    "comment-only.rst": ("no text", b".. a comment and nothing else\n"),
}
# Skipped with a warning: nothing to index.
SKIPPED = {"data.csv": "extension"}
# Symlinked folders that loop back: not entered, reported (under the link's path and a slash).
FOLDER_LOOPS = {"guides/here/": "loops back", "guides/up/": "loops back"}
# Cannot be read or parsed: errors.
ERRORS = {
    "broken-front-matter.md": "front matter",
    "broken-link.md": "broken symlink",
    "loop-a.md": "symlink loop",
    "loop-b.md": "symlink loop",
    "binary.txt": "NUL",
    "big.md": "MAX_FILE_BYTES",
    "pipe.md": "not a regular file (device, socket or pipe): exclude it",
    # 9^4 strings from 200 bytes: enough to show aliases are refused (the real bomb is in test_parsing).
    "alias-bomb.md": "alias",
    "outside-link.md": "outside the collection root",
    "bad\ufffdname.md": "not valid UTF-8",  # its name on disk has the byte 0xff
}
OUTSIDE_SECRET = "Cormorant vault passphrase is hunter2 and must never be indexed.\n"


def build_collection(root: Path) -> None:
    root.mkdir()
    for rel, text in GOOD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    for rel, (_, data) in INDEXED_WITH_WARNING.items():
        (root / rel).write_bytes(data)
    (root / "broken-front-matter.md").write_bytes(
        b"---\ntitle: [unclosed\nowner: : me\n---\n# Heron notes\n\nHeron audits run monthly.\n")
    (root / "data.csv").write_text("plan,price\npro,12\n")
    (root / "broken-link.md").symlink_to(root / "does-not-exist.md")
    (root / "loop-a.md").symlink_to(root / "loop-b.md")
    (root / "loop-b.md").symlink_to(root / "loop-a.md")
    # Directory loops: a symlink to the folder that holds it, and one to the folder above.
    (root / "guides" / "here").symlink_to(".", target_is_directory=True)
    (root / "guides" / "up").symlink_to("..", target_is_directory=True)
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "big.md").write_bytes(b"# Big\n\n" + b"word " * 1200)  # 6007 bytes
    os.mkfifo(root / "pipe.md")
    (root / "alias-bomb.md").write_bytes(
        b"---\na: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        b"d: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n---\n# Bomb\n\nGannet text.\n")
    with open(os.fsencode(root) + b"/bad\xffname.md", "wb") as f:  # PostgreSQL text cannot hold this name
        f.write(b"# Bad name\n\nGrebe text.\n")
    # A link to a file outside the root (think /etc/shadow).
    (root.parent / "secret.md").write_text(OUTSIDE_SECRET)
    (root / "outside-link.md").symlink_to(root.parent / "secret.md")


@pytest.fixture
def collection(tmp_path):
    build_collection(tmp_path / "kb")
    manifest = write_manifest(tmp_path, {"kb": {"root": "kb", "include": ["**/*"]}})
    return load_manifest(manifest).collection("kb")


def ingest(store, collection, embedder):
    return ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(),
                             max_file_bytes=MAX_FILE_BYTES)


def issues(store, embedder) -> dict[str, dict[str, list[str]]]:
    status = store.status(store.model_id(embedder.model))["kb"]
    out: dict[str, dict[str, list[str]]] = {"errors": {}, "warnings": {}}
    for kind in ("errors", "warnings"):
        for issue in status[kind]:
            out[kind].setdefault(issue["path"], []).append(issue["reason"])
    return out


def document_paths(store) -> set[str]:
    with store.reading() as conn:
        return {r[0] for r in conn.execute("SELECT path FROM documents WHERE collection = 'kb'")}


def search_paths(store, embedder, query: str, k: int = 3) -> list[str]:
    vector = embedder.embed([query]).vectors[0]
    return [h.path for h in store.search(store.model_id(embedder.model), embedder.model.dims, vector, k=k)]


def test_hostile_files_are_reported_and_good_files_are_searchable(store, collection):
    assert (collection.root / "big.md").stat().st_size > MAX_FILE_BYTES
    embedder = HashEmbedder()
    reports = ingest(store, collection, embedder)  # returns: no hang on the FIFO or the loops

    found = issues(store, embedder)
    for path, word in ERRORS.items():
        assert path in found["errors"], f"{path} not reported as an error"
        assert any(word in reason for reason in found["errors"][path]), (path, found["errors"][path])
    for path, word in {**SKIPPED, **FOLDER_LOOPS, **{p: w for p, (w, _) in INDEXED_WITH_WARNING.items()}}.items():
        assert path in found["warnings"], f"{path} not reported as a warning"
        assert any(word in reason for reason in found["warnings"][path]), (path, found["warnings"][path])
    # Nothing good is reported, and the directory loop produced no paths at all.
    reported = set(found["errors"]) | set(found["warnings"])
    assert not reported & set(GOOD)
    known = set(GOOD) | set(INDEXED_WITH_WARNING) | set(SKIPPED) | set(ERRORS) | set(FOLDER_LOOPS)
    assert reported | document_paths(store) <= known

    assert document_paths(store) == set(GOOD) | set(INDEXED_WITH_WARNING)
    counts = reports["documents"].counts
    assert counts["new"] == len(GOOD) + len(INDEXED_WITH_WARNING)
    assert counts["failed"] == len(ERRORS) and counts["skipped"] == len(SKIPPED) + len(FOLDER_LOOPS)

    for path, query in [("good.md", "glacier backups snapshots cold storage"),
                        ("guides/nested.md", "lantern sync daemon exponential backoff"),
                        ("with space.md", "pelican invoices archived quarter"),
                        ("quote's \"name\".md", "walrus tickets escalate tier two"),
                        ("naïve-ünïcode.md", "flamingo exports zstd compressed tarballs"),
                        ("latin1.md", "otter receipts ledger template"),
                        ("nan-front-matter.md", "puffin rosters rotate fortnight"),
                        ("nul-front-matter.md", "stork permits renew spring")]:
        assert search_paths(store, embedder, query)[0] == path, query
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM chunks WHERE text LIKE '%%hunter2%%'").fetchone()[0] == 0
        metadata = conn.execute("SELECT metadata FROM documents WHERE path = 'nan-front-matter.md'").fetchone()[0]
    assert metadata == {"priority": "nan", "weight": "inf", "2024": "year", "reviewed": "2024-05-01"}


def test_second_run_over_hostile_files_is_a_no_op(store, collection):
    embedder = HashEmbedder()
    ingest(store, collection, embedder)
    with store.reading() as conn:
        before = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    reports = ingest(store, collection, embedder)
    counts = reports["documents"].counts
    assert counts["new"] == counts["changed"] == counts["deleted"] == 0
    assert counts["unchanged"] == len(GOOD) + len(INDEXED_WITH_WARNING)
    assert reports["chunks"].counts["documents"] == 0
    assert reports["embeddings"].counts["embedded"] == 0
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == before
    # The broken files are still reported.
    assert set(ERRORS) <= set(issues(store, embedder)["errors"])


def test_warnings_of_indexed_files_survive_a_second_run(store, collection):
    embedder = HashEmbedder()
    ingest(store, collection, embedder)
    ingest(store, collection, embedder)
    assert set(INDEXED_WITH_WARNING) <= set(issues(store, embedder)["warnings"])


def test_file_that_breaks_after_indexing_keeps_its_chunks_and_gets_an_error(store, collection):
    embedder = HashEmbedder()
    ingest(store, collection, embedder)
    query = "glacier backups snapshots cold storage"
    assert search_paths(store, embedder, query)[0] == "good.md"
    with store.reading() as conn:
        chunks_before = conn.execute(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = 'good.md'"
        ).fetchall()
    assert chunks_before

    (collection.root / "good.md").write_bytes(b"\x00" * 512)  # e.g. a sync client that zeroed it
    reports = ingest(store, collection, embedder)
    assert reports["documents"].counts["deleted"] == 0
    assert any(i.path == "good.md" and "NUL" in i.reason for i in reports["documents"].errors)
    assert any("NUL" in r for r in issues(store, embedder)["errors"]["good.md"])
    with store.reading() as conn:
        chunks_after = conn.execute(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = 'good.md'"
        ).fetchall()
    assert chunks_after == chunks_before
    assert search_paths(store, embedder, query)[0] == "good.md"


def test_bad_metadata_does_not_block_later_changes_of_the_collection(store, collection):
    """One file with NaN in its front matter once failed the documents step for every file: a
    deleted file stayed searchable and no error was recorded."""
    embedder = HashEmbedder()
    ingest(store, collection, embedder)
    (collection.root / "good.md").unlink()
    (collection.root / "guides" / "nested.md").write_text("# Lantern sync\n\nLantern sync now uses a fixed delay.\n")
    reports = ingest(store, collection, embedder)
    assert reports["documents"].counts["deleted"] == 1 and reports["documents"].counts["changed"] == 1
    assert "good.md" not in document_paths(store)
    assert "good.md" not in search_paths(store, embedder, "glacier backups snapshots cold storage", k=20)
    assert "alias-bomb.md" in issues(store, embedder)["errors"]


def test_symlink_out_of_the_root_is_refused_unless_the_manifest_allows_it(store, tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    (root / "inside.md").write_text("# Inside\n\nHeron audits run monthly.\n")
    (root / "alias.md").symlink_to(root / "inside.md")  # inside the root: indexed once, under inside.md
    (tmp_path / "secret.md").write_text(OUTSIDE_SECRET)
    (root / "outside-link.md").symlink_to(tmp_path / "secret.md")
    embedder = HashEmbedder()

    allowed = load_manifest(write_manifest(tmp_path, {"kb": {"root": "kb", "follow_external_symlinks": True}}))
    ingest(store, allowed.collection("kb"), embedder)
    assert document_paths(store) == {"inside.md", "outside-link.md"}

    # Switched off (the default), the link is refused, and what it published before leaves the index.
    refused = load_manifest(write_manifest(tmp_path, {"kb": {"root": "kb"}}))
    reports = ingest(store, refused.collection("kb"), embedder)
    assert document_paths(store) == {"inside.md"}
    assert reports["documents"].counts["deleted"] == 1
    [reason] = issues(store, embedder)["errors"]["outside-link.md"]
    assert "outside the collection root" in reason and "follow_external_symlinks" in reason
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM chunks WHERE text LIKE '%%hunter2%%'").fetchone()[0] == 0


def test_a_file_symlink_inside_the_root_is_indexed_once_unless_it_is_the_only_way_in(store, tmp_path):
    """QA: a file link inside the root was indexed a second time under its own path, with no word.
    Like a folder link inside the root, it now says its file is indexed under the file's path; a
    link to a file the globs do not select is that file's only way in, and stays indexed."""
    root = tmp_path / "kb"
    (root / "drafts").mkdir(parents=True)
    (root / "a.md").write_text("# A\n\nHeron audits run monthly.\n")
    (root / "link-in.md").symlink_to("a.md")
    (root / "drafts" / "x.md").write_text("# X\n\nOcelot releases ship weekly.\n")
    (root / "published.md").symlink_to("drafts/x.md")
    embedder = HashEmbedder()
    collection = load_manifest(write_manifest(tmp_path, {"kb": {"root": "kb", "exclude": ["drafts/**"]}})).collection("kb")
    ingest(store, collection, embedder)
    assert document_paths(store) == {"a.md", "published.md"}
    [reason] = issues(store, embedder)["warnings"]["link-in.md"]
    assert "indexed under a.md" in reason and "exclude the link" in reason


def test_an_include_of_a_refused_file_says_why_not_that_it_is_missing(store, tmp_path):
    """QA: including a symlink refused for leading out of the root said "not found in the collection
    ... add the file", though the file is there. The warning now names the refusal, and nothing of
    the outside file is indexed; an include of a file the globs exclude says so too."""
    root = tmp_path / "kb"
    (root / "drafts").mkdir(parents=True)
    (tmp_path / "secret.md").write_text(OUTSIDE_SECRET)
    (root / "snip-link.md").symlink_to(tmp_path / "secret.md")
    (root / "drafts" / "wip.md").write_text("Draft words.\n")
    (root / "page.md").write_text("# Page\n\nHeron audits.\n\n{% include_relative snip-link.md %}\n\n"
                                  "{% include_relative drafts/wip.md %}\n")
    embedder = HashEmbedder()
    collection = load_manifest(write_manifest(tmp_path, {"kb": {"root": "kb", "exclude": ["drafts/**"]}})).collection("kb")
    ingest(store, collection, embedder)
    warnings = issues(store, embedder)["warnings"]["page.md"]
    assert any("'snip-link.md' left out: snip-link.md is a symlink out of the collection root: refused" in w
               for w in warnings), warnings
    assert any("'drafts/wip.md' left out: drafts/wip.md is not selected by the collection's include/exclude globs"
               in w for w in warnings), warnings
    assert not any("not found" in w for w in warnings)
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM chunks WHERE text LIKE '%%hunter2%%'").fetchone()[0] == 0


# ------------------------------------------------------------------ CLI

@pytest.mark.parametrize("manifest, named", [
    ({"kb": {"root": "docs", "inlcude": ["**/*.md"]}}, ("inlcude", "'kb'")),
    # safe_load keeps the second of two equal keys: the first collection would silently vanish.
    ("collections:\n  kb: {root: docs}\n  other: {root: docs}\n  kb: {root: docs, exclude: [x]}\n",
     ("'kb'", "twice", "lines 2 and 4")),
])
def test_cli_refuses_a_broken_manifest_before_writing_anything(tmp_path, manifest, named):
    (tmp_path / "docs").mkdir()
    if isinstance(manifest, str):
        bad = tmp_path / "corpus.yaml"
        bad.write_text(manifest)
    else:
        bad = write_manifest(tmp_path, manifest)
    home = tmp_path / "refinery-home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME", "CORPUS_MANIFEST")}
    env.update(REFINERY_HOME=str(home), EMBED_PROVIDER="hash")
    result = subprocess.run(
        [sys.executable, "-m", "dagster_project.cli", "ingest", "--manifest", str(bad), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("refinery: ")
    assert all(word in lines[0] for word in named), lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not home.exists() or list(home.iterdir()) == []
    assert not (tmp_path / ".refinery").exists()


# ------------------------------------------------------------------ memory

ONE_LINE_BYTES = 3_000_000
MAX_RSS_MB = 400  # measured: 132 MB with the bounds, 755 MB without (the tokenizer counting the line whole)
# The peak RSS of this process image (VmHWM): getrusage's ru_maxrss keeps, across exec, the
# peak of the pytest process that spawned it, so a large test process made this test fail.
INGEST_AND_MEASURE = """
import json, sys

def max_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024

from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.pipeline import ingest_collection
from dagster_project.core.db.store import VectorStore

store = VectorStore(sys.argv[1])
reports = ingest_collection(store, load_manifest(sys.argv[2]).collection("kb"), embedder=HashEmbedder(),
                            chunk_settings=ChunkSettings(), max_file_bytes=20_000_000)
store.close()
print(json.dumps({"chunks": reports["chunks"].counts["chunks"], "errors": len(reports["documents"].errors),
                  "max_rss_mb": max_rss_mb()}))
"""


def test_a_long_one_line_file_is_ingested_in_memory_bounded_by_its_size(db_url, tmp_path):
    """Issue 12 §11: a 19.5 MB one-line file took 3.6 GB (5.7 GB through ingest_collection; now
    277 MB): the tokenizer counted the line whole. Here a 3 MB line, in a process of its own,
    whose peak RSS must stay under MAX_RSS_MB."""
    (tmp_path / "kb").mkdir()
    words = ("ledger", "otter", "glacier", "invoice", "lantern", "a", "backoff", "quarterly")
    line = " ".join(words[(i * 7919) % len(words)] + str(i % 97) for i in range(ONE_LINE_BYTES // 8))
    (tmp_path / "kb" / "one-line.txt").write_text(line[:ONE_LINE_BYTES] + "\n")
    manifest = write_manifest(tmp_path, {"kb": {"root": "kb"}})
    result = subprocess.run([sys.executable, "-c", INGEST_AND_MEASURE, db_url, str(manifest)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print(measured)
    assert measured["errors"] == 0 and measured["chunks"] > ONE_LINE_BYTES // 2000
    assert measured["max_rss_mb"] < MAX_RSS_MB, measured


def refinery(env, *args) -> dict:
    result = subprocess.run([sys.executable, "-m", "dagster_project.cli", *args, "--json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_a_manifest_listing_fewer_collections_deletes_nothing_until_refinery_prune(pg_server, db_url, tmp_path):
    """Issue 12 §2: an ingest with a manifest that lacked two collections (or the default one,
    --manifest forgotten) deleted their documents, chunks and vectors, and said `deleted: 0`."""
    shutil.copytree(SAMPLE_MANIFEST.parent, tmp_path / "examples")
    full = load_manifest(tmp_path / "examples" / SAMPLE_MANIFEST.name)
    store = VectorStore(db_url)
    try:
        for name in ("sales", "support"):
            ingest_collection(store, full.collection(name), embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                              max_file_bytes=10_000_000)
        before = store.collections_outside(["product"])
    finally:
        store.close()
    assert set(before) == {"sales", "support"} and before["sales"]["documents"] == 3
    assert all(c["chunks"] > 0 and c["vectors"] > 0 for c in before.values())
    # A manifest of its own folder, listing only `product` (a root outside that folder).
    (tmp_path / "other").mkdir()
    product_only = write_manifest(tmp_path / "other", {"product": {"root": "../examples/knowledge_base/product"}})
    env = {k: v for k, v in os.environ.items() if k not in ("CORPUS_MANIFEST", "LLM_MODEL", "OPENAI_API_KEY")}
    env.update(DATABASE_URL=db_url, DAGSTER_PG_URL=new_database(pg_server, template="template1"),
               DAGSTER_HOME=str(tmp_path / "dagster_home"), REFINERY_HOME=str(tmp_path / "home"),
               EMBED_PROVIDER="hash")
    manifest = ("--manifest", str(product_only))

    ingested = refinery(env, "ingest", *manifest)
    assert ingested["documents"]["new"] == 6 and ingested["collections"]["product"]["success"]
    assert ingested["not_in_manifest"] == before  # nothing of the others was deleted
    status = refinery(env, "status", *manifest)
    assert status["not_in_manifest"] == before
    assert status["collections"]["product"]["root_outside_manifest_folder"] is True

    plan = refinery(env, "prune", "--dry-run", *manifest)
    assert plan["dry_run"] is True and plan["collections"] == before
    assert refinery(env, "status", *manifest)["not_in_manifest"] == before  # the dry run deleted nothing

    pruned = refinery(env, "prune", *manifest)
    assert pruned["collections"] == before
    assert refinery(env, "status", *manifest)["not_in_manifest"] == {}
    store = VectorStore(db_url)
    try:
        with store.reading() as conn:
            left = conn.execute("SELECT DISTINCT collection FROM chunks").fetchall()
        assert left == [("product",)]
        assert store.consistency("product", None, "").orphan_vectors == 0
    finally:
        store.close()
