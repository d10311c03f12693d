"""A documentation site as users have them (front matter, shortcodes, shared includes) on a real
PostgreSQL, embedded through the fake OpenAI server over real HTTP: what a page says of itself in
its front matter is found, includes stay exactly incremental, results are documents."""

from __future__ import annotations

import pytest

from dagster_project.core.embed.openai_embedder import OpenAIEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.hashing import content_hash
from dagster_project.core.ingest.pipeline import ingest_collection
from tests.conftest import write_manifest

SETTINGS = ChunkSettings(max_tokens=128, overlap_tokens=16)
PAGES = {
    "_common/install-note.md": "---\n_comment: Do not remove front matter.\n---\n\n"
                               "Prebuilt binaries are signed with the walrus release key.\n",
    "install/linux.md": "---\ntitle: Linux\ndescription: Install the tool on Linux.\n---\n\n"
                        "Use your distribution's package manager.\n\n{{% include \"/_common/install-note.md\" %}}\n",
    "install/macos.md": "---\ntitle: macOS\ndescription: Install the tool on a Mac.\n---\n\n"
                        "Use Homebrew.\n\n{{% include \"_common/install-note.md\" %}}\n",
    "install/_index.md": "---\ntitle: Installation\ndescription: Lighthouse keepers install the beacon here.\n---\n",
    "functions/truncate.md": "---\ntitle: strings.Truncate\ndescription: Shortens a string to a maximum length "
                             "without cutting words in half.\n---\n\n```go\n{{ truncate 10 .Content }}\n```\n\n"
                             "{{< new-in 0.120.0 >}}\n",
    "guide/long.md": "---\ntitle: A long guide\n---\n\n" + "\n\n".join(
        f"## Part {i}\n\nThe storm barometer reading number {i} is recorded in the ledger." for i in range(30)),
    "guide/short.md": "---\ntitle: Storms\n---\n\nA storm barometer warns of storms.\n",
}


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    for path, text in PAGES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root, write_manifest(tmp_path, {"docs": {"root": "site", "include": ["**/*.md"]}})


@pytest.fixture
def embedder(fake_openai):
    return OpenAIEmbedder(model="fake-embed", dims=64, api_key="sk-test-key-0000", base_url=fake_openai.base_url)


def run(store, manifest, embedder, fake):
    before = len(fake.embedding_inputs)
    reports = ingest_collection(store, load_manifest(manifest).collection("docs"), embedder=embedder,
                                chunk_settings=SETTINGS, max_file_bytes=10_000_000)
    return reports, [text for request in fake.embedding_inputs[before:] for text in request]


def chunks_of(store, path: str) -> list[str]:
    with store.reading() as conn:
        return [r[0] for r in conn.execute(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = %s "
            "ORDER BY c.ordinal", (path,))]


def documents(store, embedder, text: str, mode: str, k: int = 5, passages: int = 3):
    vector = embedder.embed([text]).vectors[0]
    return store.search_documents(store.model_id(embedder.model), embedder.model.dims, vector, k=k,
                                  mode=mode, query_text=text, passages=passages)


def test_front_matter_is_searchable_and_templating_is_not(store, site, embedder, fake_openai):
    _, manifest = site
    run(store, manifest, embedder, fake_openai)
    # A page with only front matter has its description as a chunk and is found by it.
    assert chunks_of(store, "install/_index.md") == ["Lighthouse keepers install the beacon here."]
    assert [d.path for d in documents(store, embedder, "lighthouse keepers beacon", "text")][:1] == ["install/_index.md"]
    # The description is a passage of its own, before the body; markup is nowhere.
    assert chunks_of(store, "functions/truncate.md")[0] == ("Shortens a string to a maximum length without "
                                                           "cutting words in half.")
    assert [d.path for d in documents(store, embedder, "maximum length without cutting words", "text")][:1] == [
        "functions/truncate.md"]
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM chunks WHERE text ~ '\\{\\{[<%]|[>%]\\}\\}'").fetchone()[0] == 0
        # the card's chunk, and only it, is marked for hybrid search's card leg
        cards = dict(conn.execute("SELECT d.path, c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
                                  "WHERE c.card").fetchall())
    assert cards == {"install/linux.md": "Install the tool on Linux.", "install/macos.md": "Install the tool on a Mac.",
                     "install/_index.md": "Lighthouse keepers install the beacon here.",
                     "functions/truncate.md": chunks_of(store, "functions/truncate.md")[0]}
    # The included snippet is part of each page that includes it.
    assert any("walrus release key" in t for t in chunks_of(store, "install/macos.md"))
    assert any("walrus release key" in t for t in chunks_of(store, "install/linux.md"))


def test_an_edited_include_reparses_exactly_the_pages_that_include_it(store, site, embedder, fake_openai):
    root, manifest = site
    run(store, manifest, embedder, fake_openai)
    reports, sent = run(store, manifest, embedder, fake_openai)
    assert sent == [] and reports["documents"].counts["unchanged"] == len(PAGES)

    before = {c for p in PAGES for c in map(content_hash, chunks_of(store, p))}
    note = root / "_common/install-note.md"
    note.write_text(note.read_text().replace("walrus", "narwhal"))
    reports, sent = run(store, manifest, embedder, fake_openai)
    # The snippet and the two pages that include it, though their own bytes did not change.
    assert reports["documents"].counts["changed"] == 3 and reports["documents"].counts["unchanged"] == len(PAGES) - 3
    assert sent and all("narwhal" in t for t in sent)
    assert any("narwhal" in t for t in chunks_of(store, "install/macos.md"))
    assert not any("walrus" in t for p in PAGES for t in chunks_of(store, p))
    assert len(before) > 0

    note.unlink()  # the include is gone: the pages lose its text in the same run, and say why
    reports, sent = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["changed"] == 2 and reports["documents"].counts["deleted"] == 1
    assert not any("narwhal" in t for t in chunks_of(store, "install/linux.md"))
    assert any("install-note.md" in i.reason and "not found" in i.reason for i in reports["documents"].issues)
    reports, sent = run(store, manifest, embedder, fake_openai)
    assert sent == [] and reports["documents"].counts["changed"] == 0


