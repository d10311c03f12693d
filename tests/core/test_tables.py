"""Tables in chunks: whole with their header when they fit, split by rows with the header
repeated when they do not; the same for Markdown, HTML, Word and PowerPoint tables."""

from __future__ import annotations

import pytest

from dagster_project.core.ingest.chunking import ChunkSettings, chunk_blocks
from dagster_project.core.ingest.parsing import Block, parse_document
from dagster_project.core.ingest.tokens import wordpiece_counter
from tests.fakes.documents import make_docx, make_pptx

SETTINGS = ChunkSettings(max_tokens=128, overlap_tokens=16, context_tokens=16)
BUDGET = SETTINGS.max_tokens - SETTINGS.overlap_tokens - SETTINGS.context_tokens
HEADER = "| Region | Owner | Quota |\n|---|---|---|"


@pytest.fixture(scope="module")
def counter():
    return wordpiece_counter()


def rows(n: int) -> list[str]:
    return [f"| region-{i} | owner {i} of the northern sales team | {i * 10} seats |" for i in range(n)]


def table_chunks(chunks) -> list[str]:
    return [c.text for c in chunks if "| Region |" in c.text]


def test_a_table_that_fits_stays_whole_in_one_chunk(counter):
    table = HEADER + "\n" + "\n".join(rows(3))
    chunks = chunk_blocks([Block("paragraph", "Quotas are reviewed each quarter.", ["Sales"]),
                           Block("table", table, ["Sales"])], SETTINGS, counter)
    assert sum(table in c.text for c in chunks) == 1


def test_a_long_table_is_split_by_rows_with_the_header_repeated(counter):
    body = rows(40)
    chunks = chunk_blocks([Block("paragraph", "The quota table follows.", ["Sales"]),
                           Block("table", HEADER + "\n" + "\n".join(body), ["Sales"])], SETTINGS, counter)
    pieces = table_chunks(chunks)
    assert len(pieces) > 3
    assert pieces[0].startswith("The quota table follows.\n\n" + HEADER + "\n")  # packed with what precedes it
    seen = []
    for piece in pieces[1:]:  # no overlap tail from a table in front of the header
        assert piece.startswith(HEADER + "\n"), piece[:80]
    for piece in pieces:
        seen.extend(piece.split(HEADER + "\n", 1)[1].split("\n"))
    assert seen == body  # every row once, in order, never cut
    assert all(c.token_count <= BUDGET + SETTINGS.overlap_tokens for c in chunks)
    assert all(counter.count([c.text])[0] == c.token_count for c in chunks)


def test_a_row_longer_than_a_chunk_is_cut_under_the_header(counter):
    long_row = "| region-x | " + " ".join(f"note{i}" for i in range(300)) + " | 1 |"
    chunks = chunk_blocks([Block("table", HEADER + "\n" + "\n".join(rows(2) + [long_row] + rows(1)), ["S"])],
                          SETTINGS, counter)
    assert len(chunks) >= 3 and all(c.text.startswith(HEADER) for c in chunks)
    assert all(c.token_count <= BUDGET + SETTINGS.overlap_tokens for c in chunks)


def test_markdown_html_word_and_powerpoint_tables_split_the_same_way(counter):
    cells = [["Region", "Owner", "Quota"]] + [[f"region-{i}", f"owner {i} of the northern sales team", f"{i * 10} seats"]
                                             for i in range(40)]
    html = ("<h1>Sales</h1><table><thead><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:]) + "</tbody></table>")
    markdown = "# Sales\n\n" + HEADER + "\n" + "\n".join(rows(40)) + "\n"
    files = {"quota.md": markdown.encode(), "quota.html": html.encode(),
             "quota.docx": make_docx([("h1", "Sales"), ("table", cells)]),
             "quota.pptx": make_pptx([{"title": "Sales", "table": cells}])}
    for name, data in files.items():
        doc = parse_document(name, data)
        tables = [b for b in doc.blocks if b.kind == "table"]
        assert len(tables) == 1 and tables[0].text.startswith(HEADER), (name, tables[0].text[:80])
        pieces = table_chunks(chunk_blocks(doc.blocks, SETTINGS, counter))
        assert len(pieces) > 3 and all(p.startswith(HEADER + "\n") for p in pieces), name
        assert [r for p in pieces for r in p.split("\n")[2:]] == rows(40), name
