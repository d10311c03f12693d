"""Parse throughput per format (Markdown, HTML, PDF, Word, PowerPoint) on generated files: the
product's parser in process, and as ingest runs it (PDF, Word and PowerPoint each in a process of
its own, on every core), against a floor measured in the same run: the bare library reading the
same files' text (PDFium text extraction; python-docx / python-pptx paragraph text; UTF-8 decode
and a paragraph split for the text formats). Prints a table; pass/fail is for people, not CI."""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table  # noqa: E402
from dagster_project.core.ingest.corpus import SourceFile  # noqa: E402
from dagster_project.core.ingest.parsing import parse_document  # noqa: E402
from dagster_project.core.ingest.pipeline import parse_files  # noqa: E402
from tests.fakes.documents import make_docx, make_pdf, make_pptx  # noqa: E402

SENTENCE = ("Kestrels hover over the meadow at dawn while the survey team counts nests and records the "
            "wind speed, the cloud cover and the number of fledglings seen from each hide. ")


def corpus(files: int, pages: int) -> dict[str, list[tuple[str, bytes]]]:
    """`files` files per format, each of about `pages` pages (slides, sections) of text."""
    table = [["Site", "Nests", "Fledglings"]] + [[f"hide-{i}", str(i), str(i * 3)] for i in range(12)]
    out: dict[str, list[tuple[str, bytes]]] = {k: [] for k in ("markdown", "html", "pdf", "docx", "pptx")}
    for n in range(files):
        sections = [(f"Section {p}", [SENTENCE * 3 + f"Report {n}, page {p}."] * 4) for p in range(pages)]
        out["markdown"].append((f"r{n}.md", "\n\n".join(f"## {h}\n\n" + "\n\n".join(ps) for h, ps in sections).encode()))
        out["html"].append((f"r{n}.html", ("<html><body>" + "".join(
            f"<h2>{h}</h2>" + "".join(f"<p>{p}</p>" for p in ps) for h, ps in sections) + "</body></html>").encode()))
        pdf_pages = [[(16, h)] + [(9, SENTENCE[:95]), (9, SENTENCE[95:])] * 12 for h, _ in sections]
        out["pdf"].append((f"r{n}.pdf", make_pdf(pdf_pages, title=f"Report {n}")))
        parts = [part for h, ps in sections for part in [("h2", h)] + [("p", p) for p in ps]] + [("table", table)]
        out["docx"].append((f"r{n}.docx", make_docx(parts, title=f"Report {n}")))
        out["pptx"].append((f"r{n}.pptx", make_pptx([{"title": h, "bullets": [SENTENCE[:120]] * 5} for h, _ in sections])))
    return out


def floor(fmt: str, data: bytes) -> int:
    """Characters of text the bare library reads from the file."""
    if fmt in ("markdown", "html"):
        return sum(len(p) for p in data.decode("utf-8").split("\n\n"))
    if fmt == "pdf":
        import pypdfium2 as pdfium

        document = pdfium.PdfDocument(data)
        try:
            return sum(len(document[i].get_textpage().get_text_range()) for i in range(len(document)))
        finally:
            document.close()
    if fmt == "docx":
        import docx

        return sum(len(p.text) for p in docx.Document(io.BytesIO(data)).paragraphs)
    from pptx import Presentation

    return sum(len(s.text_frame.text) for slide in Presentation(io.BytesIO(data)).slides
               for s in slide.shapes if s.has_text_frame)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=40, help="files per format")
    parser.add_argument("--pages", type=int, default=8, help="pages (slides, sections) per file")
    args = parser.parse_args()
    files = corpus(args.files, args.pages)
    # The fork server starts once per process (it imports the parsers): timed apart from the rows.
    warm = timed(lambda: parse_files([SourceFile("w.pdf", Path("w.pdf"), 0, files["pdf"][0][1])]))
    rows = [("format", "files", "MB", "floor s", "parse s", "x floor", "ingest s", "x floor", "files/s ingest",
             "pages/s ingest")]
    for fmt, named in files.items():
        size = sum(len(d) for _, d in named) / 1e6
        floor_s = timed(lambda fmt=fmt, named=named: [floor(fmt, d) for _, d in named])
        parse_s = timed(lambda named=named: [parse_document(p, d) for p, d in named])
        sources = [SourceFile(p, Path(p), len(d), d) for p, d in named]
        ingest_s = timed(lambda sources=sources: parse_files(sources))
        pages = args.pages * len(named)
        rows.append((fmt, len(named), f"{size:.1f}", f"{floor_s:.2f}", f"{parse_s:.2f}", f"{parse_s / floor_s:.1f}",
                     f"{ingest_s:.2f}", f"{ingest_s / floor_s:.1f}", f"{len(named) / ingest_s:.0f}",
                     f"{pages / ingest_s:.0f}"))
    load = os.getloadavg()[0]
    print_table(f"Parse throughput per format ({os.cpu_count()} cores, load average {load:.1f}; floor: the bare "
                "library reading the text; ingest: parse_files as the documents step runs it)", rows)
    print(f"fork server start and first worker (once per process): {warm:.2f} s")


if __name__ == "__main__":
    main()
