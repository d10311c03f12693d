"""PDF, Word and PowerPoint parsing on small real files written by the same libraries: titles,
heading paths from the documents' own structure, page and slide numbers, tables, and a reason
for each kind of bad file."""

from __future__ import annotations

import io
import os
import signal
import sys
import zipfile

import pytest
from pypdf import PdfReader, PdfWriter

from dagster_project.core.ingest.formats.isolation import parse_isolated
from dagster_project.core.ingest.parsing import ParseError, parse_document
from dagster_project.core.ingest.formats import office
from tests.fakes.documents import (HEADER_TYPE, make_docx, make_header_bomb, make_image_only_pdf, make_pdf, make_pptx,
                                  make_zip_bomb, rewrite_docx)


def sections(doc) -> list[tuple[list[str], str, int | None]]:
    return [(b.heading_path, b.text, b.page) for b in doc.blocks]


def test_pdf_headings_from_font_sizes_title_from_metadata_and_page_numbers():
    data = make_pdf([[(24, "Glacier Backups"), (11, "Nightly glacier backups keep thirty days."),
                      (16, "Retention"), (11, "Snapshots move to cold storage.")],
                     [(11, "Page two continues the retention policy.")]], title="Backup handbook")
    doc = parse_document("handbook.pdf", data)
    assert doc.format == "pdf" and doc.title == "Backup handbook" and doc.metadata["pages"] == 2
    assert doc.headings == [{"level": 1, "title": "Glacier Backups"}, {"level": 2, "title": "Retention"}]
    assert sections(doc) == [
        (["Glacier Backups"], "Nightly glacier backups keep thirty days.", 1),
        (["Glacier Backups", "Retention"], "Snapshots move to cold storage.", 1),
        (["Glacier Backups", "Retention"], "Page two continues the retention policy.", 2)]


def test_pdf_outline_wins_over_font_sizes_and_gives_the_title_without_metadata():
    data = make_pdf([[(11, "Overview"), (11, "Kestrels hunt by hovering.")],
                     [(20, "Large but not in the outline"), (11, "Install the feeder in spring.")]],
                    outline=[(1, "Overview", 0), (2, "Setup", 1)])
    doc = parse_document("kestrels.pdf", data)
    assert doc.title == "Overview"
    assert doc.headings == [{"level": 1, "title": "Overview"}, {"level": 2, "title": "Setup"}]
    # "Overview" is a line of page 1: the heading starts there; "Setup" is not on page 2: it starts at its top.
    assert sections(doc) == [
        (["Overview"], "Kestrels hunt by hovering.", 1),
        (["Overview", "Setup"], "Large but not in the outline\nInstall the feeder in spring.", 2)]


def test_docx_heading_styles_lists_tables_and_page_breaks():
    data = make_docx([("h1", "Onboarding"), ("p", "Welcome to the team."), ("bullet", "Laptop"), ("bullet", "Badge"),
                      ("h2", "Pricing"), ("p", "The plan costs $40 per seat."), ("page_break", None),
                      ("table", [["Plan", "Price"], ["Basic", "$10"], ["Pro", "$40"]])], title="Handbook")
    doc = parse_document("handbook.docx", data)
    assert doc.format == "docx" and doc.title == "Handbook"
    assert doc.headings == [{"level": 1, "title": "Onboarding"}, {"level": 2, "title": "Pricing"}]
    assert sections(doc) == [
        (["Onboarding"], "Welcome to the team.", 1),
        (["Onboarding"], "- Laptop\n- Badge", 1),
        (["Onboarding", "Pricing"], "The plan costs $40 per seat.", 1),
        (["Onboarding", "Pricing"], "| Plan | Price |\n|---|---|\n| Basic | $10 |\n| Pro | $40 |", 2)]
    assert doc.blocks[-1].kind == "table"
    untitled = parse_document("notes.docx", make_docx([("h1", "Meeting notes"), ("p", "Agreed on the plan.")]))
    assert untitled.title == "Meeting notes"
    assert [b.page for b in untitled.blocks] == [None]  # never laid out, no page breaks: pages unknown


