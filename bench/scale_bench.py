"""Scale benchmark: a synthetic corpus of N Markdown/text files (a few KB each, headings and
paragraphs drawn with a fixed seed, written to a temp dir) ingested in a child process whose
process tree's peak RSS is sampled: full ingest throughput, a no-change rerun, peak RSS, against
floors measured in the same run (naive loader; walk + read + sha256 of every file). With --peps,
the PEPs' own full ingest rate for the per-file comparison. Prints tables; pass/fail is for people."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from bench.common import PEPS, PROJECT_ROOT, Timer, embedded_server, fresh_database, print_table  # noqa: E402

MAX_BYTES = 20_000_000
WORDS = ("index vector search corpus document chunk token embedding model query shard worker "
         "partition schedule refine feedback metric table column row version hash stream batch "
         "parse heading paragraph collection source manifest asset sensor executor broker queue "
         "latency memory throughput replica backup restore migration schema contract").split()


def _paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 6)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def make_corpus(files: int, seed: int = 13) -> tuple[Path, Path]:
    """`files` documents in 100-file folders: 80% Markdown with headings, 20% plain text, each
    of 1-8 KB (about what a docs site or a wiki export holds)."""
    base = Path(tempfile.mkdtemp(prefix="refinery-scale-"))
    root = base / "synthetic"
    rng = random.Random(seed)
    for i in range(files):
        folder = root / f"part-{i // 100:04d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        target = rng.randint(1_000, 8_000)
        markdown = rng.random() < 0.8
        parts = [f"# Document {i}: {rng.choice(WORDS)} {rng.choice(WORDS)}\n" if markdown else f"Document {i}\n"]
        size = len(parts[0])
        section = 0
        while size < target:
            if markdown and rng.random() < 0.3:
                section += 1
                parts.append(f"## Section {section} {rng.choice(WORDS)}\n")
            parts.append(_paragraph(rng) + "\n")
            size += len(parts[-1])
        (folder / f"doc-{i:06d}.{'md' if markdown else 'txt'}").write_text("\n".join(parts))
    manifest = base / "corpus.yaml"
    manifest.write_text("collections:\n  synthetic:\n    root: synthetic\n    include: ['**/*.md', '**/*.txt']\n")
    return base, manifest


def scan_floor(root: Path) -> float:
    """The least a no-change rerun must do without trusting metadata: walk, read, sha256."""
    import hashlib

    with Timer() as t:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                with open(os.path.join(dirpath, name), "rb") as f:
                    hashlib.sha256(f.read()).digest()
    return t.seconds


def stat_floor(root: Path) -> float:
    """The least a no-change rerun must do when it trusts an unchanged size and mtime: walk + stat."""
    with Timer() as t:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                os.stat(os.path.join(dirpath, name))
    return t.seconds


def naive_floor(server: str, root: Path) -> float:
    """Read + paragraph split + numpy hashing + binary COPY, as ingest_bench's naive floor."""
    from bench.ingest_bench import naive_floor as naive
    from dagster_project.core.embed.local import HashEmbedder

    files = sorted(root.rglob("*.*"))
    return naive(server, files, HashEmbedder())


class TreeRss:
    """Samples the summed RSS of a process and all its descendants (the parse/chunk workers)."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.peak = 0
        self._root = psutil.Process(pid)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_child(url: str, manifest: Path) -> tuple[dict, int, float]:
    """One ingest in a new process (so its peak memory is its own): the child's report, the
    process tree's peak RSS, the wall time including process start."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", url, str(manifest)], env=env,
                             stdout=subprocess.PIPE, text=True)
    rss = TreeRss(child.pid)
    out, _ = child.communicate()
    peak = rss.stop()
    if child.returncode != 0:
        sys.exit(f"child ingest failed ({child.returncode})")
    return json.loads(out.strip().splitlines()[-1]), peak, time.perf_counter() - started


