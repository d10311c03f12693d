"""PDF text layer through pypdfium2 (PDFium): one block per page and section, headings from the
outline or, without one, from font sizes larger than the body text's; page numbers on blocks."""

from __future__ import annotations

from collections import Counter

from ..parsing import Block, ParsedDocument, ParseError

HEADING_SIZE_RATIO = 1.2  # a line this much larger than the body text is a heading
HEADING_MAX_CHARS = 120
MAX_HEADING_LEVELS = 4
_METADATA = {"Author": "author", "Subject": "subject", "Keywords": "keywords", "CreationDate": "created"}


def parse_pdf(data: bytes) -> ParsedDocument:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise ParseError("encrypted PDF: it cannot be opened without its password; save a copy without "
                             "the password and ingest that, or exclude the file in corpus.yaml") from None
        raise ParseError(f"not a readable PDF ({exc}): re-export it or repair it (e.g. `qpdf in.pdf out.pdf`), "
                         "or exclude it in corpus.yaml") from None
    try:
        pages = [_page_lines(document[i], pdfium_c) for i in range(len(document))]
        info = document.get_metadata_dict(skip_empty=True)
        outline = [(b.level + 1, " ".join(b.get_title().split()), dest.get_index())
                   for b in document.get_toc() if (dest := b.get_dest()) is not None and dest.get_index() is not None]
    finally:
        document.close()
    if not pages:
        raise ParseError("the PDF has no pages: nothing to index")
    empty = [n for n, lines in enumerate(pages, start=1) if not any(text.strip() for text, _ in lines)]
    if len(empty) == len(pages):
        raise ParseError(f"the PDF has no text layer ({len(pages)} page(s) of images: a scan?): run OCR on it "
                         "(e.g. `ocrmypdf in.pdf out.pdf`) and put the OCRed copy in the collection")
    warnings = []
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        warnings.append(f"{len(empty)} of {len(pages)} pages have no text layer (pages {shown}; scanned?): "
                        "OCR the file to make them searchable")
    headings, blocks = _structure(pages, [o for o in outline if 0 <= o[2] < len(pages)])
    metadata = {key: str(info[name]) for name, key in _METADATA.items() if info.get(name)}
    metadata["pages"] = len(pages)
    title = str(info.get("Title") or (headings[0]["title"] if headings else ""))
    return ParsedDocument("pdf", title, metadata, headings, blocks, warnings)


def _page_lines(page, pdfium_c) -> list[tuple[str, float]]:
    """The page's lines with the font size of each line's first character (0 when unknown)."""
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_range()
        # Indices match the characters only without UTF-16 surrogate pairs; otherwise sizes are unknown.
        sized = len(text) == textpage.count_chars()
        lines, offset = [], 0
        for raw in text.splitlines(keepends=True):
            line = raw.strip()
            if line:
                first = offset + len(raw) - len(raw.lstrip())
                size = pdfium_c.FPDFText_GetFontSize(textpage.raw, first) if sized else 0.0
                lines.append((line, round(size * 2) / 2))
            offset += len(raw)
        return lines
    finally:
        textpage.close()
        page.close()


def _structure(pages: list[list[tuple[str, float]]], outline: list[tuple[int, str, int]]):
    """Headings and blocks. The outline (the document's own table of contents) wins; an outline
    entry found as a line of its page starts there, otherwise at the top of its page."""
    levels = _outline_levels(pages, outline) if outline else _font_levels(pages)
    headings: list[dict] = []
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []

    def enter(level: int, title: str) -> None:
        nonlocal path
        headings.append({"level": level, "title": title})
        path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]

    paragraph: list[str] = []

    def flush(page: int) -> None:
        if paragraph:
            blocks.append(Block("paragraph", "\n".join(paragraph), [t for _, t in path], page=page))
            paragraph.clear()

    for number, lines in enumerate(pages, start=1):
        for level, title in levels.get((number - 1, None), []):
            enter(level, title)
        for index, (text, _) in enumerate(lines):
            found = levels.get((number - 1, index))
            if found:
                flush(number)
                for level, title in found:
                    enter(level, title)
            else:
                paragraph.append(text)
        flush(number)
    return headings, blocks


def _outline_levels(pages, outline) -> dict[tuple[int, int | None], list[tuple[int, str]]]:
    """(page, line index or None for the top of the page) -> headings starting there."""
    at: dict[tuple[int, int | None], list[tuple[int, str]]] = {}
    for level, title, page in outline:
        wanted = title.casefold()
        index = next((i for i, (text, _) in enumerate(pages[page]) if " ".join(text.split()).casefold() == wanted), None)
        at.setdefault((page, index), []).append((level, title))
    return at


def _font_levels(pages) -> dict[tuple[int, int | None], list[tuple[int, str]]]:
    """Lines set larger than the body text (the size most characters have) are headings; the
    largest size is level 1."""
    weight: Counter[float] = Counter()
    for lines in pages:
        for text, size in lines:
            weight[size] += len(text)
    if not weight:
        return {}
    body = weight.most_common(1)[0][0]
    if body <= 0:
        return {}

    def is_heading(text: str, size: float) -> bool:
        return size >= body * HEADING_SIZE_RATIO and len(text) <= HEADING_MAX_CHARS and any(c.isalpha() for c in text)

    sizes = sorted({s for lines in pages for t, s in lines if is_heading(t, s)}, reverse=True)
    rank = {s: min(i + 1, MAX_HEADING_LEVELS) for i, s in enumerate(sizes)}
    return {(p, i): [(rank[s], " ".join(t.split()))] for p, lines in enumerate(pages)
            for i, (t, s) in enumerate(lines) if is_heading(t, s)}