def test_pptx_slide_titles_slide_numbers_tables_and_notes():
    data = make_pptx([{"title": "Quarterly review", "bullets": ["Revenue up", "Churn down"], "notes": "Thank the team"},
                      {"bullets": ["An untitled slide"], "table": [["Region", "Sales"], ["EU", "12"]]}])
    doc = parse_document("review.pptx", data)
    assert doc.format == "pptx" and doc.title == "Quarterly review" and doc.metadata["slides"] == 2
    assert [h["title"] for h in doc.headings] == ["Quarterly review", "Slide 2"]
    assert sections(doc) == [
        (["Quarterly review"], "Revenue up\nChurn down", 1),
        (["Quarterly review", "Notes"], "Thank the team", 1),
        (["Slide 2"], "An untitled slide", 2),
        (["Slide 2"], "| Region | Sales |\n|---|---|\n| EU | 12 |", 2)]


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("locked.pdf", lambda: make_pdf([[(11, "Secret plans")]], password="s3cret"), "encrypted PDF"),
    ("scan.pdf", make_image_only_pdf, "no text layer"),
    ("truncated.pdf", lambda: make_pdf([[(11, "Cut short")]])[:200], "not a readable PDF"),
    ("corrupt.docx", lambda: make_docx([("p", "Fine")])[:300], "corrupt Word (.docx) file"),
    ("corrupt.pptx", lambda: b"PK\x03\x04" + b"\x00" * 64, "corrupt PowerPoint (.pptx) file"),
    ("bomb.docx", make_zip_bomb, "zip bomb"),
    ("sheet.docx", lambda: _zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"}),
     "not a readable Word (.docx) document"),
    # Two `styles` relationships (one external): python-docx fails only when the styles are read
    ("two-styles.docx", lambda: _two_styles_docx(),
     "not a readable Word (.docx) document (ValueError: multiple relationships of type"),
    # Another format under the wrong extension: rename it, not "repair it with qpdf" or "re-save it"
    ("word.pdf", lambda: make_docx([("p", "Fine")]), "this is a Word file named .pdf: rename it to .docx"),
    ("slides.pdf", lambda: make_pptx([{"title": "Deck"}]), "this is a PowerPoint file named .pdf: rename it to .pptx"),
    ("report.docx", lambda: make_pdf([[(11, "Text")]]), "this is a PDF file named .docx: rename it to .pdf"),
    ("slides.docx", lambda: make_pptx([{"title": "Not Word"}]),
     "this is a PowerPoint file named .docx: rename it to .pptx"),
    ("bomb.pptx", make_zip_bomb, "refused as a zip bomb"),  # Word-shaped, but refused whatever its name
])
def test_bad_files_raise_a_reason_that_says_what_to_do(name, data, reason):
    with pytest.raises(ParseError) as caught:
        parse_document(name, data())
    assert reason in caught.value.reason and caught.value.severity == "error"
    assert "BytesIO" not in caught.value.reason


def _two_styles_docx() -> bytes:
    external = (b'<Relationship Id="rIdX" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
                b'styles" Target="http://127.0.0.1:9/styles.xml" TargetMode="External"/>')
    return rewrite_docx(make_docx([("p", "Fine")]), {
        "word/_rels/document.xml.rels": lambda rels: rels.replace(b"</Relationships>", external + b"</Relationships>")})


