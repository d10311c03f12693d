"""Word (.docx, python-docx) and PowerPoint (.pptx, python-pptx): headings from Word's heading
styles and from slide titles, tables as pipe tables, page numbers (Word's, as last laid out)
and slide numbers on blocks. The ZIP container is checked before either library opens it, and
whatever fails inside the libraries is a malformed document (`_reading`)."""

from __future__ import annotations

import contextlib
import io
import posixpath
import re
import zipfile

from ..parsing import Block, ParsedDocument, ParseError
from .tables import pipe_table

# A .docx or .pptx is a ZIP of XML. Its declared sizes bound what zipfile will inflate (a member
# that inflates past its declared size fails its length check), so checking them before opening
# is enough to refuse a zip bomb. What costs memory is the XML: python-docx and python-pptx parse
# every XML part they reach when they open the file, and an lxml tree takes ~9x its XML (~15x for
# markup of tiny elements); any other part (an image) is held as its bytes, 1x.
MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024  # all parts
MAX_COMPRESSION_RATIO = 200  # one part over 1 MB, of any kind: a bomb part is ~1000x
MAX_MEMBERS = 20_000
# The XML parts taken together: at most 128 MiB (~1.2 GB of trees) and, past 8 MiB (~100 MB of
# trees, whatever the ratio), at most 100x their compressed size, so the memory a file can take
# grows with its size. Real documents stay far below: a 1,000-page Word file's XML is tens of MB
# and compresses 5-20x (python-docx's 3,000 paragraphs of varied words and a table: 10 MB of XML,
# 8x). Only small files come near 100x (5,000 copies of one paragraph: 1.2 MB of XML, 204x for
# document.xml, 34x in all), which is why the ratio waits for 8 MiB and why it is not checked part
# by part below 1 MB. QA's bomb (round 3): header parts of 1,000,000 bytes at ~300x each, 300-530
# of them in a 1-1.7 MB file, 300-530 MB of XML: 5-8 GB of memory in python-docx.
MAX_XML_BYTES = 128 * 1024 * 1024
MAX_XML_RATIO = 100
XML_RATIO_FROM_BYTES = 8 * 1024 * 1024
_CONTENT_TYPES = "{http://schemas.openxmlformats.org/package/2006/content-types}"
_HEADING_STYLE = re.compile(r"heading (\d)$", re.IGNORECASE)


class ZipBombRefused(ParseError):
    """A container refused for what it would inflate to: under another extension it is refused
    all the same, so no advice to rename it."""


def _xml_parts(container: zipfile.ZipFile, members: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The parts the libraries may parse as XML. They take a part's content type from
    [Content_Types].xml (an override by part name, else a default by extension, both without
    regard to case), which the file itself chooses: a part counts unless that table, read as they
    read it, gives it a type that is not XML. Relationship parts are read as XML whatever their type."""
    from lxml import etree

    table = container.NameToInfo.get("[Content_Types].xml")  # of two with its name, the one they read
    overrides: dict[str, str] = {}
    defaults: dict[str, str] = {}
    if table is not None and table.file_size <= XML_RATIO_FROM_BYTES:
        try:
            parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False)  # theirs
            root = etree.fromstring(container.read(table), parser)
            for element in root:
                if element.tag == _CONTENT_TYPES + "Override":
                    overrides[element.get("PartName", "").lower()] = element.get("ContentType", "")
                elif element.tag == _CONTENT_TYPES + "Default":
                    defaults[element.get("Extension", "").lower()] = element.get("ContentType", "")
        except Exception:  # unreadable (the libraries will say so): every part counts
            overrides, defaults = {}, {}

    def is_xml(name: str) -> bool:
        if name == "[Content_Types].xml" or name.lower().endswith(".rels"):
            return True
        kind = overrides.get("/" + name.lower())
        if kind is None:  # the extension as theirs: posixpath.splitext of the part name, without the dot
            kind = defaults.get(posixpath.splitext("/" + name)[1][1:].lower())
        return kind is None or kind.lower().endswith("xml")

    return [m for m in members if is_xml(m.filename)]


def check_container(data: bytes, kind: str) -> None:
    """Refuse a corrupt ZIP or a zip bomb with a reason, before any library inflates it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as container:
            members = container.infolist()
            over = []
            total = sum(m.file_size for m in members)
            ratio = max((m.file_size / max(m.compress_size, 1) for m in members if m.file_size > 1_000_000),
                        default=0)
            if len(members) > MAX_MEMBERS:
                over.append(f"{len(members)} parts (limit {MAX_MEMBERS})")
            if total > MAX_UNCOMPRESSED_BYTES:
                over.append(f"{total} bytes inflated in all (limit {MAX_UNCOMPRESSED_BYTES})")
            if ratio > MAX_COMPRESSION_RATIO:
                over.append(f"a part over 1 MB inflating {ratio:.0f}x its compressed size (limit "
                            f"{MAX_COMPRESSION_RATIO}x)")
            if not over:
                xml = _xml_parts(container, members)
                xml_bytes = sum(m.file_size for m in xml)
                xml_ratio = xml_bytes / max(sum(m.compress_size for m in xml), 1)
                if xml_bytes > MAX_XML_BYTES:
                    over.append(f"{xml_bytes} bytes of XML in {len(xml)} parts (limit {MAX_XML_BYTES}: "
                                f"~9x that in memory)")
                if xml_bytes > XML_RATIO_FROM_BYTES and xml_ratio > MAX_XML_RATIO:
                    over.append(f"{xml_bytes} bytes of XML inflating {xml_ratio:.0f}x their compressed size "
                                f"(limit {MAX_XML_RATIO}x past {XML_RATIO_FROM_BYTES} bytes)")
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ParseError(f"corrupt {kind} file: its ZIP container cannot be read ({exc}); open and re-save it, "
                         "or exclude it in corpus.yaml") from None
    if over:
        raise ZipBombRefused(f"refused as a zip bomb: its {len(data)} bytes declare {'; '.join(over)}: exclude the "
                             "file in corpus.yaml (a real document this large: split it)")


@contextlib.contextmanager
def _reading(data: bytes, kind: str):
    """Around everything a parser asks of python-docx or python-pptx, which read the file's parts
    as they are asked for: a failure there (KeyError, ValueError, lxml errors; two `styles`
    relationships are a ValueError only when the styles are read) is a file that is not this kind
    of document, or a malformed one."""
    check_container(data, kind)
    try:
        yield
    except ParseError:
        raise
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ParseError(f"corrupt {kind} file ({exc}): open and re-save it, or exclude it in corpus.yaml") from None
    except MemoryError:
        raise
    except Exception as exc:
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

    with _reading(data, "Word (.docx)"):
        return _read_docx(docx.Document(io.BytesIO(data)))


def _read_docx(document) -> ParsedDocument:
    from docx.table import Table

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

    with _reading(data, "PowerPoint (.pptx)"):
        return _read_pptx(Presentation(io.BytesIO(data)))


def _read_pptx(presentation) -> ParsedDocument:
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
