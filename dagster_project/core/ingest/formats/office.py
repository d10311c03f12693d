"""Word (.docx, python-docx) and PowerPoint (.pptx, python-pptx): headings from Word's heading
styles and from slide titles, tables as pipe tables, page numbers (Word's, as last laid out)
and slide numbers on blocks. The ZIP container is checked before either library opens it."""

from __future__ import annotations

import io
import re
import zipfile

from ..parsing import Block, ParsedDocument, ParseError
from .tables import pipe_table

# A .docx or .pptx is a ZIP of XML. Its declared sizes bound what zipfile will inflate (a member
# that inflates past its declared size fails its length check), so checking them before opening
# is enough to refuse a zip bomb.
MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
MAX_COMPRESSION_RATIO = 200  # XML compresses ~10-20x; a bomb ~1000x
MAX_MEMBERS = 20_000
_HEADING_STYLE = re.compile(r"heading (\d)$", re.IGNORECASE)


def check_container(data: bytes, kind: str) -> None:
    """Refuse a corrupt ZIP or a zip bomb with a reason, before any library inflates it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as container:
            members = container.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ParseError(f"corrupt {kind} file: its ZIP container cannot be read ({exc}); open and re-save it, "
                         "or exclude it in corpus.yaml") from None
    total = sum(m.file_size for m in members)
    ratio = max((m.file_size / max(m.compress_size, 1) for m in members if m.file_size > 1_000_000), default=0)
    if len(members) > MAX_MEMBERS or total > MAX_UNCOMPRESSED_BYTES or ratio > MAX_COMPRESSION_RATIO:
        raise ParseError(f"refused as a zip bomb: {len(data)} bytes inflate to {total} bytes in {len(members)} "
                         f"parts (a part {ratio:.0f}x its compressed size; limits {MAX_UNCOMPRESSED_BYTES} bytes, "
                         f"{MAX_COMPRESSION_RATIO}x, {MAX_MEMBERS} parts): exclude the file in corpus.yaml")


def _open(data: bytes, kind: str, opener):
    check_container(data, kind)
    try:
        return opener(io.BytesIO(data))
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ParseError(f"corrupt {kind} file ({exc}): open and re-save it, or exclude it in corpus.yaml") from None
    except Exception as exc:  # KeyError, ValueError, lxml errors: a ZIP that is not this kind of document
        detail = re.sub(r"'<_io.BytesIO object at \w+>'", "the file", str(exc))
        raise ParseError(f"not a readable {kind} document ({type(exc).__name__}: {detail}): open and re-save it "
                         f"in an application that writes {kind}, or exclude it in corpus.yaml") from None


def _core_metadata(properties) -> tuple[str, dict]:
    metadata = {key: value for key in ("author", "subject", "keywords")
                if (value := (getattr(properties, key) or "").strip())}
    if properties.created is not None:
        metadata["created"] = properties.created.isoformat()
    return (properties.title or "").strip(), metadata


# ---------------------------------------------------------------- Word

def parse_docx(data: bytes) -> ParsedDocument:
    import docx
    from docx.table import Table

    document = _open(data, "Word (.docx)", docx.Document)
    title, metadata = _core_metadata(document.core_properties)
    body = document.element.body
    # Word records where it last broke pages; without that (a generated file), hard page breaks.
    rendered = bool(body.xpath(".//w:lastRenderedPageBreak"))
    breaks = ".//w:lastRenderedPageBreak" if rendered else './/w:br[@w:type="page"]'
    paged = rendered or bool(body.xpath(breaks))  # else no page numbers: "page 1" of a long file would mislead
    headings: list[dict] = []
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    page = 1
    # Style names by id, read once: python-docx's paragraph.style searches the styles part each
    # time, which was two thirds of a parse.
    style_names = {s.style_id: s.name for s in document.styles}
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = [[cell.text for cell in row.cells] for row in item.rows]
            blocks.append(Block("table", pipe_table(rows), [t for _, t in path], page=page if paged else None))
            continue
        starts_page = page if paged else None
        if paged:
            page += len(item._p.xpath(breaks))
        text = item.text.strip()
        if not text:
            continue
        style = style_names.get(item._p.style, "") if item._p.style else ""
        if style == "Title" and not title:
            title = text
            continue
        if match := _HEADING_STYLE.match(style):
            level = int(match.group(1))
            headings.append({"level": level, "title": text})
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, text)]
            continue
        heading_path = [t for _, t in path]
        if style.startswith("List"):
            if blocks and blocks[-1].kind == "list" and blocks[-1].heading_path == heading_path:
                blocks[-1].text += "\n- " + text
                continue
            blocks.append(Block("list", "- " + text, heading_path, page=starts_page))
        else:
            blocks.append(Block("paragraph", text, heading_path, page=starts_page))
    if not title and headings:
        title = headings[0]["title"]
    return ParsedDocument("docx", title, metadata, headings, blocks)


# ---------------------------------------------------------------- PowerPoint

def _shapes(shapes):
    """Shapes in the slide's own order (its shape tree), group shapes opened. Not sorted by
    position: a placeholder's position is inherited from its layout, and looking it up was half
    of a parse."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shapes(shape.shapes)
        else:
            yield shape


def parse_pptx(data: bytes) -> ParsedDocument:
    from pptx import Presentation

    presentation = _open(data, "PowerPoint (.pptx)", Presentation)
    title, metadata = _core_metadata(presentation.core_properties)
    headings: list[dict] = []
    blocks: list[Block] = []
    for number, slide in enumerate(presentation.slides, start=1):
        title_shape = slide.shapes.title
        slide_title = " ".join(title_shape.text_frame.text.split()) if title_shape is not None else ""
        slide_title = slide_title or f"Slide {number}"
        headings.append({"level": 1, "title": slide_title})
        for shape in _shapes(slide.shapes):
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
                blocks.append(Block("table", pipe_table(rows), [slide_title], page=number))
            elif shape.has_text_frame:
                lines = ["  " * p.level + " ".join("".join(r.text for r in p.runs).split())
                         for p in shape.text_frame.paragraphs]
                text = "\n".join(line for line in lines if line.strip())
                if text:
                    blocks.append(Block("paragraph", text, [slide_title], page=number))
        notes = slide.notes_slide.notes_text_frame if slide.has_notes_slide else None
        if notes is not None and notes.text.strip():
            blocks.append(Block("paragraph", notes.text.strip(), [slide_title, "Notes"], page=number))
    if not title and headings:
        title = next((h["title"] for h in headings if not h["title"].startswith("Slide ")), headings[0]["title"])
    metadata["slides"] = len(presentation.slides)
    return ParsedDocument("pptx", title, metadata, headings, blocks)
