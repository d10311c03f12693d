"""Search benchmark: 100k x 384 clustered unit vectors behind real documents and chunks rows.
Latency of VectorStore.search (the path `refinery search` takes: read-only role, join to chunks
and documents) against recall@10 versus exact search computed in numpy, unfiltered and with a
1% filter. Prints a table."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Timer, embedded_server, fresh_database, print_table  # noqa: E402
from dagster_project.core.db.chunks import ChunkRow  # noqa: E402
from dagster_project.core.db.documents import DocumentRow  # noqa: E402
from dagster_project.core.db.store import VectorStore  # noqa: E402
from dagster_project.core.embed.base import EmbeddingModel, normalize  # noqa: E402
from dagster_project.core.ingest.hashing import content_hash, stable_id  # noqa: E402

DIMS = 384
CHUNKS_PER_DOC = 100


def synthetic(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    """Points around subtopic centers, like embeddings of a corpus: near neighbours at cosine
    ~0.7-0.9, unrelated text near 0. (Uniform noise in 384 dimensions, where every point is
    equally far from every other, is nothing like real embeddings and defeats any ANN index.)"""
    picks = rng.integers(0, len(centers), n)
    return normalize(centers[picks] + rng.normal(0, 0.02, (n, DIMS)).astype(np.float32))


def topic_centers(rng: np.random.Generator, topics: int = 200, subtopics: int = 20) -> np.ndarray:
    top = normalize(rng.normal(0, 1, (topics, DIMS)).astype(np.float32))
    sub = np.repeat(top, subtopics, axis=0) + rng.normal(0, 0.03, (topics * subtopics, DIMS)).astype(np.float32)
    return normalize(sub)


def load(store: VectorStore, vectors: np.ndarray) -> tuple[int, list[str], np.ndarray]:
    n_docs = len(vectors) // CHUNKS_PER_DOC
    docs = [DocumentRow(stable_id("doc", i), "rare" if i % 100 == 0 else f"c{i % 10}", f"doc-{i}.md",
                        content_hash(f"doc {i}"), 0, "markdown", f"Document {i}", None, None, None,
                        "full", False, {}, [], [], "bench") for i in range(n_docs)]
    for collection in sorted({d.collection for d in docs}):
        store.apply_documents(collection, [d for d in docs if d.collection == collection], [], [], [], [])
    chunks = [ChunkRow(stable_id("chunk", i), docs[i // CHUNKS_PER_DOC].id, docs[i // CHUNKS_PER_DOC].collection,
                       i % CHUNKS_PER_DOC, ["Section"], f"chunk {i}", 2, content_hash(f"chunk {i}"))
              for i in range(len(vectors))]
    for collection in sorted({d.collection for d in docs}):
        store.replace_chunks(collection, [], [c for c in chunks if c.collection == collection], "bench")
    model_id = store.ensure_model(EmbeddingModel("bench", "synthetic", DIMS))
    for start in range(0, len(vectors), 20_000):
        part = chunks[start:start + 20_000]
        store.write_embeddings(model_id, [c.content_hash for c in part], vectors[start:start + 20_000])
    rare = np.array([c.collection == "rare" for c in chunks])
    return model_id, [str(c.id) for c in chunks], rare


def measure(store, model_id, ids, vectors, queries, k, ef, collection=None, mask=None):
    latencies, recalls = [], []
    pool = vectors if mask is None else vectors[mask]
    pool_ids = np.array(ids) if mask is None else np.array(ids)[mask]
    for q in queries:
        started = time.perf_counter()
        hits = store.search(model_id, DIMS, q, k=k, filters={"collection": collection} if collection else None,
                            ef_search=ef)
        latencies.append((time.perf_counter() - started) * 1000)
        exact = set(pool_ids[np.argsort(-(pool @ q))[:k]])
        recalls.append(len(exact & {h.chunk_id for h in hits}) / k)
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.95)], statistics.mean(recalls)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--explain", action="store_true", help="print one query plan")
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    centers = topic_centers(rng)
    vectors = synthetic(args.vectors, rng, centers)
    queries = synthetic(args.queries, rng, centers)

    with embedded_server() as server:
        store = VectorStore(fresh_database(server))
        with Timer() as t_load:
            model_id, ids, rare = load(store, vectors)
        with Timer() as t_index:
            store.ensure_index(model_id, DIMS)
        store.analyze()  # as the embeddings step does after a bulk load
        for q in queries[:20]:  # warm the cache, as a running service would be
            store.search(model_id, DIMS, q, k=10)
        if args.explain:
            with store.reading() as conn:
                conn.execute("SET LOCAL hnsw.ef_search = 100")
                for row in conn.execute(
                        "EXPLAIN (ANALYZE, BUFFERS) SELECT c.id FROM embeddings e JOIN chunks c ON c.content_hash = e.content_hash "
                        "JOIN documents d ON d.id = c.document_id WHERE e.model_id = %s "
                        f"ORDER BY (embedding::vector({DIMS})) <=> %s::vector({DIMS}) LIMIT 10", (model_id, queries[0])):
                    print(row[0])
        rows = [("search", "ef_search", "p50 ms", "p95 ms", "recall@10", "target")]
        for ef in (40, 100):
            p50, p95, recall = measure(store, model_id, ids, vectors, queries, 10, ef)
            rows.append(("unfiltered", ef, f"{p50:.2f}", f"{p95:.2f}", f"{recall:.3f}",
                         "p50 <= 5 ms, recall >= 0.95" if ef == 100 else ""))
        p50, p95, recall = measure(store, model_id, ids, vectors, queries, 10, 100, "rare", rare)
        rows.append(("filter: 1% of rows", 100, f"{p50:.2f}", f"{p95:.2f}", f"{recall:.3f}", "k hits returned"))
        store.close()
    print(f"\nloaded {len(vectors)} x {DIMS} vectors with documents and chunks in {t_load.seconds:.1f} s; "
          f"HNSW build {t_index.seconds:.1f} s")
    print_table(f"Search over {len(vectors)} x {DIMS} (HNSW m=16, ef_construction=64, cosine)", rows)


if __name__ == "__main__":
    main()