def _zip(parts: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as container:
        for name, part in parts.items():
            container.writestr(name, part)
    return out.getvalue()


@pytest.mark.parametrize("name", ["word/h{}.xml", "word/media/image{}.png"])
def test_many_megabyte_xml_parts_are_refused_before_python_docx_opens_the_file(monkeypatch, name):
    """QA round 3's bomb: header parts of exactly 1,000,000 bytes (~300x each, just under the
    1 MB past which a single part's ratio is checked), related from document.xml so python-docx
    parses each when it opens the file: 300 of them (a 1 MB file) took it 4.7 GB. Ten take the XML
    past the 8 MiB after which it must stay within 100x. A part counts as XML by the content type
    [Content_Types].xml gives it, as the library reads it, not by its name."""
    import docx

    data = make_header_bomb(10, name=name, content_type=HEADER_TYPE)
    assert len(data) < 100_000
    opened = []
    monkeypatch.setattr(docx, "Document", lambda *args: opened.append(args))
    with pytest.raises(ParseError, match=r"refused as a zip bomb: its \d+ bytes declare 108\d{5} bytes of XML "
                                         r"inflating \d+x their compressed size \(limit 100x past 8388608 bytes\): "
                                         r"exclude the file in corpus.yaml"):
        parse_document("headers.docx", data)
    assert not opened


def test_the_same_parts_typed_as_images_are_not_xml():
    # Held as bytes by python-docx, not parsed: only the limits on all parts apply to them
    doc = parse_document("pictures.docx", make_header_bomb(10, name="word/media/image{}.png", content_type="image/png"))
    assert [b.text for b in doc.blocks] == ["Harmless text"]


def _large_docx() -> bytes:
    """A long Word file from python-docx: 30 headings, 2,970 paragraphs of 400 words, a table
    (paragraphs placed with lxml: python-docx's add_paragraph looks for the section properties
    among all the body's children each time)."""
    import random

    import docx
    from docx.oxml.parser import OxmlElement
    from docx.text.paragraph import Paragraph

    pick = random.Random(7).choices
    words = ("kestrel walrus heron pelican budget quarterly revenue onboarding laptop badge contract renewal "
             "invoice supplier warehouse shipment forecast margin customer churn retention pricing seat plan").split()
    document = docx.Document()
    end, heading = document.element.body.sectPr, document.styles["Heading 1"]
    for i in range(3000):
        element = OxmlElement("w:p")
        end.addprevious(element)
        paragraph = Paragraph(element, document._body)
        if i % 100 == 0:
            paragraph.style = heading
            paragraph.add_run(f"Chapter {i // 100 + 1}")
        else:
            paragraph.add_run()._r.add_t(" ".join(pick(words, k=400)) + f" ({i})")
    table = document.add_table(rows=40, cols=4)
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            cell.text = f"{words[(r + c) % len(words)]} {r * 4 + c}"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def test_a_long_real_docx_is_within_the_limits_and_the_xml_cap_applies(monkeypatch):
    data = _large_docx()
    with zipfile.ZipFile(io.BytesIO(data)) as container:
        xml = sum(m.file_size for m in container.infolist())
    assert xml > office.XML_RATIO_FROM_BYTES  # so the ratio of its XML (~8x) is checked
    doc = parse_document("long.docx", data)
    assert len(doc.headings) == 30 and len(doc.blocks) == 2971 and doc.blocks[-1].kind == "table"
    monkeypatch.setattr(office, "MAX_XML_BYTES", xml // 2)
    with pytest.raises(ParseError, match=rf"declare \d+ bytes of XML in \d+ parts \(limit {xml // 2}: "):
        parse_document("long.docx", data)


def test_scan_advice_names_ocr_and_partly_scanned_pdf_is_indexed_with_a_warning():
    with pytest.raises(ParseError, match="OCR"):
        parse_document("scan.pdf", make_image_only_pdf())
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([[(11, "Typed page")]]))))
    writer.append(PdfReader(io.BytesIO(make_image_only_pdf(1))))
    out = io.BytesIO()
    writer.write(out)
    doc = parse_document("mixed.pdf", out.getvalue())
    assert [b.text for b in doc.blocks] == ["Typed page"]
    assert any("1 of 2 pages have no text layer (pages 2" in w for w in doc.warnings)


def _parse_or_die(path: str, data: bytes):
    """A parser whose native code crashes on one file: its process dies by SIGKILL."""
    if path == "crash.pdf":
        os.kill(os.getpid(), signal.SIGKILL)
    return parse_document(path, data)


def test_a_parser_crash_costs_one_file_and_its_worker_is_replaced():
    data = make_pdf([[(11, "Ospreys nest on platforms.")]])
    results = parse_isolated(["a.pdf", "crash.pdf", "b.pdf"], [data] * 3, _parse_or_die, workers=1, time_limit=60)
    assert [r.blocks[0].text for r in (results[0], results[2])] == ["Ospreys nest on platforms."] * 2
    assert isinstance(results[1], ParseError) and "crashed" in results[1].reason and "-9" in results[1].reason


def test_a_missing_library_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # as if the install had skipped it
    with pytest.raises(ParseError, match=r"needs the package pypdfium2 .*pip install pypdfium2"):
        parse_document("report.pdf", make_pdf([[(11, "Text")]]))
