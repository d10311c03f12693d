"""Binary document formats (PDF text layer, Word .docx, PowerPoint .pptx): each parser turns a
file's bytes into the same ParsedDocument as the text formats, with page or slide numbers on its
blocks. Bad input raises ParseError with the reason and what to do."""

from __future__ import annotations

BINARY_FORMATS = {".pdf": "pdf", ".docx": "docx", ".pptx": "pptx"}
# A file of these formats is parsed in a process of its own that is killed past this many
# seconds (formats.isolation): their libraries run native code that no signal interrupts.
PARSE_TIME_LIMIT_SECONDS = 120.0


def parse_binary(fmt: str, data: bytes):
    if fmt == "pdf":
        from .pdf import parse_pdf

        return parse_pdf(data)
    from .office import parse_docx, parse_pptx

    return parse_docx(data) if fmt == "docx" else parse_pptx(data)
