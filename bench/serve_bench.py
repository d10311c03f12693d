"""`refinery serve` under load: the 703 PEPs indexed (hash embedder by default: the HTTP service is
measured, not the model), a token, the service started as its own process, then 8 concurrent
keep-alive clients asking the PEP questions. Prints requests per second and p50/p95 per endpoint
beside two floors measured in the same run: the service's trivial endpoint (GET /health/live:
HTTP and threads, no work) and the same searches called in process by 8 threads (no HTTP).
Also the cost of row security: in-process hybrid search as the operator's reader with the
tenant policies in place, with row security switched off, and as a tenant's role.
Pass --home DIR to keep the index for the next run."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PEPS, PROJECT_ROOT, Timer, print_table  # noqa: E402
from bench.ingest_bench import MAX_BYTES, make_corpus  # noqa: E402
from dagster_project.core.db.pg import _with_database, ensure_database, start_embedded  # noqa: E402
from dagster_project.core.db.store import VectorStore  # noqa: E402
from dagster_project.core.embed.local import HashEmbedder, LocalEmbedder  # noqa: E402
from dagster_project.core.ingest.chunking import ChunkSettings  # noqa: E402
from dagster_project.core.ingest.corpus import load_manifest  # noqa: E402
from dagster_project.core.ingest.pipeline import ingest_collection  # noqa: E402
from dagster_project.core.search.evaluation import load_questions  # noqa: E402
from dagster_project.core.search.searcher import Searcher  # noqa: E402
from dagster_project.core.settings import Settings  # noqa: E402

QUESTIONS = PROJECT_ROOT / "bench" / "peps_questions.yaml"
CLIENTS = 8
RLS_TABLES = ("documents", "chunks", "embeddings", "chunk_terms", "chunk_term_df")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run_clients(requests_per_client: int, make_call) -> tuple[float, list[float]]:
    """`make_call()` -> call(i): each of CLIENTS threads makes its own (its connection) and calls it
    requests_per_client times. Returns (wall seconds, latencies in ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS + 1)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        call = make_call()
        mine = []
        barrier.wait()
        try:
            for i in range(requests_per_client):
                started = time.perf_counter()
                call(n * requests_per_client + i)
                mine.append((time.perf_counter() - started) * 1000)
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started, latencies


