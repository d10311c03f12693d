"""corpus.yaml: every mistake is refused with a message that names it, and the globs select
the files a user expects them to."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_project.core.ingest.corpus import (
    ManifestError,
    RootMissingError,
    load_manifest,
    root_problem,
    scan_collection,
)
from tests.conftest import SAMPLE_MANIFEST, write_manifest


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    return root


def write_raw(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corpus.yaml"
    path.write_text(text)
    return path


def manifest_error(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return str(info.value)


# ------------------------------------------------------------------ errors

def test_missing_manifest(tmp_path):
    message = manifest_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "not found" in message


def test_invalid_yaml(tmp_path, docs):
    message = manifest_error(write_raw(tmp_path, "collections:\n  kb: {root: docs, include: [unclosed\n"))
    assert "not valid YAML" in message and "corpus.yaml" in message


def test_manifest_that_is_not_utf8(tmp_path):
    path = tmp_path / "corpus.yaml"
    path.write_bytes(b"collections:\n  caf\xe9: {root: docs}\n")
    assert "cannot be read" in manifest_error(path)


@pytest.mark.parametrize("text", ["", "other: 1\n", "collections: {}\n", "collections: [kb]\n", "- a\n"])
def test_no_collections(tmp_path, text):
    assert "collections" in manifest_error(write_raw(tmp_path, text))


def test_collection_that_is_not_a_mapping(tmp_path, docs):
    message = manifest_error(write_raw(tmp_path, "collections:\n  kb: docs\n"))
    assert "'kb'" in message and "mapping" in message


def test_unknown_key_is_named(tmp_path, docs):
    path = write_manifest(tmp_path, {"kb": {"root": "docs", "inlcude": ["**/*.md"]}})
    message = manifest_error(path)
    assert "'kb'" in message and "unknown key 'inlcude' (did you mean 'include'?)" in message
    assert "Extra inputs" not in message  # pydantic's words (QA)


def test_a_setting_indented_as_a_collection_says_so(tmp_path, docs):
    message = manifest_error(write_raw(tmp_path, "collections:\n  kb:\n    root: docs\n  include: ['**/*.md']\n"))
    assert "'include' is a collection's setting, not a collection" in message and "indent it" in message


def test_missing_root_is_named(tmp_path):
    message = manifest_error(write_manifest(tmp_path, {"kb": {"include": ["**/*.md"]}}))
    assert "root" in message and "required" in message.lower()


def test_bad_embed_mode_in_defaults(tmp_path, docs):
    path = write_manifest(tmp_path, {"kb": {"root": "docs", "defaults": {"embed_mode": "everything"}}})
    message = manifest_error(path)
    assert "embed_mode" in message
    assert "full" in message and "metadata_only" in message and "skip" in message


def test_unknown_default_field(tmp_path, docs):
    path = write_manifest(tmp_path, {"kb": {"root": "docs", "defaults": {"categroy": "x"}}})
    assert "categroy" in manifest_error(path)


@pytest.mark.parametrize("root", ["missing-dir", "file.md"])
def test_a_root_that_is_not_a_directory_fails_its_collection_only(tmp_path, docs, root):
    """The manifest loads (one unmounted share must not stop every collection); the scan of that
    collection raises, naming it and its root, instead of finding no file (every file deleted)."""
    (tmp_path / "file.md").write_text("# not a folder\n")
    (docs / "a.md").write_text("# A\n")
    manifest = load_manifest(write_manifest(tmp_path, {"kb": {"root": root}, "docs": {"root": "docs"}}))
    with pytest.raises(RootMissingError) as info:
        scan_collection(manifest.collection("kb"), max_file_bytes=10_000)
    assert f"collection 'kb': root {tmp_path / root} is missing or not a directory" in str(info.value)
    assert "mount or restore it" in str(info.value)
    assert root_problem(manifest.collection("kb")) == str(info.value)
    assert [f.path for f in scan_collection(manifest.collection("docs"), max_file_bytes=10_000)] == ["a.md"]
    assert root_problem(manifest.collection("docs")) is None


@pytest.mark.parametrize("name", ["a b", "kb/other", "../up", "kb;drop", ""])
def test_bad_collection_name(tmp_path, docs, name):
    message = manifest_error(write_manifest(tmp_path, {name: {"root": "docs"}}))
    assert "collection name" in message and "letters, digits" in message


@pytest.mark.parametrize("include", [[""], ["  "], [None], "**/*.md"])
def test_bad_globs(tmp_path, docs, include):
    message = manifest_error(write_manifest(tmp_path, {"kb": {"root": "docs", "include": include}}))
    assert "include" in message


def test_name_key_inside_a_collection_is_a_manifest_error(tmp_path, docs):
    path = write_manifest(tmp_path, {"kb": {"root": "docs", "name": "knowledge"}})
    assert "name" in manifest_error(path)


def test_a_collection_listed_twice_is_refused_naming_it(tmp_path, docs):
    path = write_raw(tmp_path, "collections:\n  kb:\n    root: docs\n  faq: {root: docs}\n"
                               "  kb: {root: docs, include: ['**/*.rst']}\n")
    message = manifest_error(path)
    assert "'kb'" in message and "twice" in message and "lines 2 and 5" in message and "corpus.yaml" in message


def test_shared_settings_through_yaml_merge_keys_are_not_duplicates(tmp_path, docs):
    manifest = load_manifest(write_raw(tmp_path, "shared: &shared\n  include: ['**/*.md']\n  defaults: {category: x}\n"
                                                 "collections:\n  kb: {<<: *shared, root: docs}\n"
                                                 "  faq: {<<: *shared, root: docs, include: ['**/*.rst']}\n"))
    assert manifest.collection("kb").include == ["**/*.md"] and manifest.collection("faq").include == ["**/*.rst"]
    assert manifest.collection("faq").defaults.category == "x"


def test_names_that_only_yaml_tells_apart_are_refused_as_the_same_collection(tmp_path, docs):
    message = manifest_error(write_raw(tmp_path, "collections:\n  1: {root: docs}\n  '1': {root: docs}\n"))
    assert "'1'" in message and "twice" in message


def test_roots_outside_the_manifest_folder_are_allowed_and_listed(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "project" / "docs").mkdir(parents=True)
    manifest = load_manifest(write_manifest(tmp_path / "project", {
        "inside": {"root": "docs"}, "outside": {"root": "../elsewhere", "follow_external_symlinks": True}}))
    assert manifest.external_roots() == {"outside": (tmp_path / "elsewhere").resolve()}
    assert manifest.collection("outside").follow_external_symlinks is True
    assert manifest.collection("inside").follow_external_symlinks is False


def test_unknown_collection_lists_the_known_ones(tmp_path, docs):
    manifest = load_manifest(write_manifest(tmp_path, {"kb": {"root": "docs"}, "faq": {"root": "docs"}}))
    with pytest.raises(ManifestError, match=r"no collection 'wiki'.*kb, faq|no collection 'wiki'.*faq, kb"):
        manifest.collection("wiki")


# ------------------------------------------------------------------ globs

def touch(root: Path, *paths: str) -> None:
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {rel}\n\ntext\n")


def selected(tmp_path: Path, include: list[str], exclude: list[str] | None = None) -> list[str]:
    entry = {"root": "docs", "include": include}
    if exclude is not None:
        entry["exclude"] = exclude
    collection = load_manifest(write_manifest(tmp_path, {"kb": entry})).collection("kb")
    return sorted(f.path for f in scan_collection(collection, max_file_bytes=10_000))


TREE = ("top.md", "guide/a.md", "guide/deep/b.md", "guide/c.rst", "drafts/d.md",
        "drafts/deep/e.md", "mydrafts/f.md", "notes.txt")


def test_double_star_matches_files_at_the_root_and_nested(tmp_path, docs):
    touch(docs, *TREE)
    assert selected(tmp_path, ["**/*.md"]) == sorted(
        ["top.md", "guide/a.md", "guide/deep/b.md", "drafts/d.md", "drafts/deep/e.md", "mydrafts/f.md"])


def test_single_star_does_not_match_nested_paths(tmp_path, docs):
    touch(docs, *TREE)
    assert selected(tmp_path, ["*.md"]) == ["top.md"]
    assert selected(tmp_path, ["guide/*.md"]) == ["guide/a.md"]


def test_directory_exclude_drops_everything_below_it_and_nothing_else(tmp_path, docs):
    touch(docs, *TREE)
    assert selected(tmp_path, ["**/*.md", "**/*.txt"], ["drafts/**"]) == sorted(
        ["top.md", "guide/a.md", "guide/deep/b.md", "mydrafts/f.md", "notes.txt"])


def test_default_include_takes_every_supported_format(tmp_path, docs):
    touch(docs, "a.md", "b.rst", "c.txt", "d.html", "e.htm", "f.markdown", "g.csv", "h.py", "i.mdx", "j.adoc",
          "k.asciidoc", "l.ipynb")
    collection = load_manifest(write_manifest(tmp_path, {"kb": {"root": "docs"}})).collection("kb")
    found = sorted(f.path for f in scan_collection(collection, max_file_bytes=10_000))
    assert found == ["a.md", "b.rst", "c.txt", "d.html", "e.htm", "f.markdown", "i.mdx", "j.adoc", "k.asciidoc",
                     "l.ipynb"]


# ------------------------------------------------------------------ the sample

def test_sample_manifest_loads_with_roots_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # roots must not depend on the working directory
    manifest = load_manifest(SAMPLE_MANIFEST)
    assert sorted(manifest.collections) == ["product", "sales", "support"]
    base = SAMPLE_MANIFEST.parent.resolve() / "knowledge_base"
    for name, collection in manifest.collections.items():
        assert collection.root == base / name
        assert collection.root.is_absolute() and collection.root.is_dir()
    support = manifest.collection("support")
    assert support.exclude == ["drafts/**"]
    assert support.defaults.doc_type == "faq"
    assert manifest.collection("sales").defaults.pricing_sensitive is True
    paths = [f.path for f in scan_collection(support, max_file_bytes=10_000_000)]
    assert "status-page-faq.html" in paths and "account-recovery.rst" in paths
    assert not any(p.startswith("drafts/") for p in paths)



def test_a_root_that_vanishes_during_the_scan_is_named(tmp_path, docs, monkeypatch):
    """An unmount in the middle of a scan: the collection's one line, not a bare FileNotFoundError."""
    from dagster_project.core.ingest import corpus

    (docs / "a.md").write_text("# A\n")
    (docs / "guides").mkdir()
    (docs / "guides" / "b.md").write_text("# B\n")
    manifest = load_manifest(write_manifest(tmp_path, {"kb": {"root": "docs"}}))
    real = corpus.file_hash

    def unmount_then_hash(path):
        digest = real(path)
        if docs.exists():
            docs.rename(tmp_path / "unmounted")  # after a.md, before guides/ is listed
        return digest

    monkeypatch.setattr(corpus, "file_hash", unmount_then_hash)
    with pytest.raises(RootMissingError, match=f"collection 'kb': root {docs} is missing"):
        scan_collection(manifest.collection("kb"), max_file_bytes=10_000)
