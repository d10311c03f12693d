"""Binary-format files parsed in worker processes that are killed past the per-file time limit
(and replaced): PDFium and lxml run native code that no signal interrupts, and a crash in it
must cost one file, not the collection."""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..parsing import ParsedDocument, ParseError

# Modules the fork server imports once, so that every parse process and pool worker starts warm.
# Not the PDF, Word and PowerPoint libraries (~0.5-1 s together): a process imports one when it
# parses its first such file, so a corpus without them never pays for them. `orphans` first: it ends
# the fork server and its workers when their owner dies, even one killed while the others import.
FORKSERVER_PRELOAD = ["dagster_project.core.ingest.orphans", "dagster_project.core.ingest.pipeline", "markdown_it",
                      "bs4", "tokenizers"]
FILES_PER_WORKER = 200  # then a fresh process: whatever a library leaks stays bounded

Parse = Callable[[str, bytes], "ParsedDocument | ParseError"]


def _serve(connection, parse: Parse) -> None:
    while True:
        try:
            path, data = connection.recv()
        except EOFError:  # the parent is done
            return
        connection.send(parse(path, data))


class _Worker:
    """One parse process, started on first use and again after it was killed."""

    def __init__(self, context, parse: Parse) -> None:
        self.context, self.parse = context, parse
        self.process = self.connection = None
        self.served = 0

    def run(self, path: str, data: bytes, time_limit: float) -> ParsedDocument | ParseError:
        if self.process is None or self.served >= FILES_PER_WORKER or not self.process.is_alive():
            self.stop()
            self.connection, child = self.context.Pipe()
            self.process = self.context.Process(target=_serve, args=(child, self.parse), daemon=True)
            self.process.start()
            child.close()
            self.served = 0
        self.served += 1
        self.connection.send((path, data))
        if not self.connection.poll(time_limit):
            self.stop()
            return ParseError(f"parsing took over {time_limit:g} s and was stopped (PARSE_TIME_LIMIT_SECONDS): "
                              "split the file, raise the limit, or exclude it in corpus.yaml")
        try:
            return self.connection.recv()
        except EOFError:  # the process died without an answer
            self.process.join()
            code = self.process.exitcode
            self.stop()
            return ParseError(f"the parser crashed on this file (exit code {code}): re-save the file, or "
                              "exclude it in corpus.yaml; report it if it opens elsewhere")

    def stop(self) -> None:
        if self.process is not None:
            self.connection.close()  # an idle worker exits on end of input
            self.process.join(timeout=1)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.process = self.connection = None


def parse_isolated(paths: list[str], datas: list[bytes], parse: Parse, *, workers: int | None = None,
                   time_limit: float) -> list[ParsedDocument | ParseError]:
    """`parse(path, data)` for each file in worker processes (forked from the warm fork server),
    at most `workers` at a time, results in order."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)
    workers = max(1, min(workers or os.cpu_count() or 1, len(paths)))
    idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
    pool = [_Worker(context, parse) for _ in range(workers)]
    for worker in pool:
        idle.put(worker)

    def run(path: str, data: bytes) -> ParsedDocument | ParseError:
        worker = idle.get()
        try:
            return worker.run(path, data, time_limit)
        finally:
            idle.put(worker)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parse-isolated") as threads:
            return list(threads.map(run, paths, datas))
    finally:
        for worker in pool:
            worker.stop()