def child_main(url: str, manifest: str) -> None:
    from dagster_project.core.db.store import VectorStore
    from dagster_project.core.embed.local import HashEmbedder
    from dagster_project.core.ingest.chunking import ChunkSettings
    from dagster_project.core.ingest.corpus import load_manifest
    from dagster_project.core.ingest.pipeline import ingest_collection

    collection = load_manifest(manifest).collection("synthetic")
    store = VectorStore(url)
    try:
        with Timer() as t:
            reports = ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                                        max_file_bytes=MAX_BYTES)
    finally:
        store.close()
    print(json.dumps({"seconds": t.seconds, **{f"{k}_s": r.seconds for k, r in reports.items()},
                      "documents": reports["documents"].counts, "texts": reports["embeddings"].counts.get("texts"),
                      "embedded": reports["embeddings"].texts_embedded}))


def peps_rate(server: str) -> float:
    """Files a second of the PEPs' full ingest, in a child process like the synthetic runs."""
    from bench.ingest_bench import make_corpus as peps_corpus

    base, manifest = peps_corpus(sorted(PEPS.glob("*.rst")))
    text = manifest.read_text().replace("peps:", "synthetic:", 1)
    manifest.write_text(text)
    try:
        report, _, _ = run_child(fresh_database(server), manifest)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return report["documents"]["new"] / report["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated corpus sizes")
    parser.add_argument("--peps", action="store_true", help="also measure the PEPs' files a second")
    parser.add_argument("--child", nargs=2, metavar=("URL", "MANIFEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(*args.child)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [("files", "MB", "gen s", "naive floor s", "full ingest s", "x naive", "files/s", "x PEPs files/s",
             "docs/chunks/embed s", "no-change s", "2nd no-change s", "scan floor s", "stat floor s", "x scan floor", "peak RSS MB",
             "no-change RSS MB", "texts")]
    with embedded_server() as server:
        pep_rate = peps_rate(server) if args.peps and PEPS.is_dir() else None
        for n in sizes:
            with Timer() as t_gen:
                base, manifest = make_corpus(n)
            try:
                megabytes = sum(f.stat().st_size for f in (base / "synthetic").rglob("*.*")) / 1e6
                naive_s = naive_floor(server, base / "synthetic")
                url = fresh_database(server)
                full, full_rss, _ = run_child(url, manifest)
                scan_s = min(scan_floor(base / "synthetic") for _ in range(2))
                stat_s = min(stat_floor(base / "synthetic") for _ in range(2))
                again, again_rss, _ = run_child(url, manifest)
                assert again["embedded"] == 0 and again["documents"]["unchanged"] == n, again
                # The first rerun also collects vectors after the load's writes; the second is the steady state.
                again2, _, _ = run_child(url, manifest)
                rate = n / full["seconds"]
                rows.append((n, f"{megabytes:.0f}", f"{t_gen.seconds:.0f}", f"{naive_s:.1f}", f"{full['seconds']:.1f}",
                             f"{full['seconds'] / naive_s:.1f}", f"{rate:.0f}",
                             f"{rate / pep_rate:.2f}" if pep_rate else "",
                             f"{full['documents_s']:.0f}/{full['chunks_s']:.0f}/{full['embeddings_s']:.0f}",
                             f"{again['seconds']:.2f}", f"{again2['seconds']:.2f}", f"{scan_s:.2f}", f"{stat_s:.2f}",
                             f"{again2['seconds'] / scan_s:.1f}", f"{full_rss / 1e6:.0f}", f"{again_rss / 1e6:.0f}",
                             full["texts"]))
                print(f"[{n} files done] {rows[-1]}", flush=True)
            finally:
                shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    print_table(f"Scale, synthetic Markdown/text corpus, hash embedder, in a child process; {os.cpu_count()} cores, "
                f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end"
                + (f"; PEPs full ingest {pep_rate:.0f} files/s" if pep_rate else ""), rows)
    print("targets: files/s no worse than the PEPs (x PEPs >= 1); no-change <= 10 s at 100k; peak RSS <= 1 GB "
          "(the ingest process and its workers; PostgreSQL's own memory is not counted)")


if __name__ == "__main__":
    main()
