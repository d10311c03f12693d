"""Retrieval quality on a golden set: a corpus ingested with the local embedder (all-MiniLM-L6-v2;
`--backend onnx-int8` for its quantized ONNX model),
then its questions evaluated in text, vector and hybrid mode, with search latency per mode.
`--corpus peps` (default): all 703 PEPs (reStructuredText), bench/peps_questions.yaml.
`--corpus hugo`: the Hugo documentation (~1,000 Markdown pages with front matter, shortcodes and
includes; bench/hugo_corpus.md says how to recreate it), bench/hugo_questions.yaml.
`--corpus fastapi`: the FastAPI documentation (155 MkDocs Markdown pages, no front matter, code
included from files outside the corpus; bench/fastapi_corpus.md), bench/fastapi_questions.yaml.
`--corpus redux`: the Redux documentation (a Docusaurus site: Markdown and MDX pages with
admonitions and components; bench/redux_corpus.md), bench/redux_questions.yaml.
`--corpus flask`: the Flask documentation (a Sphinx site: 76 reStructuredText pages with directives,
cross-reference roles and autodoc; bench/flask_corpus.md), bench/flask_questions.yaml.
Prints a table. Pass --home DIR to keep the index: a second run re-ingests incrementally
(nothing is re-embedded) and only re-measures. --misses: for each question hybrid search does not
answer first, the rank of its document in each mode (of 50) and the documents ranked above it."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PEPS, PROJECT_ROOT, Timer, print_table  # noqa: E402
from bench.ingest_bench import MAX_BYTES, make_corpus  # noqa: E402
from dagster_project.core.db.pg import _with_database, ensure_database, start_embedded  # noqa: E402
from dagster_project.core.db.store import VectorStore  # noqa: E402
from dagster_project.core.embed.local import LocalEmbedder  # noqa: E402
from dagster_project.core.embed.onnx_embedder import BACKENDS, OnnxEmbedder  # noqa: E402
from dagster_project.core.ingest.chunking import ChunkSettings  # noqa: E402
from dagster_project.core.ingest.corpus import load_manifest  # noqa: E402
from dagster_project.core.ingest.pipeline import ingest_collection  # noqa: E402
from dagster_project.core.search.evaluation import evaluate, load_questions  # noqa: E402

# Documentation corpora kept outside the repository (bench/<name>_corpus.md): folder (<NAME>_DOCS
# to move it) and the files taken.
DOCS = {name: (Path(os.environ.get(f"{name.upper()}_DOCS", PROJECT_ROOT.parent / "shared" / "corpora" / f"{name}-docs")),
               include) for name, include in (("hugo", ["**/*.md"]), ("fastapi", ["**/*.md"]),
                                              ("redux", ["**/*.md", "**/*.mdx"]), ("flask", ["**/*.rst"]))}
QUESTIONS = {name: PROJECT_ROOT / "bench" / f"{name}_questions.yaml" for name in ("peps", *DOCS)}
LATENCY_PASSES = 3  # latency percentiles over every question asked this many times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", help="keep the embedded database here (reused by the next run)")
    parser.add_argument("--corpus", choices=sorted(QUESTIONS), default="peps")
    parser.add_argument("--misses", action="store_true", help="profile the questions hybrid does not answer first")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="the local model's runtime (LOCAL_EMBED_BACKEND); onnx-int8 is another model")
    parser.add_argument("--chunk-max-tokens", type=int, default=ChunkSettings().max_tokens,
                        help="chunk size (CHUNK_MAX_TOKENS): a kept --home is re-chunked, new texts embedded")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="refinery-retrieval-"))
    home.mkdir(parents=True, exist_ok=True)
    corpus = home / "corpus"
    if not corpus.exists():
        if args.corpus == "peps":
            root, _ = make_corpus(sorted(PEPS.glob("*.rst")))
            shutil.move(root, corpus)
        else:
            docs, include = DOCS[args.corpus]
            if not docs.is_dir():
                sys.exit(f"{docs} is missing: bench/{args.corpus}_corpus.md says how to recreate it "
                         f"({args.corpus.upper()}_DOCS=DIR: elsewhere)")
            corpus.mkdir()
            (corpus / "corpus.yaml").write_text(f"collections:\n  {args.corpus}:\n    root: {docs}\n    include: {include}\n")
    collection = load_manifest(corpus / "corpus.yaml").collection(args.corpus)
    server = start_embedded(home / "db")
    ensure_database(server, "retrieval")
    store = VectorStore(_with_database(server, "retrieval"))
    embedder = LocalEmbedder() if args.backend == "torch" else OnnxEmbedder(home / "onnx", args.backend)
    with Timer() as t_ingest:
        reports = ingest_collection(store, collection, embedder=embedder,
                                    chunk_settings=ChunkSettings(max_tokens=args.chunk_max_tokens), max_file_bytes=MAX_BYTES)
    print(f"ingest: {t_ingest.seconds:.1f} s, {reports['embeddings'].texts_embedded} texts embedded, "
          f"{reports['embeddings'].counts['reused']} reused", flush=True)
    questions = load_questions(QUESTIONS[args.corpus], store.document_keys())
    model_id, dims = store.model_id(embedder.model), embedder.model.dims
    vectors = {q.text: embedder.embed([q.text]).vectors[0] for q in questions}  # embed once, outside timing
    rows = [("mode", "recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10", "p50 ms", "p95 ms")]
    results = {}
    for mode in ("text", "vector", "hybrid"):
        latencies = []

        def retrieve(question: str, mode=mode) -> list[tuple[str, str]]:
            started = time.perf_counter()
            found = store.search_documents(model_id, dims, vectors[question], k=10, mode=mode, query_text=question,
                                           passages=1)
            latencies.append((time.perf_counter() - started) * 1000)
            return [(d.collection, d.path) for d in found]

        for q in questions[:5]:
            retrieve(q.text)  # warm up
        latencies.clear()
        results[mode] = r = evaluate(questions, retrieve)
        for _ in range(LATENCY_PASSES - 1):  # more samples: this machine's speed drifts from second to second
            evaluate(questions, retrieve)
        latencies.sort()
        rows.append((mode, f"{r['recall@1']:.3f}", f"{r['recall@5']:.3f}", f"{r['recall@10']:.3f}",
                     f"{r['mrr@10']:.3f}", f"{r['ndcg@10']:.3f}", f"{statistics.median(latencies):.1f}",
                     f"{latencies[int(len(latencies) * 0.95)]:.1f}"))
    if args.misses:
        print_misses(store, model_id, dims, questions, vectors)
    store.close()
    print_table(f"Retrieval on {len(questions)} {args.corpus} questions, {embedder.model.name}, document level, latency over "
                f"{LATENCY_PASSES} passes, 10 documents a search "
                "(targets: hybrid beats both on recall@5 and MRR@10; recall@5 >= 0.93, MRR@10 >= 0.80; "
                "hybrid p50 <= 10 ms)", rows)
    for mode, r in results.items():
        print(f"{mode}: {len(r['missed_top5'])} questions missed the top 5")


def print_misses(store: VectorStore, model_id: int, dims: int, questions, vectors) -> None:
    modes = ("text", "vector", "hybrid")
    for q in questions:
        found = {mode: [(d.collection, d.path) for d in store.search_documents(
            model_id, dims, vectors[q.text], k=50, mode=mode, query_text=q.text, passages=1)] for mode in modes}
        ranks = {mode: next((i + 1 for i, d in enumerate(docs) if d in q.documents), None) for mode, docs in found.items()}
        if ranks["hybrid"] == 1:
            continue
        print(f"\n{q.text}\n  expected {', '.join(p for _, p in q.documents)}; rank "
              + ", ".join(f"{mode} {ranks[mode] or '>50'}" for mode in modes))
        for mode in modes:
            above = found[mode][:min(3, (ranks[mode] or 51) - 1)]
            print(f"  {mode:>6} above it: {', '.join(p for _, p in above) or '-'}")


if __name__ == "__main__":
    main()
