"""Binary document formats (PDF text layer, Word .docx, PowerPoint .pptx): each parser turns a
file's bytes into the same ParsedDocument as the text formats, with page or slide numbers on its
blocks. Bad input raises ParseError with the reason and what to do."""

from __future__ import annotations

BINARY_FORMATS = {".pdf": "pdf", ".docx": "docx", ".pptx": "pptx"}
# A file of these formats is parsed in a worker process that is killed past this many seconds
# (formats.isolation): their libraries run native code that no signal interrupts.
PARSE_TIME_LIMIT_SECONDS = 120.0
_PACKAGES = {"pdf": "pypdfium2", "docx": "python-docx", "pptx": "python-pptx"}
_NAMES = {"pdf": "PDF", "docx": "Word", "pptx": "PowerPoint"}


def sniff(data: bytes) -> str | None:
    """The format the bytes are in, whatever the file's name: a PDF header (PDFium accepts one
    within the first KB), or a ZIP holding Word's or PowerPoint's parts (its directory only:
    nothing is inflated)."""
    import io
    import zipfile

    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(b"PK"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as container:
                names = {name.lower() for name in container.namelist()}
        except Exception:  # noqa: BLE001 - not a readable ZIP: no format to name
            return None
        for prefix, fmt in (("word/", "docx"), ("ppt/", "pptx")):
            if any(name.startswith(prefix) for name in names):
                return fmt
    return None


def parse_binary(fmt: str, data: bytes):
    from ..parsing import ParseError

    try:
        if fmt == "pdf":
            from .pdf import parse_pdf

            return parse_pdf(data)
        from .office import parse_docx, parse_pptx

        return parse_docx(data) if fmt == "docx" else parse_pptx(data)
    except ParseError as exc:
        # A file that fails as its extension's format may be another one under the wrong name:
        # then re-saving or repairing it (the failure's advice) is not what to do. A zip bomb is
        # refused whatever its name.
        from .office import ZipBombRefused

        actual = sniff(data)
        if actual is None or actual == fmt or isinstance(exc, ZipBombRefused):
            raise
        raise ParseError(f"this is a {_NAMES[actual]} file named .{fmt}: rename it to .{actual}, or exclude it "
                         "in corpus.yaml") from None
    except ImportError as exc:  # an install that skipped the dependencies
        raise ParseError(f"reading .{fmt} files needs the package {_PACKAGES[fmt]} ({exc}): reinstall "
                         f"corpus-refinery with its dependencies (`pip install -e .`) or `pip install "
                         f"{_PACKAGES[fmt]}`") from None
