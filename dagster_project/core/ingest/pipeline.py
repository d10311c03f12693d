"""The three ingestion steps as plain functions (documents, chunks, embeddings), each exact
and incremental: only new or changed files are parsed, only changed documents re-chunked,
only texts never embedded with the current model are sent to the embedder."""

from __future__ import annotations

import multiprocessing
import os
import posixpath
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from ..db.chunks import ChunkRow, DocumentToChunk
from ..db.documents import DocumentRow, FileIssue
from ..db.store import VectorStore
from ..embed.base import Embedder
from ..embed.batch import embed_in_batches
from ..live_status import publishing
from ..openai_batch import BatchPolicy
from ..refine.redaction import PRICING_VERSION, body_pricing_evidence, is_pricing_sensitive
from .chunking import CARD_KIND, ChunkDraft, ChunkSettings, chunk_blocks, chunk_context, embed_text
from .corpus import Collection, Shard, SourceFile, collection_version, matches_globs, read_sources, scan_collection
from .formats import BINARY_FORMATS, PARSE_TIME_LIMIT_SECONDS
from .formats.isolation import FORKSERVER_PRELOAD, parse_isolated
from .hashing import content_hash, stable_id
from .parsing import PARSER_VERSION, Block, ParsedDocument, ParseError, decode, parse_document
from .templating import MARKDOWN_SUFFIXES, TEMPLATING_VERSION, includes_fingerprint, render_markdown
from .tokens import TokenCounter

PARALLEL_PARSE_MIN_FILES = 24
PARSE_TX_FILES = 1000  # files parsed and stored per transaction on a big load: memory stays flat
CHUNK_TX_DOCUMENTS = 50  # documents re-chunked per transaction: a crash keeps finished batches
EMBED_TX_TEXTS = 1024  # texts embedded and stored per transaction: a failed call loses at most one batch
ANALYZE_AFTER_TEXTS = 5_000  # a load this big refreshes planner statistics
REBUILD_INDEX_MIN_TEXTS = 10_000
# A re-chunk this big, and of at least half the collection, builds its BM25 postings in one pass
# after the chunks instead of batch by batch (sql/0011_bm25_bulk.sql).
BULK_TERMS_MIN_DOCUMENTS = 200  # a load this big, and bigger than what is indexed, rebuilds the index


