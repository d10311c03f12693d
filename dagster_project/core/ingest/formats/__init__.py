"""Binary document formats (PDF text layer, Word .docx, PowerPoint .pptx): each parser turns a
file's bytes into the same ParsedDocument as the text formats, with page or slide numbers on its
blocks. Bad input raises ParseError with the reason and what to do."""

from __future__ import annotations

BINARY_FORMATS = {".pdf": "pdf", ".docx": "docx", ".pptx": "pptx"}
# A file of these formats is parsed in a worker process that is killed past this many seconds
# (formats.isolation): their libraries run native code that no signal interrupts.
PARSE_TIME_LIMIT_SECONDS = 120.0
_PACKAGES = {"pdf": "pypdfium2", "docx": "python-docx", "pptx": "python-pptx"}


def parse_binary(fmt: str, data: bytes):
    from ..parsing import ParseError

    try:
        if fmt == "pdf":
            from .pdf import parse_pdf

            return parse_pdf(data)
        from .office import parse_docx, parse_pptx

        return parse_docx(data) if fmt == "docx" else parse_pptx(data)
    except ImportError as exc:  # an install that skipped the dependencies
        raise ParseError(f"reading .{fmt} files needs the package {_PACKAGES[fmt]} ({exc}): reinstall "
                         f"corpus-refinery with its dependencies (`pip install -e .`) or `pip install "
                         f"{_PACKAGES[fmt]}`") from None
