"""Refine benchmark: 200 PEPs refined against the fake OpenAI-compatible server (real HTTP) at
200 ms per answer. Throughput against the ceiling concurrency / latency, and the cost of a fully
cached rerun, in plain Python and through Dagster. Prints a table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import subprocess  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from bench.common import PEPS, Timer, embedded_server, fresh_database, print_table  # noqa: E402
from bench.ingest_bench import MAX_BYTES, make_corpus  # noqa: E402
from dagster_project.core.db.store import VectorStore  # noqa: E402
from dagster_project.core.embed.local import HashEmbedder  # noqa: E402
from dagster_project.core.ingest.chunking import ChunkSettings  # noqa: E402
from dagster_project.core.ingest.corpus import load_manifest  # noqa: E402
from dagster_project.core.ingest.pipeline import ingest_collection  # noqa: E402
from dagster_project.core.refine.llm import LLMChain, Price  # noqa: E402
from dagster_project.core.refine.pipeline import refine_collection  # noqa: E402
from dagster_project.core.refine.quality import RoutingThresholds  # noqa: E402
from dagster_project.core.settings import Settings  # noqa: E402
from dagster_project.resources.llm import prompt_token_counter  # noqa: E402


@contextmanager
def fake_server(latency: float):
    """The fake OpenAI server in its own process, as a real server would be."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.openai_server", "--delay", str(latency)],
                            cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    root, manifest_path = make_corpus(sorted(PEPS.glob("*.rst"))[: args.documents])
    collection = load_manifest(manifest_path).collection("peps")
    thresholds = RoutingThresholds(min_words=0, min_quality=0.0)  # every document goes to the model
    with embedded_server() as server, fake_server(args.latency) as base_url:
        url = fresh_database(server)
        store = VectorStore(url)
        ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                          max_file_bytes=MAX_BYTES)
        chain = LLMChain(models=["gpt-4o-mini"], base_url=base_url, api_key="sk-bench-000000",
                         prices={"gpt-4o-mini": Price(0.15, 0.6)}, concurrency=args.concurrency)
        counter = prompt_token_counter(Settings(llm_model="gpt-4o-mini"))  # what a run with LLM_MODEL uses
        with Timer() as t_full:
            report = refine_collection(store, "peps", chain, counter, budget=8000, thresholds=thresholds)
        with Timer() as t_cached:
            cached = refine_collection(store, "peps", chain, counter, budget=8000, thresholds=thresholds)
        dagster_cached, dagster_fixed = dagster_times(url, manifest_path, base_url)
        store.close()
    ceiling = args.concurrency / args.latency
    rps = report.calls / t_full.seconds
    print_table(f"Refine, {report.refined} PEPs, fake server at {args.latency * 1000:.0f} ms, concurrency {args.concurrency}", [
        ("run", "seconds", "requests/s", "target"),
        ("full refine", f"{t_full.seconds:.2f}", f"{rps:.1f} ({rps / ceiling:.2f} x ceiling {ceiling:.0f})",
         f">= {0.8 * ceiling:.0f}/s (0.8 x ceiling)"),
        ("cached rerun, plain Python", f"{t_cached.seconds:.2f}", f"{cached.calls} calls", "< 1 s, 0 calls"),
        ("cached rerun through Dagster", f"{dagster_cached:.2f}", "", ""),
        ("  of which Dagster's fixed cost", f"{dagster_fixed:.2f}", "", "reported"),
    ])


def dagster_times(url: str, manifest_path: Path, base_url: str) -> tuple[float, float]:
    import dagster as dg

    from dagster_project.core.settings import Settings
    from dagster_project.definitions import REFINE_JOB, build_definitions
    from dagster_project.project import Project

    os.environ.update(DATABASE_URL=url, EMBED_PROVIDER="hash", LLM_MODEL="gpt-4o-mini", OPENAI_BASE_URL=base_url,
                      OPENAI_API_KEY="sk-bench-000000", REFINE_MIN_WORDS="0", REFINE_MIN_QUALITY="0")
    project = Project.load(Settings.from_env(corpus_manifest=str(manifest_path)))
    job = build_definitions(project).resolve_job_def(REFINE_JOB)
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    with dg.DagsterInstance.ephemeral() as instance:
        with Timer() as t_run:
            job.execute_in_process(partition_key="peps", instance=instance, run_config=quiet)
    with Timer() as t_plain:
        store = VectorStore(url)
        refine_collection(store, "peps", __import__("dagster_project.resources.llm", fromlist=["x"]).build_chain(
            project.settings), prompt_token_counter(project.settings), budget=8000, thresholds=project.routing_thresholds)
        store.close()
    return t_run.seconds, t_run.seconds - t_plain.seconds


if __name__ == "__main__":
    main()