@pytest.mark.parametrize("mode", ["text", "vector", "hybrid"])
def test_results_are_documents_with_their_best_passages_in_every_mode(store, site, embedder, fake_openai, mode):
    _, manifest = site
    run(store, manifest, embedder, fake_openai)
    found = documents(store, embedder, "storm barometer reading in the ledger, walrus key", mode, k=5, passages=2)
    paths = [d.path for d in found]
    assert len(paths) == len(set(paths)) == 5  # the 30-part guide is one result, not the whole list
    assert {"guide/long.md", "guide/short.md"} <= set(paths)
    assert all(1 <= len(d.passages) <= 2 for d in found)
    assert all(p.path == d.path for d in found for p in d.passages)
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    long = next(d for d in found if d.path == "guide/long.md")
    assert len(long.passages) == 2 and long.passages[0].text != long.passages[1].text



def test_a_text_repeated_across_pages_counts_once(store, tmp_path, embedder, fake_openai):
    root = tmp_path / "site"
    root.mkdir()
    footer = "## Licence\n\nEvery page here is shared under the walrus public licence, version two."
    for name in ("alpha", "beta", "gamma"):
        (root / f"{name}.md").write_text(f"---\ntitle: {name}\n---\n\nThe {name} page explains {name} things.\n\n{footer}\n")
    (root / "licence.md").write_text("---\ntitle: Licensing\n---\n\nWhich walrus licence applies, and why.\n")
    manifest = write_manifest(tmp_path, {"docs": {"root": "site", "include": ["**/*.md"]}})
    run(store, manifest, embedder, fake_openai)
    for mode in ("text", "hybrid"):
        found = [d.path for d in documents(store, embedder, "walrus public licence", mode, k=4)]
        # One copy of the footer (the one ranked best) stands for all three; the page about the
        # licence is not pushed down by the copies.
        assert len({"alpha.md", "beta.md", "gamma.md"} & set(found[:2])) == 1, (mode, found)
        assert "licence.md" in found[:2], (mode, found)


def test_a_page_with_only_a_title_in_front_matter_is_found_but_an_emptied_file_is_not(store, tmp_path, embedder,
                                                                                         fake_openai):
    root = tmp_path / "site"
    root.mkdir()
    (root / "_index.md").write_text("---\ntitle: Quasar telemetry\n---\n")
    (root / "empty.md").write_text("")
    manifest = write_manifest(tmp_path, {"docs": {"root": "site", "include": ["**/*.md"]}})
    run(store, manifest, embedder, fake_openai)
    assert chunks_of(store, "_index.md") == ["Quasar telemetry"] and chunks_of(store, "empty.md") == []
    assert [d.path for d in documents(store, embedder, "quasar telemetry", "text")] == ["_index.md"]


DIALECT_PAGES = {
    "components/_fundamentals.mdx": ":::caution\n\nRead the narwhal fundamentals page before this tutorial.\n\n:::\n",
    "tutorial/setup.mdx": "---\ntitle: Setup\n---\nimport Tabs from '@theme/Tabs';\nimport TabItem from '@theme/TabItem';\n"
                          "import Fundamentals from '../components/_fundamentals.mdx';\n\n<Fundamentals />\n\n"
                          "## Install\n\n<Tabs>\n<TabItem value=\"npm\">\n\nThe package comes from the heron registry.\n\n"
                          "</TabItem>\n</Tabs>\n",
    "guide/notes.md": "---\ntitle: Notes\n---\n\n## Timeouts\n\n!!! warning \"Slow servers\"\n\n"
                      "    A request to the pelican service gives up after thirty seconds.\n\n"
                      "/// tip | Retries\n\nRetry twice with a backoff.\n\n///\n",
}


def test_mdx_pages_and_admonitions_are_indexed_as_prose(store, tmp_path, embedder, fake_openai):
    root = tmp_path / "site"
    for path, text in DIALECT_PAGES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    manifest = write_manifest(tmp_path, {"docs": {"root": "site"}})  # the default include takes .mdx
    reports, _ = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].issues == []
    setup = " ".join(chunks_of(store, "tutorial/setup.mdx"))
    assert "narwhal fundamentals" in setup and "heron registry" in setup  # the imported partial is part of the page
    # An admonition's body is prose: a passage found by text search, not a code block.
    found = documents(store, embedder, "pelican service gives up", "text", k=1)
    assert [d.path for d in found] == ["guide/notes.md"]
    assert "A request to the pelican service gives up after thirty seconds." in found[0].passages[0].text
    with store.reading() as conn:
        assert conn.execute("SELECT count(*) FROM chunks WHERE text ~ '(^|\\n)(:::|///|!!!|import )|<[A-Z]'").fetchone()[0] == 0

    # Editing the partial parses again the page that imports it, though its own bytes did not change.
    partial = root / "components/_fundamentals.mdx"
    partial.write_text(partial.read_text().replace("narwhal", "walrus"))
    reports, _ = run(store, manifest, embedder, fake_openai)
    assert reports["documents"].counts["changed"] == 2
    assert "walrus fundamentals" in " ".join(chunks_of(store, "tutorial/setup.mdx"))
