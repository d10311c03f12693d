"""Ingest benchmark on ../shared/corpora/peps: full ingest in process and the whole `refinery
ingest` command, against a naive floor measured in the same run (read + paragraph split + numpy
hashing + binary COPY, what the simplest loader does) and the product's own work floor (its
parse + chunk, plus binary COPY of the same rows); a 1% edit, a no-change rerun, Dagster's
fixed cost, and (with --local N) the local embedder on N files against embedding alone.
Prints tables; pass/fail is for people, not for CI."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgvector.psycopg import register_vector  # noqa: E402

from bench.common import PEPS, PROJECT_ROOT, Timer, embedded_server, fresh_database, print_table  # noqa: E402
from dagster_project.core.db.chunks import DocumentToChunk  # noqa: E402
from dagster_project.core.db.store import VectorStore  # noqa: E402
from dagster_project.core.embed.local import HashEmbedder  # noqa: E402
from dagster_project.core.ingest.chunking import ChunkSettings, embed_text  # noqa: E402
from dagster_project.core.ingest.corpus import load_manifest, read_sources, scan_collection  # noqa: E402
from dagster_project.core.ingest.pipeline import (  # noqa: E402
    build_chunks, build_document_row, ingest_collection, parse_files, sync_chunks, sync_documents, sync_embeddings)

MAX_BYTES = 20_000_000


def make_corpus(files: list[Path]) -> tuple[Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="refinery-corpus-"))
    (root / "peps").mkdir()
    for f in files:
        shutil.copy(f, root / "peps" / f.name)
    manifest = root / "corpus.yaml"
    manifest.write_text("collections:\n  peps:\n    root: peps\n    include: ['**/*.rst']\n")
    return root, manifest


def _paragraph_batches(files: list[Path], size: int = 20_000):
    paths: list[str] = []
    texts: list[str] = []
    for f in files:
        for paragraph in f.read_text("utf-8", errors="replace").split("\n\n"):
            if paragraph.strip():
                paths.append(f.name)
                texts.append(paragraph.strip())
        if len(texts) >= size:
            yield paths, texts
            paths, texts = [], []
    if texts:
        yield paths, texts


def naive_floor(server: str, files: list[Path], embedder) -> float:
    """What the simplest loader does: read each file, split it on blank lines, hash every
    paragraph with numpy, binary COPY them with their vectors into one keyed table."""
    url = fresh_database(server, migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"CREATE TABLE naive_chunks (id bigint PRIMARY KEY, path text, text text, "
                     f"embedding vector({embedder.model.dims}))")
        register_vector(conn)
        with Timer() as t, conn.cursor().copy("COPY naive_chunks FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "text", "vector"])
            rows = 0
            for paths, texts in _paragraph_batches(files):  # in batches: 100k files do not fit in memory at once
                for row in zip(paths, texts, embedder.embed(texts).vectors):
                    copy.write_row((rows, *row))
                    rows += 1
    return t.seconds


class CpuClock:
    """CPU seconds, which other sessions' load inflates far less than wall time: of this process
    (all its threads), of its worker processes (the forkserver's pool, live or reaped), and of
    the PostgreSQL server (every backend and parallel worker, live or reaped). Linux /proc only."""

    def __init__(self, server: str) -> None:
        with psycopg.connect(server) as conn:
            data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        self.postmaster = int(Path(data_directory, "postmaster.pid").read_text().split()[0])
        self.tick = os.sysconf("SC_CLK_TCK")

    def _stat(self, pid: int) -> tuple[int, list[float]]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), [int(x) / self.tick for x in fields[11:15]]  # ppid; utime stime cutime cstime

    def _tree(self, root: int, own_children: bool) -> float:
        """CPU of the processes under `root` (not root itself), live ones and those they reaped."""
        parents: dict[int, list[tuple[int, list[float]]]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid, times = self._stat(int(entry))
                except (OSError, IndexError):
                    continue
                parents.setdefault(ppid, []).append((int(entry), times))
        total, todo = 0.0, [root]
        while todo:
            for pid, (user, system, child_user, child_system) in parents.get(todo.pop(), []):
                total += user + system + child_user + child_system
                todo.append(pid)
        _, (_, _, child_user, child_system) = self._stat(root)
        return total + (child_user + child_system if own_children else 0.0)

    def read(self) -> dict[str, float]:
        own = os.times()
        workers = self._tree(os.getpid(), own_children=True)
        _, (user, system, child_user, child_system) = self._stat(self.postmaster)
        postgres = self._tree(self.postmaster, own_children=False) + user + system + child_user + child_system
        return {"python": own.user + own.system, "workers": workers, "postgres": postgres}


def timed_ingest(store: VectorStore, collection, embedder, settings: ChunkSettings, clock: CpuClock):
    """ingest_collection's three steps, with the CPU seconds each one took."""
    steps = {"documents": lambda: sync_documents(store, collection, max_file_bytes=MAX_BYTES),
             "chunks": lambda: sync_chunks(store, collection.name, settings, embedder.token_counter),
             "embeddings": lambda: sync_embeddings(store, collection.name, embedder)}
    reports, cpu = {}, {}
    for name, step in steps.items():
        before = clock.read()
        reports[name] = step()
        cpu[name] = {k: v - before[k] for k, v in clock.read().items()}
    return reports, cpu


def command_run(server: str, manifest_path: Path) -> float:
    """`refinery ingest` as a user runs it: a new process, a fresh REFINERY_HOME (Dagster's
    instance in it) and a fresh database on the running server, the hash embedder."""
    home = Path(tempfile.mkdtemp(prefix="refinery-home-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DAGSTER_", "REFINERY_", "EMBED_", "CHUNK_", "CORPUS_", "DATABASE_URL"))}
    env.update(REFINERY_HOME=str(home), DATABASE_URL=fresh_database(server, migrated=False),
               EMBED_PROVIDER="hash", CORPUS_MANIFEST=str(manifest_path), PYTHONPATH=str(PROJECT_ROOT),
               PYTHONWARNINGS="ignore")
    try:
        with Timer() as t:
            done = subprocess.run([sys.executable, "-m", "dagster_project.cli", "ingest", "--json"],
                                  env=env, capture_output=True, text=True, cwd=home)
        if done.returncode != 0:
            sys.exit(f"refinery ingest failed ({done.returncode}):\n{done.stderr[-3000:]}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return t.seconds


def floor(server: str, collection, settings: ChunkSettings, embedder) -> dict:
    """The unavoidable work: read + parse + chunk, and binary COPY of the resulting rows into
    the product's tables (documents, chunks, vectors) with their keys and lookup indexes. The
    BM25 postings are a search index the product chooses to keep, like the HNSW index: their
    triggers are off here, so their cost counts against the product, not the floor."""
    with Timer() as t_parse:
        files = read_sources(scan_collection(collection, MAX_BYTES))
        parsed = parse_files(files)
        rows = [build_document_row(collection, f, p)[0] for f, p in zip(files, parsed)]
        chunks = [c for r in rows for c in build_chunks(
            DocumentToChunk(r.id, r.path, r.content_hash, r.title, r.embed_mode, r.metadata, r.blocks),
            collection.name, settings, embedder.token_counter)]
    vectors = embedder.embed([c.text for c in chunks[:1]]).vectors.repeat(len(chunks), axis=0)
    url = fresh_database(server)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE chunks DISABLE TRIGGER chunks_index_terms")
    store = VectorStore(url)
    try:
        with Timer() as t_copy:
            store.apply_documents(collection.name, rows, [], [], [], [])
            store.replace_chunks(collection.name, [], chunks, "floor")
            store.write_embeddings(store.ensure_model(embedder.model), [c.content_hash for c in chunks], vectors)
    finally:
        store.close()
    return {"parse_chunk": t_parse.seconds, "copy": t_copy.seconds, "documents": len(rows), "chunks": len(chunks)}


def edit_files(root: Path, fraction: float, seed: int = 7) -> list[Path]:
    files = sorted((root / "peps").glob("*.rst"))
    chosen = random.Random(seed).sample(files, max(1, round(len(files) * fraction)))
    for f in chosen:
        text = f.read_text()
        cut = text.index("\n\n", len(text) // 2)  # a new paragraph in the middle of the file
        f.write_text(text[:cut] + "\n\nBenchmark edit: this paragraph was added to measure incremental cost.\n" + text[cut:])
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=0, help="use only the first N PEPs (0 = all)")
    parser.add_argument("--local", type=int, default=0, help="also time the local embedder on N files")
    parser.add_argument("--local-only", action="store_true", help="with --local: only that comparison")
    args = parser.parse_args()
    if not PEPS.is_dir():
        sys.exit(f"the PEP corpus is not at {PEPS}")
    files = sorted(PEPS.glob("*.rst"))[: args.files or None]
    root, manifest_path = make_corpus(files)
    collection = load_manifest(manifest_path).collection("peps")
    settings, embedder = ChunkSettings(), HashEmbedder()

    with embedded_server() as server:
        if args.local and args.local_only:
            return local_comparison(server, files[: args.local], settings)
        # Best of two for every figure: this machine's timings wander by a third between runs.
        naive_s = min(naive_floor(server, files, embedder) for _ in range(2))
        f = min((floor(server, collection, settings, embedder) for _ in range(2)),
                key=lambda r: r["parse_chunk"] + r["copy"])
        floor_s = f["parse_chunk"] + f["copy"]
        t_full, full, store, clock = None, None, None, CpuClock(server)
        for _ in range(2):
            candidate = VectorStore(fresh_database(server))
            with Timer() as timer:
                reports, cpu = timed_ingest(candidate, collection, embedder, settings, clock)
            if t_full is None or timer.seconds < t_full.seconds:
                if store is not None:
                    store.close()
                t_full, full, full_cpu, store = timer, reports, cpu, candidate
            else:
                candidate.close()
        run = lambda: ingest_collection(store, collection, embedder=embedder, chunk_settings=settings,  # noqa: E731
                                        max_file_bytes=MAX_BYTES)
        with Timer() as t_none:
            none = run()
        with store.reading() as conn:
            before = {bytes(r[0]) for r in conn.execute("SELECT content_hash FROM chunks")}
        edited = edit_files(root, 0.01)
        with Timer() as t_edit:
            edit = run()
        with store.reading() as conn:
            after = {bytes(r[0]) for r in conn.execute("SELECT content_hash FROM chunks")}
        dagster_s = dagster_fixed_cost(store, manifest_path)
        store.close()
        command_s = min(command_run(server, manifest_path) for _ in range(2))

        load = os.getloadavg()[0]
        print_table(f"Full ingest (best of 2), {f['documents']} PEPs, {f['chunks']} chunks, hash embedder, "
                    f"{os.cpu_count()} cores, load average {load:.1f} at the end", [
            ("step", "seconds", "x naive floor", "x work floor", "target"),
            ("naive floor: read + paragraph split + numpy hashing + binary COPY", f"{naive_s:.2f}", "1.00", "", ""),
            ("work floor: parse + chunk", f"{f['parse_chunk']:.2f}", "", "", ""),
            ("work floor: binary COPY of the same rows", f"{f['copy']:.2f}", "", "", ""),
            ("work floor total", f"{floor_s:.2f}", f"{floor_s / naive_s:.2f}", "1.00", ""),
            ("full ingest in process (documents+chunks+embeddings+HNSW)", f"{t_full.seconds:.2f}",
             f"{t_full.seconds / naive_s:.2f}", f"{t_full.seconds / floor_s:.2f}", "<= 4x naive"),
            ("  documents step", f"{full['documents'].seconds:.2f}", "", "", ""),
            ("  chunks step", f"{full['chunks'].seconds:.2f}", "", "", ""),
            ("  embeddings step (embed + COPY + HNSW build)", f"{full['embeddings'].seconds:.2f}", "", "", ""),
            ("`refinery ingest` command (new process, Dagster, fresh home)", f"{command_s:.2f}",
             f"{command_s / naive_s:.2f}", f"{command_s / floor_s:.2f}", "<= 8x naive"),
        ])
        print_table("CPU seconds of that full ingest, per step (the wall time is at least their sum / cores)", [
            ("step", "wall", "this process", "pool workers", "PostgreSQL", "CPU total"),
            *[(name, f"{full[name].seconds:.2f}", *(f"{full_cpu[name][k]:.2f}" for k in ("python", "workers", "postgres")),
               f"{sum(full_cpu[name].values()):.2f}") for name in full_cpu],
        ])
        new_texts = len(after - before)
        print_table("Incremental reruns", [
            ("run", "seconds", "% of full", "texts embedded", "expected", "target"),
            ("no change", f"{t_none.seconds:.2f}", f"{100 * t_none.seconds / t_full.seconds:.1f}",
             none["embeddings"].texts_embedded, 0, "0 embedded"),
            (f"1% edited ({len(edited)} files)", f"{t_edit.seconds:.2f}", f"{100 * t_edit.seconds / t_full.seconds:.1f}",
             edit["embeddings"].texts_embedded, new_texts, "exact, <= 5%"),
            ("Dagster fixed start cost (separate)", f"{dagster_s:.2f}", "", "", "", "reported"),
        ])
        if args.local:
            local_comparison(server, files[: args.local], settings)


def dagster_fixed_cost(store: VectorStore, manifest_path: Path) -> float:
    """A no-change run through Dagster minus the same run in plain Python."""
    import os

    import dagster as dg

    from dagster_project.core.settings import Settings
    from dagster_project.definitions import INGEST_JOB, build_definitions
    from dagster_project.project import Project

    os.environ.update(DATABASE_URL=store_url(store), EMBED_PROVIDER="hash")
    project = Project.load(Settings.from_env(corpus_manifest=str(manifest_path)))
    job = build_definitions(project).resolve_job_def(INGEST_JOB)
    collection = project.manifest.collection("peps")
    with dg.DagsterInstance.ephemeral() as instance:
        with Timer() as t_dagster:
            job.execute_in_process(partition_key="peps", instance=instance,
                                   run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    with Timer() as t_plain:
        ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=project.chunk_settings,
                          max_file_bytes=MAX_BYTES)
    return t_dagster.seconds - t_plain.seconds


def store_url(store: VectorStore) -> str:
    return store._pool.conninfo


def local_comparison(server: str, files: list[Path], settings: ChunkSettings) -> None:
    from dagster_project.core.embed.local import LocalEmbedder

    root, manifest_path = make_corpus(files)
    collection = load_manifest(manifest_path).collection("peps")
    embedder = LocalEmbedder()
    embedder.embed(["warm up"])
    # Alternating, best of two each: on the shared machine the order alone moved the ratio by a tenth.
    t_pipeline = t_embed = t_step = float("inf")
    for _ in range(2):
        store = VectorStore(fresh_database(server))
        with Timer() as timer:
            reports = ingest_collection(store, collection, embedder=embedder, chunk_settings=settings,
                                        max_file_bytes=MAX_BYTES)
        t_pipeline, t_step = min(t_pipeline, timer.seconds), min(t_step, reports["embeddings"].seconds)
        with store.reading() as conn:
            # What the pipeline embeds: each distinct chunk's context line and text (chunking.embed_text).
            texts = [embed_text(*r) for r in conn.execute("SELECT DISTINCT ON (content_hash) context, text FROM chunks")]
        store.close()
        with Timer() as timer:
            embedder.embed(texts)
        t_embed = min(t_embed, timer.seconds)
    print_table(f"Local embedder (all-MiniLM-L6-v2, CPU), {len(files)} PEPs, {len(texts)} texts, best of 2 alternating, "
                f"load average {os.getloadavg()[0]:.1f}", [
        ("run", "seconds", "x embedding-only", "target"),
        ("embedding only", f"{t_embed:.2f}", "1.00", ""),
        ("whole pipeline", f"{t_pipeline:.2f}", f"{t_pipeline / t_embed:.2f}", "<= 1.1"),
        ("  of which embeddings step", f"{t_step:.2f}", f"{t_step / t_embed:.2f}", ""),
    ])


if __name__ == "__main__":
    main()