def http_call(port: int, token: str, request) -> callable:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(i: int) -> None:
        method, path, body = request(i)
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")

    return call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", help="keep the embedded database here (reused by the next run)")
    parser.add_argument("--requests", type=int, default=100, help="requests per client per row")
    parser.add_argument("--embedder", choices=("hash", "local"), default="hash")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="refinery-serve-bench-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    corpus = home / "corpus"
    if not corpus.exists():
        root, _ = make_corpus(sorted(PEPS.glob("*.rst")))
        shutil.move(root, corpus)
    collection = load_manifest(corpus / "corpus.yaml").collection("peps")
    server = start_embedded(home / "db")
    ensure_database(server, "serve_bench")
    url = _with_database(server, "serve_bench")
    store = VectorStore(url, max_connections=CLIENTS)
    embedder = HashEmbedder() if args.embedder == "hash" else LocalEmbedder()
    with Timer() as t_ingest:
        ingest_collection(store, collection, embedder=embedder, chunk_settings=ChunkSettings(),
                          max_file_bytes=MAX_BYTES)
    print(f"index ready in {t_ingest.seconds:.1f} s", flush=True)
    store.add_tenant("public")
    _, token = store.create_token("public", "serve_bench")
    questions = [q.text for q in load_questions(QUESTIONS, store.document_keys())]
    settings = Settings.from_env().model_copy(update={"embed_provider": args.embedder, "embed_dims": None})
    searcher = Searcher(settings, store)

    env = {**os.environ, "DATABASE_URL": url, "EMBED_PROVIDER": args.embedder, "REFINERY_HOME": str(home / "serve"),
           "CORPUS_MANIFEST": str(corpus / "corpus.yaml")}
    process = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "serve", "--port", "0", "--quiet",
                                "--connections", str(CLIENTS)], env=env, cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in process.stdout:
        match = re.search(r"listening on http://[\d.]+:(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    if port is None:
        raise SystemExit("refinery serve did not start")
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()

    def question(i: int) -> str:
        return questions[i % len(questions)]

    rows = [("what", "clients", "requests", "req/s", "p50 ms", "p95 ms", "p50 / in-process p50")]
    measured = {}
    try:
        for warm in range(2):  # the first pass warms caches and prepared statements; the second is kept
            cases = {
                "HTTP GET /health/live (floor: no work)": lambda: http_call(
                    port, token, lambda i: ("GET", "/health/live", None)),
                "in process, hybrid (floor: no HTTP)": lambda: (
                    lambda i: searcher.search(question(i), mode="hybrid", k=10, tenant="public")),
                "HTTP GET /v1/search hybrid": lambda: http_call(
                    port, token, lambda i: ("GET", f"/v1/search?k=10&q={quote(question(i))}", None)),
                "HTTP POST /v1/search text": lambda: http_call(
                    port, token, lambda i: ("POST", "/v1/search",
                                            json.dumps({"query": question(i), "k": 10, "mode": "text"}))),
                "HTTP POST /v1/search vector": lambda: http_call(
                    port, token, lambda i: ("POST", "/v1/search",
                                            json.dumps({"query": question(i), "k": 10, "mode": "vector"}))),
            }
            for name, make_call in cases.items():
                seconds, latencies = run_clients(args.requests if warm else 10, make_call)
                measured[name] = (len(latencies) / seconds, statistics.median(latencies),
                                  percentile(latencies, 0.95), len(latencies))
        floor = measured["in process, hybrid (floor: no HTTP)"][1]
        for name, (rps, p50, p95, n) in measured.items():
            rows.append((name, CLIENTS, n, f"{rps:.0f}", f"{p50:.1f}", f"{p95:.1f}", f"{p50 / floor:.2f}"))
    finally:
        process.terminate()
        process.wait(timeout=30)

    # Row security's cost, one client at a time, as bench/retrieval_bench.py measures search. The
    # variants take turns, round after round, so the machine's drift falls on each alike.
    import psycopg

    def single(tenant, into: list[float]) -> None:
        for q in questions:
            vector = searcher.embed(q)
            started = time.perf_counter()
            store.search(searcher.model_id, searcher.dims, vector, k=50, mode="hybrid", query_text=q,
                         tenant=tenant)
            into.append((time.perf_counter() - started) * 1000)

    def row_security(conn, on: bool) -> None:
        for table in RLS_TABLES:
            conn.execute(f"ALTER TABLE {table} {'ENABLE' if on else 'DISABLE'} ROW LEVEL SECURITY")

    without, with_rls, tenant = [], [], []
    with psycopg.connect(url, autocommit=True) as conn:
        for n in range(4):  # the first round warms up and is dropped
            row_security(conn, False)
            try:
                single(None, without if n else [])
            finally:
                row_security(conn, True)
            single(None, with_rls if n else [])
            single("public", tenant if n else [])
    rls = [("hybrid search, 1 client, k=50", "p50 ms", "p95 ms", "p50 / without row security")]
    base = statistics.median(without)
    for name, values in (("operator's reader, row security off (floor)", without),
                         ("operator's reader, row security on", with_rls),
                         ("tenant role (its policies apply)", tenant)):
        rls.append((name, f"{statistics.median(values):.1f}", f"{percentile(values, 0.95):.1f}",
                    f"{statistics.median(values) / base:.2f}"))
    store.close()
    load = os.getloadavg()
    print_table(f"refinery serve on {len(questions)} PEP questions ({args.embedder} embedder, k=10), {CLIENTS} "
                f"concurrent keep-alive clients; load average {load[0]:.1f} on {os.cpu_count()} cores", rows)
    print_table("Row security's cost to search (target: the operator's hybrid p50 <= 10 ms, unchanged)", rls)


if __name__ == "__main__":
    main()
