"""Binary-format files parsed each in a process of its own, killed past the per-file time limit:
PDFium and lxml run native code that no signal interrupts, and a crash in it must cost one file,
not the collection."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..parsing import ParsedDocument, ParseError

# Modules the fork server imports once, so that every parse process and pool worker starts warm.
FORKSERVER_PRELOAD = ["dagster_project.core.ingest.pipeline", "docutils.parsers.rst", "markdown_it", "bs4",
                      "tokenizers", "pypdfium2", "docx", "pptx"]

Parse = Callable[[str, bytes], "ParsedDocument | ParseError"]


def _child(sender, parse: Parse, path: str, data: bytes) -> None:
    try:
        sender.send(parse(path, data))
    finally:
        sender.close()


def _parse_in_process(context, parse: Parse, path: str, data: bytes, time_limit: float) -> ParsedDocument | ParseError:
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, parse, path, data), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(time_limit):
            return ParseError(f"parsing took over {time_limit:g} s and was stopped (PARSE_TIME_LIMIT_SECONDS): "
                              "split the file, raise the limit, or exclude it in corpus.yaml")
        try:
            return receiver.recv()
        except EOFError:  # the process died without an answer
            process.join()
            return ParseError(f"the parser crashed on this file (exit code {process.exitcode}): re-save the file, "
                              "or exclude it in corpus.yaml; report it if it opens elsewhere")
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()


def parse_isolated(paths: list[str], datas: list[bytes], parse: Parse, *, workers: int | None = None,
                   time_limit: float) -> list[ParsedDocument | ParseError]:
    """`parse(path, data)` for each file in a new process (forked from the warm fork server), at
    most `workers` at a time, in order."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)
    workers = max(1, min(workers or os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parse-isolated") as pool:
        return list(pool.map(lambda p, d: _parse_in_process(context, parse, p, d, time_limit), paths, datas))