@dataclass
class StepReport:
    collection: str
    step: str
    counts: dict[str, int] = field(default_factory=dict)
    texts_embedded: int = 0
    tokens_embedded: int = 0
    seconds: float = 0.0
    issues: list[FileIssue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source_version: str | None = None  # documents: the data version of the files read (corpus.collection_version)

    @property
    def errors(self) -> list[FileIssue]:
        return [i for i in self.issues if i.severity == "error"]


# ------------------------------------------------------------------ documents

def _parse_one(path: str, data: bytes) -> ParsedDocument | ParseError:
    try:
        parsed = parse_document(path, data)
        parsed.pricing_evidence = body_pricing_evidence(parsed.title, (b.text for b in parsed.blocks))
        return parsed
    except ParseError as exc:
        return exc
    except Exception as exc:  # a parser library bug must not stop the collection
        return ParseError(f"parser failed ({type(exc).__name__}: {exc}); report this file", "error")


def _process_pool(workers: int, initializer=None, initargs: tuple = ()) -> ProcessPoolExecutor:
    # forkserver: safe to start from a threaded process (Dagster, psycopg pools). Workers fork
    # from a server that has already imported the parsers and the chunker, so each pool starts warm.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs)


def parse_files(files: list[SourceFile], workers: int | None = None,
                time_limit: float = PARSE_TIME_LIMIT_SECONDS) -> list[ParsedDocument | ParseError]:
    """Parse on every core when there are enough files to pay for the worker start-up; PDF, Word
    and PowerPoint files each in a process of its own, stopped past `time_limit` seconds."""
    binary = [i for i, f in enumerate(files) if posixpath.splitext(f.path)[1].lower() in BINARY_FORMATS]
    if binary:
        results: list = [None] * len(files)
        for i, parsed in zip(binary, parse_isolated([files[i].path for i in binary], [files[i].data for i in binary],
                                                    _parse_one, workers=workers, time_limit=time_limit)):
            results[i] = parsed
        rest = [i for i in range(len(files)) if results[i] is None]
        for i, parsed in zip(rest, parse_files([files[i] for i in rest], workers)):
            results[i] = parsed
        return results
    workers = workers or os.cpu_count() or 1
    if workers < 2 or len(files) < PARALLEL_PARSE_MIN_FILES:
        return [_parse_one(f.path, f.data) for f in files]
    with _process_pool(workers) as pool:
        # Small tasks: one long file late in a big task left the other core idle at the end.
        return list(pool.map(_parse_one, [f.path for f in files], [f.data for f in files],
                             chunksize=max(1, min(16, len(files) // (workers * 16)))))


def _truthy(value) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "y", "on"}


def source_version(collection: Collection, includes: str = "") -> str:
    """Everything besides a file's bytes that shapes its document row: parser, defaults,
    templating, document fields, and the digest of the files it includes (if any)."""
    version = content_hash("\0".join((
        PARSER_VERSION, collection.defaults.model_dump_json(), TEMPLATING_VERSION,
        collection.markdown.model_dump_json(), ",".join(collection.document_fields)))).hex()[:16]
    return f"{version}+{includes}" if includes else version


def _is_markdown(path: str) -> bool:
    return path.lower().endswith(MARKDOWN_SUFFIXES)


class _CollectionFiles:
    """The collection's files by path, read and decoded on demand: what includes are resolved
    from (in a sharded collection, from every shard). Only included files' texts are kept."""

    def __init__(self, collection: Collection, files: list[SourceFile]) -> None:
        self._collection = collection
        self._hashes = {f.path: f.content_hash for f in files if f.problem is None}
        self._texts: dict[str, str | None] = {}

    def refusal(self, path: str) -> str | None:
        """Why the file at `path`, which exists, is not read for an include; None when it is read
        or there is no such file."""
        c = self._collection
        target = c.root / path
        if not os.path.lexists(target):
            return None
        if path not in self._hashes and (not matches_globs(path, c.include) or matches_globs(path, c.exclude)):
            return "not selected by the collection's include/exclude globs"
        # Never through a link out of the root (scan_collection's rule for what it reads).
        if not (c.follow_external_symlinks or target.resolve().is_relative_to(c.root.resolve())):
            return "a symlink out of the collection root: refused"
        return None

    def _read(self, path: str) -> bytes | None:
        if self.refusal(path) is not None:
            return None
        target = self._collection.root / path
        try:
            return target.read_bytes() if target.is_file() else None
        except OSError:
            return None

    def own_text(self, path: str) -> str | None:
        """A scanned file's text, read now and not kept (a first load reads every file)."""
        data = self._read(path)
        if data is None:
            return None
        return (data[3:] if data.startswith(b"\xef\xbb\xbf") else data).decode("utf-8", errors="replace")

    def text(self, path: str) -> str | None:
        """An included file's text, kept: the same snippets are included by many pages."""
        if path not in self._texts:
            self._texts[path] = self.own_text(path)
        return self._texts[path]

    def hash(self, path: str) -> bytes | None:
        if path in self._hashes:
            return self._hashes[path]
        text = self.text(path)  # another shard's file
        return content_hash(text.encode()) if text is not None else None


def file_source_version(collection: Collection, source: SourceFile, files: _CollectionFiles) -> str:
    """source_version for this file: a Markdown file's includes are part of what it yields."""
    text = files.own_text(source.path) if _is_markdown(source.path) else None
    if text is None:
        return source_version(collection)
    return source_version(collection, includes_fingerprint(source.path, text, collection.markdown, files.hash, files.text))


def preprocess(collection: Collection, source: SourceFile, files: _CollectionFiles) -> tuple[SourceFile, list[str]]:
    """A Markdown file with its templating stripped and includes resolved (templating.py), as
    the parser should see it; other files as they are."""
    if not _is_markdown(source.path) or source.data is None or collection.markdown.templates == "keep":
        return source, []
    try:
        text, warnings = decode(source.data)  # the parser sees valid UTF-8 now: it cannot warn itself
    except ParseError:
        return source, []  # binary: the parser refuses it
    text, rendered = render_markdown(source.path, text, collection.markdown, files.text, files.refusal)
    return replace(source, data=text.encode("utf-8")), warnings + rendered


MAX_CARD_ITEMS = 50  # items of a list a dotted document field reads (`features.details`)


def _field_values(value, keys: list[str]) -> list:
    """The values at a dotted field (`hero.tagline`, `features.details`) of front matter: through
    mappings by key (lower case, `_` for `-`, as top-level keys are stored) and through lists item
    by item, at most MAX_CARD_ITEMS of them."""
    if not keys:
        return [value]
    if isinstance(value, dict):
        key = keys[0]
        for k, v in value.items():
            if str(k).strip().lower().replace("-", "_") == key:
                return _field_values(v, keys[1:])
        return []
    if isinstance(value, list):
        return [found for item in value[:MAX_CARD_ITEMS] if isinstance(item, dict) for found in _field_values(item, keys)]
    return []


def document_card(parsed: ParsedDocument, fields: list[str]) -> str:
    """What the document says of itself in its metadata (description, summary, ...), one line a
    field; the title its metadata gives, for a document with no body text, so a page of front
    matter alone can still be found (an emptied file has none: it leaves search)."""
    lines = []
    for name in fields:
        for value in _field_values(parsed.metadata, name.split(".")):
            if isinstance(value, (list, tuple)):
                value = ", ".join(str(v) for v in value if isinstance(v, (str, int, float)) and str(v).strip())
            if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
                lines.append(" ".join(str(value).split()))
    if not lines and not parsed.blocks and str(parsed.metadata.get("title") or "").strip():
        lines.append(parsed.title)
    return "\n".join(dict.fromkeys(lines))


def declared_pricing(collection: Collection, metadata: dict) -> bool:
    """What the manifest and the file's own metadata say (the file wins), before detection."""
    if "pricing_sensitive" in metadata:
        return _truthy(metadata["pricing_sensitive"])
    return collection.defaults.pricing_sensitive


def recheck_pricing(store: VectorStore, collection: Collection, shard: Shard) -> int:
    """Decide pricing_sensitive again for the stored documents decided under older rules (or
    none: rows from before sql/0023), from their stored text: an unchanged file is not re-parsed.
    Returns how many changed their value."""
    changed = 0
    for rows in store.documents_to_recheck_pricing(collection.name, PRICING_VERSION, CHUNK_TX_DOCUMENTS * 20, shard):
        changed += store.record_pricing(collection.name, [
            (i, is_pricing_sensitive(declared_pricing(collection, metadata or {}), title, blocks or []))
            for i, metadata, title, blocks in rows], PRICING_VERSION)
    return changed


def build_document_row(collection: Collection, source: SourceFile, parsed: ParsedDocument,
                       version: str | None = None) -> tuple[DocumentRow, list[str]]:
    """Manifest defaults, overridden by the file's own metadata. The document card (its
    descriptive metadata) is the first block, in a section of its own (chunking.py)."""
    meta = parsed.metadata
    fields = collection.defaults.model_dump()
    warnings = list(parsed.warnings)
    for key in ("category", "doc_type", "status"):
        if meta.get(key) not in (None, ""):
            fields[key] = str(meta[key])
    if "embed_mode" in meta:
        mode = str(meta["embed_mode"]).strip().lower()
        if mode in ("full", "metadata_only", "skip"):
            fields["embed_mode"] = mode
        else:
            # An unknown mode must not widen what is indexed: fall back to the stricter choice.
            fields["embed_mode"] = "skip" if fields["embed_mode"] == "skip" else "metadata_only"
            warnings.append(f"embed_mode {meta['embed_mode']!r} is not full, metadata_only or skip: "
                            f"using {fields['embed_mode']!r}")
    card = document_card(parsed, collection.document_fields)
    blocks = ([Block(CARD_KIND, card, [])] if card else []) + parsed.blocks
    stored_blocks = [{"kind": b.kind, "text": b.text, "path": b.heading_path} | ({"page": b.page} if b.page else {})
                     for b in blocks]
    fields["pricing_sensitive"] = is_pricing_sensitive(declared_pricing(collection, meta), parsed.title, stored_blocks,
                                                       parsed.pricing_evidence)
    row = DocumentRow(
        id=stable_id("document", collection.name, source.path), file_stat=source.signature,
        collection=collection.name, path=source.path, content_hash=source.content_hash,
        size_bytes=source.size, format=parsed.format, title=parsed.title,
        metadata=meta, headings=parsed.headings, blocks=stored_blocks,
        source_version=version or source_version(collection), pricing_version=PRICING_VERSION, **fields,
    )
    return row, warnings


@dataclass
class DocumentChanges:
    report: StepReport
    rows: list[DocumentRow]  # to upsert
    deleted: list[str]  # paths that vanished
    examined: list[str]  # paths read or parsed now: their file issues are replaced
    present: list[str]  # every path on disk


@dataclass
class DocumentScan:
    """A collection's files against the stored documents, before any parsing."""
    report: StepReport
    files: list[SourceFile]
    to_parse: list[SourceFile]
    stored: dict[str, tuple[bytes, str]]
    deleted: list[str]
    unchanged_signatures: list[tuple[str, bytes, bytes]]  # (path, signature, hash) to record
    shard: Shard
    by_path: _CollectionFiles  # what includes are resolved from
    versions: dict[str, str]  # path -> source version, of the files to parse


def _known_signatures(store: VectorStore, collection: Collection, shard: Shard) -> dict[str, tuple[bytes, bytes]]:
    return {p: v for p, v in store.file_signatures(collection.name).items() if shard.holds(p)}


def observed_version(store: VectorStore, collection: Collection, *, max_file_bytes: int,
                     shard: Shard | None = None) -> str:
    """The data version the documents step would record for the collection (or shard) now, from a
    scan that reads only the files whose stored signature no longer matches: observing 100k
    unchanged files stats them instead of reading them."""
    shard = shard or Shard(collection.name)
    return collection_version(collection, scan_collection(collection, max_file_bytes,
                                                          _known_signatures(store, collection, shard), shard))


def scan_documents(store: VectorStore, collection: Collection, *, max_file_bytes: int,
                   shard: Shard | None = None) -> DocumentScan:
    """Stat and hash the collection's files (a file whose stored signature still matches is not
    read) and sort them into unchanged, to parse, failed and deleted. Writes nothing. `shard`:
    that shard's files and documents only (a file that moved to another shard is deleted here
    and added there)."""
    started = time.perf_counter()
    report = StepReport(collection.name, "documents")
    shard = shard or Shard(collection.name)
    known = _known_signatures(store, collection, shard)
    files = scan_collection(collection, max_file_bytes, known, shard)
    stored = {p: v for p, v in store.document_versions(collection.name).items() if shard.holds(p)}
    plain = source_version(collection)
    by_path = _CollectionFiles(collection, files)
    versions: dict[str, str] = {}
    deleted = sorted(set(stored) - {f.path for f in files if not f.withdrawn})
    to_parse: list[SourceFile] = []
    signatures = []
    counts = Counter(new=0, changed=0, unchanged=0, deleted=len(deleted), failed=0, skipped=0)
    for f in files:
        if f.problem is not None:
            # A file that exists but cannot be read keeps its last good version in the index.
            report.issues.append(FileIssue(f.path, f.severity, f.problem))
            counts["failed" if f.severity == "error" else "skipped"] += 1
        elif stored.get(f.path) == (f.content_hash, plain) or stored.get(f.path) == (
                f.content_hash, versions.setdefault(f.path, file_source_version(collection, f, by_path))):
            # Same bytes stored under the plain version: the file includes nothing, so nothing
            # else can change what it yields, and it is not read (a signature-matched scan).
            counts["unchanged"] += 1
            if f.signature is not None and known.get(f.path, (None,))[0] != f.signature:
                signatures.append((f.path, f.signature, f.content_hash))
        else:
            to_parse.append(f)
    report.counts = dict(counts)
    report.source_version = collection_version(collection, files)
    report.seconds = time.perf_counter() - started
    return DocumentScan(report, files, to_parse, stored, deleted, signatures, shard, by_path, versions)


def parse_documents(collection: Collection, scan: DocumentScan, progress=None, batch_files: int | None = None,
                    parse_time_limit: float = PARSE_TIME_LIMIT_SECONDS,
                    ) -> Iterator[tuple[list[SourceFile], list[DocumentRow]]]:
    """The files to parse, read and parsed batch by batch (only one batch's bytes and rows in
    memory): each batch's files and the rows of those that parsed. Counts and file issues go to
    scan.report."""
    report, counts = scan.report, scan.report.counts
    batch_files = batch_files or PARSE_TX_FILES
    done = 0
    for start in range(0, len(scan.to_parse), batch_files):
        batch = read_sources(scan.to_parse[start:start + batch_files])
        readable = [f for f in batch if f.problem is None]
        for f in batch:
            if f.problem is not None:
                report.issues.append(FileIssue(f.path, "error", f.problem))
                counts["failed"] += 1
        rendered = [preprocess(collection, f, scan.by_path) for f in readable]
        rows: list[DocumentRow] = []
        for f, (_, render_warnings), parsed in zip(
                readable, rendered, parse_files([r for r, _ in rendered], time_limit=parse_time_limit)):
            done += 1
            if progress is not None:
                progress(done, len(scan.to_parse))
            if isinstance(parsed, ParseError):
                report.issues.append(FileIssue(f.path, parsed.severity, parsed.reason))
                counts["failed" if parsed.severity == "error" else "skipped"] += 1
                continue
            version = scan.versions.get(f.path) or file_source_version(collection, f, scan.by_path)
            row, warnings = build_document_row(collection, f, parsed, version)
            warnings.extend(render_warnings)
            report.issues.extend(FileIssue(f.path, "warning", w) for w in warnings)
            counts["changed" if f.path in scan.stored else "new"] += 1
            rows.append(row)
        yield batch, rows


def diff_documents(store: VectorStore, collection: Collection, *, max_file_bytes: int,
                   progress=None) -> DocumentChanges:
    """Scan the collection against the stored hashes and parse only new or changed files, all
    in memory (a dry run's plan). Writes nothing. `progress(done, total)` follows the parsing."""
    scan = scan_documents(store, collection, max_file_bytes=max_file_bytes)
    started = time.perf_counter()
    rows = [row for _, batch_rows in parse_documents(collection, scan, progress) for row in batch_rows]
    scan.report.seconds += time.perf_counter() - started
    examined = [f.path for f in scan.files if f.problem is not None] + [f.path for f in scan.to_parse]
    return DocumentChanges(scan.report, rows, scan.deleted, examined, [f.path for f in scan.files])


def sync_documents(store: VectorStore, collection: Collection, *, max_file_bytes: int,
                   progress=None, shard: Shard | None = None,
                   parse_time_limit: float = PARSE_TIME_LIMIT_SECONDS) -> StepReport:
    shard = shard or Shard(collection.name)
    with store.step_lock(shard.key), publishing(store.conninfo, collection.name, "documents", progress) as live:
        return _sync_documents(store, collection, max_file_bytes, live, shard, parse_time_limit)


def _sync_documents(store: VectorStore, collection: Collection, max_file_bytes: int, progress,
                    shard: Shard, parse_time_limit: float) -> StepReport:
    """Parsed rows are stored batch by batch as they come (one writer thread, while the next
    batch parses); the last transaction also deletes vanished files and replaces the file
    issues, so a change that fits one batch is applied in one transaction, as before. A crash
    keeps the finished batches: the rerun finds them unchanged."""
    store.assign_tenant(collection.name, collection.tenant)
    scan = scan_documents(store, collection, max_file_bytes=max_file_bytes, shard=shard)
    report = scan.report
    started = time.perf_counter()
    store.record_signatures(collection.name, scan.unchanged_signatures)
    scan_issues, mark = list(report.issues), len(report.issues)  # unreadable files: with the last transaction
    last: tuple[list[SourceFile], list[DocumentRow], list[FileIssue]] = ([], [], [])
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="document-writer") as writer:
        writing = None
        for files, rows in parse_documents(collection, scan, progress, parse_time_limit=parse_time_limit):
            if last[0]:
                if writing is not None:
                    writing.result()
                writing = writer.submit(store.apply_documents, collection.name, last[1], [], last[2],
                                        [f.path for f in last[0]], None)
            last, mark = (files, rows, report.issues[mark:]), len(report.issues)
        if writing is not None:
            writing.result()
    examined = [f.path for f in scan.files if f.problem is not None] + [f.path for f in last[0]]
    report.counts["chunks_removed"] = store.apply_documents(
        collection.name, last[1], scan.deleted, scan_issues + last[2], examined, [f.path for f in scan.files],
        shard=shard)
    if flipped := recheck_pricing(store, collection, shard):
        report.counts["pricing_changed"] = flipped
    if store.vacuum_chunks_if_churned(report.counts["chunks_removed"]):
        report.counts["vacuumed"] = 1
    report.seconds += time.perf_counter() - started
    return report


# ------------------------------------------------------------------ chunks

def _metadata_text(document: DocumentToChunk) -> str:
    lines = [document.title] + [f"{k}: {v}" for k, v in sorted(document.metadata.items())
                                if k != "title" and isinstance(v, (str, int, float))]
    return "\n".join(lines)


def build_chunks(document: DocumentToChunk, collection: str, settings: ChunkSettings,
                 counter: TokenCounter) -> list[ChunkRow]:
    """Chunks carry their context (title and heading path), which is embedded and hashed with
    them; the stored text stays as written."""
    if document.embed_mode == "skip":
        return []
    if document.embed_mode == "metadata_only":
        text = _metadata_text(document)
        drafts = [ChunkDraft([], text, counter.count([text])[0])]
    else:
        blocks = [Block(b["kind"], b["text"], b["path"], b.get("page")) for b in document.blocks]
        drafts = chunk_blocks(blocks, settings, counter)
    contexts: dict[tuple, tuple[str, int]] = {}
    seen: Counter[bytes] = Counter()
    rows = []
    for ordinal, d in enumerate(drafts):
        key = tuple(d.heading_path)
        if key not in contexts:
            contexts[key] = chunk_context(document.title, d.heading_path, settings, counter)
        context, context_tokens = contexts[key]
        digest = content_hash(embed_text(context, d.text, document.pricing_sensitive))
        occurrence = seen[digest]
        seen[digest] += 1
        rows.append(ChunkRow(stable_id("chunk", document.id.bytes, digest, occurrence), document.id,
                             collection, ordinal, d.heading_path, d.text, d.token_count + context_tokens, digest,
                             context, d.pages, d.card))
    return rows


def sync_chunks(store: VectorStore, collection: str, settings: ChunkSettings,
                counter: TokenCounter, *, progress=None, shard: Shard | None = None) -> StepReport:
    shard = shard or Shard(collection)
    with store.step_lock(shard.key), publishing(store.conninfo, collection, "chunks", progress) as live:
        return _sync_chunks(store, collection, settings, counter, live, shard)


_worker_counter: TokenCounter | None = None  # a chunk worker's own counter, built once per worker


def _init_chunk_worker(counter: TokenCounter) -> None:
    global _worker_counter
    _worker_counter = counter


def _chunk_in_worker(documents: list[DocumentToChunk], collection: str, settings: ChunkSettings) -> list[ChunkRow]:
    return [row for d in documents for row in build_chunks(d, collection, settings, _worker_counter)]


def chunk_batches(batches: Iterable[list[DocumentToChunk]], collection: str, settings: ChunkSettings,
                  counter: TokenCounter, workers: int | None = None, total: int | None = None) -> Iterator[list[ChunkRow]]:
    """The chunks of each batch of documents, in order; on every core when there are enough
    documents to pay for the workers' start-up (token counting is most of chunking). `total`:
    the number of documents, when `batches` is a lazy stream."""
    workers = workers or os.cpu_count() or 1
    if total is None:
        batches = list(batches)
        total = sum(map(len, batches))
    if workers < 2 or total < PARALLEL_PARSE_MIN_FILES:
        for batch in batches:
            yield [row for d in batch for row in build_chunks(d, collection, settings, counter)]
        return
    with _process_pool(workers, _init_chunk_worker, (counter,)) as pool:
        # A bounded window of batches in flight keeps memory flat on a huge collection.
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(_chunk_in_worker, batch, collection, settings))
            if len(pending) >= workers * 4:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _sync_chunks(store: VectorStore, collection: str, settings: ChunkSettings, counter: TokenCounter,
                 progress, shard: Shard) -> StepReport:
    started = time.perf_counter()
    report = StepReport(collection, "chunks")
    version = settings.version(counter)
    documents = store.document_ids_to_chunk(collection, version, shard)
    counts = Counter(documents=len(documents), new=0, unchanged=0, removed=0, chunks=0)
    if shard.count > 1:
        # Shards write one collection's BM25 statistics at once: each transaction keeps them
        # whole (triggers), never deferred, so no shard's bulk build can miss a sibling's chunks.
        defer = False
        if store.text_index_pending(collection):  # owed by an unsharded load that died
            counts["postings_built"] = store.build_text_index(collection)
    else:
        defer = store.text_index_pending(collection) or (
            len(documents) >= BULK_TERMS_MIN_DOCUMENTS and 2 * len(documents) >= len(store.document_versions(collection)))
    if defer:
        store.defer_text_index(collection)
    loaded: deque[list[DocumentToChunk]] = deque()  # batches handed to the chunker, awaiting their rows

    def load_batches() -> Iterator[list[DocumentToChunk]]:
        # Blocks are loaded a batch at a time, as the chunker asks: a first load of 100k files
        # never holds every document's text at once.
        for start in range(0, len(documents), CHUNK_TX_DOCUMENTS):
            loaded.append(store.documents_by_id(documents[start:start + CHUNK_TX_DOCUMENTS]))
            yield loaded[-1]

    # Chunking runs in worker processes; one writer thread stores a batch (and PostgreSQL indexes
    # its text for BM25) while the next ones are chunked. Batches still commit one at a time, in order.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-writer") as writer:
        writing, done = None, 0
        for rows in chunk_batches(load_batches(), collection, settings, counter, total=len(documents)):
            batch = loaded.popleft()
            counts["chunks"] += len(rows)
            if writing is not None:
                counts.update(writing.result())
                if progress is not None:
                    progress(done, len(documents))
            writing = writer.submit(store.replace_chunks, collection, batch, rows, version,
                                    settings.text_search_config, defer_terms=defer)
            done += len(batch)
        if writing is not None:
            counts.update(writing.result())
            if progress is not None:
                progress(len(documents), len(documents))
    if defer:
        counts["postings_built"] = store.build_text_index(collection)
    if store.vacuum_chunks_if_churned(counts["rows_written"] + counts["rows_moved"] + counts["rows_deleted"]):
        counts["vacuumed"] = 1
    report.counts = dict(counts)
    report.seconds = time.perf_counter() - started
    return report


# ------------------------------------------------------------------ embeddings

def adopt_stored_size(store: VectorStore, embedder: Embedder) -> None:
    """A server-side model of unknown size that was used before: take its size from the store,
    so reading `embedder.model` costs no probe request."""
    if getattr(embedder, "needs_dims", False):
        stored = store.resolve_model_key(f"openai:{embedder.name}:auto")
        if not stored.endswith(":auto"):
            embedder.adopt_dims(int(stored.rsplit(":", 1)[1]))


def sync_embeddings(store: VectorStore, collection: str, *embedders: Embedder, progress=None,
                    shard: Shard | None = None, batch: BatchPolicy = BatchPolicy()) -> StepReport:
    """Vectors for the collection's texts that have none, for each model in turn: during a model
    change, the active model first (search serves it), then the candidate beside it. The first
    model that holds vectors becomes the active one (also in place of an active model that holds
    none). `batch`: the candidate's texts go through the Batch
    API when there are at least `min_items` of them (an OpenAI embedder only; search does not
    wait on the candidate, so hours of batch latency cost nothing but the switch)."""
    shard = shard or Shard(collection)
    with store.step_lock(shard.key), publishing(store.conninfo, collection, "embeddings", progress) as live:
        report = StepReport(collection, "embeddings")
        for position, embedder in enumerate(embedders):
            _sync_embeddings(store, collection, embedder, live, report, shard, batch if position else BatchPolicy())
        return report


def _sync_embeddings(store: VectorStore, collection: str, embedder: Embedder, progress, report: StepReport,
                     shard: Shard, batch: BatchPolicy = BatchPolicy()) -> None:
    started = time.perf_counter()
    adopt_stored_size(store, embedder)
    model_id = store.ensure_model(embedder.model)
    vectors_removed = store.drop_unreferenced_vectors()
    # Counted, then streamed a batch at a time (never every text in memory).
    total, pending = store.text_counts(collection, model_id, shard)
    counts = {"texts": total, "reused": total - pending, "embedded": 0, "vectors_removed": vectors_removed}
    if pending >= REBUILD_INDEX_MIN_TEXTS and store.has_index(model_id) and pending > store.vector_count(model_id):
        store.drop_index(model_id)
    if batch.min_items and pending and hasattr(embedder, "batch_bodies"):
        # A batch file holds them all anyway: the one path that lists the pending texts in memory.
        listed = [text for part in store.texts_to_embed(collection, model_id, EMBED_TX_TEXTS, shard) for text in part]
        batched = embed_in_batches(store, collection, embedder, model_id, listed, batch)
        counts["embedded_by_batch"] = batched.embedded
        report.texts_embedded += batched.embedded
        report.tokens_embedded += batched.tokens
        report.warnings.extend(w for w in batched.warnings if w not in report.warnings)
        _, pending = store.text_counts(collection, model_id, shard)  # what no batch answered goes live

    def stored(part: list[tuple[bytes, str, int]], result) -> None:
        counts["embedded"] += len(part)
        report.texts_embedded += len(part)
        report.tokens_embedded += result.tokens if result.tokens is not None else sum(n for _, _, n in part)
        report.warnings.extend(w for w in result.warnings if w not in report.warnings)
        if progress is not None:
            progress(counts["embedded"], max(pending, counts["embedded"]))  # a concurrent run may add texts

    # One writer thread stores a batch while the next one is embedded (numpy hashing and an
    # API call both leave the GIL), as in the chunks step; batches still commit one at a time.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vector-writer") as writer:
        writing = None
        for part in store.texts_to_embed(collection, model_id, EMBED_TX_TEXTS, shard) if pending else ():
            result = embedder.embed([text for _, text, _ in part])  # context + text, as hashed
            if writing is not None:
                writing[0].result()
                stored(*writing[1:])
            writing = (writer.submit(store.write_embeddings, model_id, [h for h, _, _ in part], result.vectors),
                       part, result)
        if writing is not None:
            writing[0].result()
            stored(*writing[1:])
    counts["index_built"] = int(store.ensure_index(model_id, embedder.model.dims, report.warnings))
    if counts["index_built"] or counts["embedded"] >= ANALYZE_AFTER_TEXTS:
        store.analyze()
    # Only once it holds vectors: a model whose first build failed must not become the one search serves.
    replaced = store.activate_built_model(model_id)
    counts["activated"] = int(replaced is not None)
    if replaced:
        report.warnings.append(f"{embedder.model.key} is now the active model (search serves it): the active "
                               f"model {replaced} held no vector (its first build never embedded anything)")
    # Counts add up over the models; "texts" is the collection's, whatever the number of models.
    for name, value in counts.items():
        report.counts[name] = value if name == "texts" else report.counts.get(name, 0) + value
    report.seconds += time.perf_counter() - started


# ------------------------------------------------------------------ dry run

def plan_collection(store: VectorStore, collection: Collection, *, max_file_bytes: int,
                    settings: ChunkSettings, counter: TokenCounter, model_key: str) -> dict:
    """What an ingest would do, exactly, without writing or embedding anything: files are
    parsed and chunked in memory and their chunk texts looked up among the stored vectors."""
    changes = diff_documents(store, collection, max_file_bytes=max_file_bytes)
    report, rows, deleted = changes.report, changes.rows, changes.deleted
    replaced = {r.id for r in rows}
    stale = [d for d in store.documents_to_chunk(collection.name, settings.version(counter))
             if d.id not in replaced]
    fresh = [DocumentToChunk(r.id, r.path, r.content_hash, r.title, r.embed_mode, r.metadata, r.blocks,
                             r.pricing_sensitive) for r in rows]
    rechunked = {d.id for d in stale} | replaced | {
        i for i in store.document_ids(collection.name, deleted)}
    hashes = {c.content_hash for d in stale + fresh for c in build_chunks(d, collection.name, settings, counter)}
    hashes |= store.chunk_hashes(collection.name, exclude_documents=rechunked)
    embedded = store.embedded_hashes(store.resolve_model_key(model_key), hashes)
    return {"documents": {k: report.counts[k] for k in ("new", "changed", "unchanged", "deleted")},
            "rechunked_documents": len(stale) + len(fresh), "texts": len(hashes),
            "embedded": len(hashes - embedded), "reused": len(embedded),
            "errors": [{"path": i.path, "reason": i.reason} for i in report.errors],
            "warnings": [{"path": i.path, "reason": i.reason} for i in report.issues if i.severity == "warning"]}


def ingest_collection(store: VectorStore, collection: Collection, *, embedder: Embedder,
                      chunk_settings: ChunkSettings, max_file_bytes: int) -> dict[str, StepReport]:
    """The three steps in order, without Dagster: for tests, benchmarks and scripts. The
    assets run the same functions one per asset."""
    return {
        "documents": sync_documents(store, collection, max_file_bytes=max_file_bytes),
        "chunks": sync_chunks(store, collection.name, chunk_settings, embedder.token_counter),
        "embeddings": sync_embeddings(store, collection.name, embedder),
    }
