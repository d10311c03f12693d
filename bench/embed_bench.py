"""Local embedder throughput and quality per backend on the PEP chunk texts: torch fp32 (the
default path, sentence-transformers), ONNX Runtime fp32 and dynamic int8 (LOCAL_EMBED_BACKEND),
timed on the same texts in the same run, interleaved round by round (the best round counts: the
machine is shared). Quality against torch fp32: cosine of each vector, and document-level vector
retrieval (exact cosine, no index) of the golden PEP questions over the chunks of the benchmark's
files (every PEP a question names, plus others up to --files). Prints a table."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PEPS, PROJECT_ROOT, Timer, print_table
from dagster_project.core.db.chunks import DocumentToChunk
from dagster_project.core.embed.local import LocalEmbedder
from dagster_project.core.embed.onnx_embedder import OnnxEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings, embed_text
from dagster_project.core.ingest.corpus import (
    load_manifest,
    read_sources,
    scan_collection,
)
from dagster_project.core.ingest.pipeline import (
    EMBED_TX_TEXTS,
    build_chunks,
    build_document_row,
    parse_files,
)
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.search.evaluation import evaluate, load_questions

QUESTIONS = PROJECT_ROOT / "bench" / "peps_questions.yaml"


def chunk_texts(paths: list[Path]) -> tuple[list[str], list[str]]:
    """The texts the embeddings step embeds (context + chunk, distinct), with their document."""
    from bench.ingest_bench import make_corpus

    root, manifest = make_corpus(paths)
    collection = load_manifest(manifest).collection("peps")
    sources = read_sources(scan_collection(collection, 20_000_000))
    shutil.rmtree(root)
    parsed = parse_files(sources)
    texts: dict[str, str] = {}
    counter = wordpiece_counter()
    for source, doc in zip(sources, parsed):
        row = build_document_row(collection, source, doc)[0]
        for c in build_chunks(DocumentToChunk(row.id, row.path, row.content_hash, row.title, row.embed_mode,
                                              row.metadata, row.blocks), "peps", ChunkSettings(), counter):
            texts.setdefault(embed_text(c.context, c.text), row.path)
    return list(texts), list(texts.values())


def timed(embedder, texts: list[str]) -> tuple[float, float, np.ndarray]:
    """As the embeddings step calls it: one call per transaction's worth of texts. Wall and
    process CPU seconds: on a shared machine the CPU time is the steadier of the two."""
    parts = []
    cpu = time.process_time()
    with Timer() as t:
        for start in range(0, len(texts), EMBED_TX_TEXTS):
            parts.append(embedder.embed(texts[start:start + EMBED_TX_TEXTS]).vectors)
    return t.seconds, time.process_time() - cpu, np.vstack(parts)


def retrieval(embedder, questions, vectors: np.ndarray, documents: list[str]) -> dict:
    doc_names = sorted(set(documents))
    doc_index = np.array([doc_names.index(d) for d in documents])

    def retrieve(question: str) -> list[tuple[str, str]]:
        scores = vectors @ embedder.embed([question]).vectors[0]
        best = np.full(len(doc_names), -np.inf)
        np.maximum.at(best, doc_index, scores)
        return [("peps", doc_names[i]) for i in np.argsort(-best)[:10]]

    return evaluate(questions, retrieve)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quality-texts", type=int, default=1200,
                        help="at most this many texts: the PEPs (named by questions) with the fewest chunks (0: all 83)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="64", help="comma-separated; each is a row per backend")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: their default)")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8")
    parser.add_argument("--time-texts", type=int, default=500, help="texts timed per round (0: all, and their vectors give the quality columns)")
    parser.add_argument("--no-quality", dest="quality", action="store_false",
                        help="skip cosine and retrieval (which embed every text once more per backend)")
    args = parser.parse_args()
    named = sorted({d for q in yaml.safe_load(QUESTIONS.read_text())["questions"] for d in q["documents"]})
    texts, documents = chunk_texts([PEPS / n for n in named])
    if args.quality_texts:  # the documents with the fewest chunks, and the questions they answer
        sizes_by_doc = Counter(documents)
        kept, total = set(), 0
        for doc, n in sorted(sizes_by_doc.items(), key=lambda item: (item[1], item[0])):
            if total + n > args.quality_texts:
                break
            kept.add(doc)
            total += n
        texts, documents = map(list, zip(*[(t, d) for t, d in zip(texts, documents) if d in kept]))
    random.Random(7).shuffle(order := list(range(len(texts))))  # the step's order is by hash, not length
    texts, documents = [texts[i] for i in order], [documents[i] for i in order]
    raw = yaml.safe_load(QUESTIONS.read_text())["questions"]
    answerable = [q for q in raw if set(q["documents"]) <= set(documents)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"questions": answerable}, f)
    questions = load_questions(f.name, {("peps", d) for d in documents})
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    cache = Path(tempfile.mkdtemp(prefix="refinery-onnx-"))  # a fresh export each run: what a user's first run does
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    embedders = {}
    for backend in args.backends.split(","):
        for size in sizes:
            if backend == "torch":
                embedder = LocalEmbedder(batch_size=size)
            else:
                embedder = OnnxEmbedder(cache, backend, batch_size=size, threads=args.threads or None)
            embedder.embed(["warm up"])
            embedders[(backend, size)] = embedder
    shutil.rmtree(cache)  # the sessions hold their models
    timing = texts[: args.time_texts] if args.time_texts else texts
    vectors: dict = {}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    seconds: dict = {k: [] for k in embedders}
    cpu: dict = {k: [] for k in embedders}
    for round_ in range(args.rounds):
        for key, embedder in embedders.items():
            wall, used, vectors[key] = timed(embedder, timing)
            seconds[key].append(wall)
            cpu[key].append(used)
            print(f"round {round_ + 1}: {key} {wall:.1f} s, {used:.1f} CPU s", file=sys.stderr, flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    if len(timing) < len(texts):  # the quality columns need every text's vector
        vectors = {k: timed(e, texts)[2] for k, e in embedders.items()} if args.quality else {}
    reference = vectors.get(("torch", sizes[0]))
    floor = min(seconds[("torch", sizes[0])]) if ("torch", sizes[0]) in seconds else None
    cpu_floor = min(cpu[("torch", sizes[0])]) if ("torch", sizes[0]) in cpu else None
    rows = [("backend", "batch", "texts/s", "x torch fp32", "texts per CPU s", "x torch fp32 (CPU)",
             "cosine vs fp32 mean / min", "recall@5", "MRR@10", "wall s per round")]
    for key, embedder in embedders.items():
        best, best_cpu = min(seconds[key]), min(cpu[key])
        cosine = (vectors[key] * reference).sum(axis=1) if reference is not None and key in vectors else None
        r = retrieval(embedder, questions, vectors[key], documents) if key in vectors else None
        rows.append((key[0], key[1], f"{len(timing) / best:.1f}", f"{floor / best:.2f}" if floor else "",
                     f"{len(timing) / best_cpu:.1f}", f"{cpu_floor / best_cpu:.2f}" if cpu_floor else "",
                     f"{cosine.mean():.5f} / {cosine.min():.5f}" if cosine is not None else "",
                     f"{r['recall@5']:.3f}" if r else "", f"{r['mrr@10']:.3f}" if r else "",
                     " ".join(f"{s:.1f}" for s in seconds[key])))
    print_table(f"Local embedder, all-MiniLM-L6-v2 on {os.cpu_count()} cores: {len(texts)} texts of {len(set(documents))} PEPs, "
                f"{len(questions)} questions; texts/s on {len(timing)} of them, best of {args.rounds} interleaved rounds; "
                f"load {' '.join(load_before)} -> {' '.join(load_after)}", rows)


if __name__ == "__main__":
    main()
