"""Small real PDF, Word and PowerPoint files for the tests and the benchmark, written with pypdf,
python-docx and python-pptx (the PDF in Helvetica, one line per text object)."""

from __future__ import annotations

import io
import zipfile


def make_pdf(pages: list[list[tuple[float, str]]], *, title: str | None = None,
             outline: list[tuple[int, str, int]] = (), password: str | None = None) -> bytes:
    """pages: per page, (font size, line) from the top; outline: (level, title, page index)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"), NameObject("/Encoding"): NameObject("/WinAnsiEncoding")}))
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        ops, y = [], 750.0
        for size, text in lines:
            escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"BT /F1 {size} Tf 72 {y} Td ({escaped}) Tj ET")
            y -= size + 6
        stream = DecodedStreamObject()
        stream.set_data("\n".join(ops).encode("cp1252"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    if title:
        writer.add_metadata({"/Title": title})
    parents: dict[int, object] = {}
    for level, text, page_index in outline:
        parents[level] = writer.add_outline_item(title=text, page_number=page_index, parent=parents.get(level - 1))
    if password:
        writer.encrypt(user_password=password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_image_only_pdf(pages: int = 2) -> bytes:
    """A "scan": pages that draw only a filled rectangle, with no text layer."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, NameObject

    writer = PdfWriter()
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        stream = DecodedStreamObject()
        stream.set_data(b"0.5 g 72 72 468 648 re f")
        page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(parts: list[tuple[str, object]], *, title: str | None = None) -> bytes:
    """parts: ("h1".."h3", text), ("p", text), ("bullet", text), ("table", rows), ("page_break", None)."""
    import docx

    document = docx.Document()
    if title:
        document.core_properties.title = title
    for kind, value in parts:
        if kind.startswith("h"):
            document.add_heading(value, level=int(kind[1]))
        elif kind == "p":
            document.add_paragraph(value)
        elif kind == "bullet":
            document.add_paragraph(value, style="List Bullet")
        elif kind == "page_break":
            document.add_page_break()
        elif kind == "table":
            table = document.add_table(rows=len(value), cols=len(value[0]))
            for r, row in enumerate(value):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx(slides: list[dict], *, title: str | None = None) -> bytes:
    """slides: {"title": str, "bullets": [str], "table": rows, "notes": str} (each optional)."""
    from pptx import Presentation
    from pptx.util import Inches

    presentation = Presentation()
    if title:
        presentation.core_properties.title = title
    for spec in slides:
        slide = presentation.slides.add_slide(presentation.slide_layouts[1 if spec.get("title") else 6])
        if spec.get("title"):
            slide.shapes.title.text = spec["title"]
            body = slide.placeholders[1].text_frame
            for i, bullet in enumerate(spec.get("bullets", [])):
                paragraph = body.paragraphs[0] if i == 0 else body.add_paragraph()
                paragraph.text = bullet
        else:
            box = slide.shapes.add_textbox(Inches(1), Inches(1), Inches(6), Inches(1))
            box.text_frame.text = "\n".join(spec.get("bullets", []))
        if spec.get("table"):
            rows = spec["table"]
            shape = slide.shapes.add_table(len(rows), len(rows[0]), Inches(1), Inches(4), Inches(6), Inches(2))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    shape.table.cell(r, c).text = cell
        if spec.get("notes"):
            slide.notes_slide.notes_text_frame.text = spec["notes"]
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def make_zip_bomb(inflated_bytes: int = 16 * 1024 * 1024) -> bytes:
    """A .docx-shaped ZIP whose document part inflates to `inflated_bytes` of zeros (~1000x)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as container:
        container.writestr("[Content_Types].xml", "<Types/>")
        with container.open("word/document.xml", "w", force_zip64=True) as part:
            chunk = b"\0" * (1024 * 1024)
            for _ in range(inflated_bytes // len(chunk)):
                part.write(chunk)
    return out.getvalue()


HEADER_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.header+xml"


def rewrite_docx(data: bytes, edits: dict, extra: dict[str, bytes] = ()) -> bytes:
    """The package with `edits[name](bytes)` applied to its parts and the `extra` parts added."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as container:
        for info in source.infolist():
            part = source.read(info.filename)
            container.writestr(info.filename, edits[info.filename](part) if info.filename in edits else part)
        for name, part in dict(extra).items():
            container.writestr(name, part)
    return out.getvalue()


def make_header_bomb(headers: int, *, name: str = "word/h{}.xml", content_type: str = HEADER_TYPE) -> bytes:
    """QA's shape of bomb: a real .docx plus `headers` header parts of exactly 1,000,000 bytes of
    tiny paragraphs (~300x each, just under the old 1 MB floor of the per-part ratio), each
    related from document.xml, which python-docx loads and parses when it opens the file."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    head = f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:hdr xmlns:w="{w}">'.encode()
    tail, paragraph = b"</w:hdr>", b"<w:p><w:r><w:t>x</w:t></w:r></w:p>"
    body = head + paragraph * ((1_000_000 - len(head) - len(tail)) // len(paragraph))
    body += b" " * (1_000_000 - len(body) - len(tail)) + tail
    names = [name.format(i) for i in range(headers)]
    types = b"".join(f'<Override PartName="/{n}" ContentType="{content_type}"/>'.encode() for n in names)
    rels = b"".join(f'<Relationship Id="rIdH{i}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
                    f'relationships/header" Target="{n.removeprefix("word/")}"/>'.encode() for i, n in enumerate(names))
    return rewrite_docx(make_docx([("p", "Harmless text")]),
                        {"[Content_Types].xml": lambda d: d.replace(b"</Types>", types + b"</Types>"),
                         "word/_rels/document.xml.rels": lambda d: d.replace(b"</Relationships>",
                                                                             rels + b"</Relationships>")},
                        {n: body for n in names})


def make_long_pdf(pages: int, lines_per_page: int = 60) -> bytes:
    """Many pages sharing one content stream: cheap to write, slow to read (a time-limit case)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica")}))
    stream = DecodedStreamObject()
    stream.set_data("\n".join(f"BT /F1 9 Tf 36 {780 - 12 * i} Td (Line {i} of a long report about kestrel "
                              f"migrations and their seasonal routes) Tj ET" for i in range(lines_per_page)).encode())
    content = writer._add_object(stream)
    resources = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Contents")] = content
        page[NameObject("/Resources")] = resources
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
