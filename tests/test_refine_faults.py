"""Refine under faults, on a real PostgreSQL with the fake OpenAI server over real HTTP: the
step's database sessions are terminated mid-run (pg_terminate_backend from another connection),
and `refinery refine` is SIGKILLed with requests in flight: every request the server received is
in llm_calls after the rerun (the journal of calls in flight, sql/0025)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import psycopg
import pytest

from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain
from dagster_project.core.refine.pipeline import RefineInterrupted, refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import PROJECT_ROOT, new_database, refinery, write_manifest
from tests.fakes.openai_server import refinement_answer

DOCUMENTS = 80
CONCURRENCY = 4
KILL_AT = 30  # the chat request during which the step's sessions are terminated
EVERYTHING_TO_THE_MODEL = RoutingThresholds(min_words=0, min_quality=0.0)


def ingest_notes(store, tmp_path, documents: int = DOCUMENTS):
    """`documents` notes in the collection `notes`, ingested with the hash embedder; returns the manifest."""
    root = tmp_path / "notes"
    root.mkdir()
    for i in range(documents):
        (root / f"note-{i:03}.md").write_text(
            f"# Note {i}\n\n" + " ".join(f"Paragraph {i} about topic {j} and its details." for j in range(30)) + "\n")
    manifest = write_manifest(tmp_path, {"notes": {"root": str(root), "include": ["*.md"]}})
    ingest_collection(store, load_manifest(manifest).collections["notes"], embedder=HashEmbedder(),
                      chunk_settings=ChunkSettings(), max_file_bytes=10**6)
    return manifest


@pytest.fixture
def notes(store, tmp_path):
    ingest_notes(store, tmp_path)
    return store


def chain(fake) -> LLMChain:
    return LLMChain(models=["primary-model"], base_url=fake.base_url, api_key="sk-test-faults", prices={},
                    max_retries=0, timeout=10, concurrency=CONCURRENCY)


def refine(store, llm):
    return refine_collection(store, "notes", llm, wordpiece_counter(), budget=8000,
                             thresholds=EVERYTHING_TO_THE_MODEL, run_id="fault-run")


def count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


def test_terminated_sessions_stop_the_model_calls_keep_what_was_stored_and_a_rerun_finishes(
        notes, db_url, fake_openai):
    fake_openai.delay = 0.2  # a slot turns over slower than the step notices a failed write
    seen = {"chat": 0, "stored_at_kill": None}
    lock = threading.Lock()

    def responder(body):
        with lock:
            seen["chat"] += 1
            kill = seen["chat"] == KILL_AT
        if kill:
            with psycopg.connect(db_url, autocommit=True) as admin:
                seen["stored_at_kill"] = admin.execute("SELECT count(*) FROM refined_documents").fetchone()[0]
                killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
                assert killed >= 1
        return refinement_answer(body)

    fake_openai.chat_responder = responder
    with pytest.raises(Exception) as failure:
        refine(notes, chain(fake_openai))
    calls_after_kill = len(fake_openai.chat_requests) - KILL_AT
    print(f"calls after the kill: {calls_after_kill}; stored at the kill: {seen['stored_at_kill']}")
    # Only what was in flight (or already prepared to go) when the first write failed.
    assert calls_after_kill <= 2 * CONCURRENCY, calls_after_kill
    assert failure.type is RefineInterrupted, failure.value
    message = str(failure.value)
    assert "results could not be stored" in message and "run the refine again" in message

    # Results are written as they come: most of those paid for before the kill were stored,
    # and nothing stored is lost.
    stored = count(db_url, "SELECT count(*) FROM refined_documents")
    assert seen["stored_at_kill"] >= KILL_AT - 2 * CONCURRENCY
    assert stored >= seen["stored_at_kill"]
    assert count(db_url, "SELECT count(DISTINCT document_id) FROM llm_calls") == stored
    # Each request sent is logged or journaled, never both: the answers the retry stored took
    # their journal rows with them; a request whose journal row could not be written was not sent.
    sent = len(fake_openai.chat_requests)
    assert count(db_url, "SELECT count(*) FROM llm_calls") + count(db_url, "SELECT count(*) FROM llm_calls_sent") == sent

    # The rerun sends only the documents not stored, and ends exact.
    fake_openai.chat_responder = refinement_answer
    before = len(fake_openai.chat_requests)
    again = refine(notes, chain(fake_openai))
    assert again.skipped == stored and again.refined == DOCUMENTS - stored
    assert len(fake_openai.chat_requests) - before == DOCUMENTS - stored
    assert count(db_url, "SELECT count(*) FROM refined_documents") == DOCUMENTS
    assert count(db_url, "SELECT count(*) FROM llm_calls WHERE outcome = 'ok'") == DOCUMENTS
    assert count(db_url, "SELECT count(DISTINCT document_id) FROM llm_calls") == DOCUMENTS
    # Every request the server received is logged: the calls in flight at the termination were
    # stored by the retry on a fresh connection or, if not, logged as lost by the rerun.
    assert count(db_url, "SELECT count(*) FROM llm_calls") == len(fake_openai.chat_requests)
    assert count(db_url, "SELECT count(*) FROM llm_calls_sent") == 0


def test_each_request_is_journaled_before_it_is_sent_and_a_finished_run_leaves_no_journal(notes, db_url,
                                                                                       fake_openai):
    """In process: when a request reaches the server its journal row is committed; a run that
    ends normally has moved every call to llm_calls and left the journal empty."""
    journaled = []

    def responder(body):
        with psycopg.connect(db_url) as conn:
            journaled.append(conn.execute("SELECT count(*) FROM llm_calls_sent WHERE collection = 'notes' "
                                          "AND run_id = 'fault-run' AND model = 'primary-model' "
                                          "AND attempt = 'answer'").fetchone()[0])
        return refinement_answer(body)

    fake_openai.chat_responder = responder
    report = refine(notes, chain(fake_openai))
    assert report.refined == DOCUMENTS and report.lost_calls == 0
    assert len(journaled) == DOCUMENTS and min(journaled) >= 1  # its own row, at least
    assert count(db_url, "SELECT count(*) FROM llm_calls_sent") == 0
    assert count(db_url, "SELECT count(*) FROM llm_calls WHERE outcome = 'ok'") == DOCUMENTS


KILLED_DOCUMENTS = 40
HOLD_AT = 12  # the chat request from which the server holds its answers until the kill


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_killed_refine_s_calls_in_flight_are_logged_as_lost_by_the_next_run(pg_server, store, db_url, tmp_path,
                                                                               fake_openai, stop_signal):
    """`refinery refine` SIGKILLed while its requests wait on the server: the rerun logs those
    requests in llm_calls as 'lost' (priced on their prompt tokens), sends only the documents not
    stored, and then the server's count of chat requests and llm_calls agree, with no journal row
    left. Without the journal, the calls in flight at the kill were missing from llm_calls. Ctrl-C
    (SIGINT, the held requests then answered): no new request is sent (the step's threads used to
    send every remaining document's before the process could exit); whatever the stopping process
    still stored took its journal rows with it, the rest is logged as lost, and the counts agree."""
    manifest = ingest_notes(store, tmp_path, KILLED_DOCUMENTS)
    env = {**os.environ, "DATABASE_URL": db_url, "DAGSTER_PG_URL": new_database(pg_server, template="template1"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "REFINERY_HOME": str(tmp_path / "refinery_home"),
           "EMBED_PROVIDER": "hash", "CORPUS_MANIFEST": str(manifest), "LLM_MODEL": "gpt-4o-mini",
           "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_API_KEY": "sk-test-killed-refine",
           "LLM_MAX_RETRIES": "0", "LLM_CONCURRENCY": str(CONCURRENCY), "REFINE_MIN_WORDS": "0",
           "REFINE_MIN_QUALITY": "0"}
    fake_openai.delay = 0.05
    release = threading.Event()
    seen = {"chat": 0}
    lock = threading.Lock()

    def holding(body):
        with lock:
            seen["chat"] += 1
            held = seen["chat"] >= HOLD_AT
        if held:  # every slot ends up waiting here: the kill finds CONCURRENCY requests in flight
            release.wait(60)
        return refinement_answer(body)

    fake_openai.chat_responder = holding
    process = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "refine"], env=env, cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, last, steady_since = time.monotonic() + 240, -1, time.monotonic()
        while time.monotonic() < deadline:  # until the held requests stop coming: every slot is taken
            assert process.poll() is None, process.communicate()
            now = len(fake_openai.chat_requests)
            if now != last:
                last, steady_since = now, time.monotonic()
            elif now >= HOLD_AT and time.monotonic() - steady_since > 1.5:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the refine never reached {HOLD_AT} chat requests ({last})")
        workers = psutil.Process(process.pid).children(recursive=True)
        sent_before = len(fake_openai.chat_requests)
        if stop_signal == signal.SIGKILL:
            for victim in [process, *workers]:  # kill -9: the supervisor and the process doing the work
                try:
                    os.kill(victim.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:  # as a terminal's Ctrl-C reaches `refinery refine` (it passes it to its child)
            os.kill(process.pid, signal.SIGINT)
            time.sleep(0.5)
            release.set()
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == (-9 if stop_signal == signal.SIGKILL else 130), stderr
        psutil.wait_procs(workers, timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        release.set()
    sent_at_kill = len(fake_openai.chat_requests)
    logged_at_kill = count(db_url, "SELECT count(*) FROM llm_calls")
    in_flight = sent_at_kill - logged_at_kill
    print(f"chat requests at the stop: {sent_at_kill}; logged: {logged_at_kill}")
    assert sent_at_kill == sent_before  # Ctrl-C too: no request is sent once the process is stopping
    assert count(db_url, "SELECT count(*) FROM llm_calls_sent") == in_flight  # sent: logged or journaled
    if stop_signal == signal.SIGKILL:
        assert in_flight == CONCURRENCY  # every slot's request: what QA saw lost

    fake_openai.chat_responder = refinement_answer
    rerun = refinery(env, "refine", "--json")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert count(db_url, "SELECT count(*) FROM refined_documents") == KILLED_DOCUMENTS
    assert len(fake_openai.chat_requests) == KILLED_DOCUMENTS + in_flight  # the rerun sent only what was not stored
    # The server's count and the log agree; the lost ones are priced on their prompt tokens.
    assert count(db_url, "SELECT count(*) FROM llm_calls WHERE collection = 'notes'") == len(fake_openai.chat_requests)
    assert count(db_url, "SELECT count(*) FROM llm_calls_sent") == 0
    notes_run = json.loads(rerun.stdout)["collections"]["notes"]
    assert notes_run["lost_calls"] == in_flight, notes_run
    with psycopg.connect(db_url) as conn:
        lost = conn.execute("SELECT prompt_tokens, completion_tokens, cost_usd::float8, error FROM llm_calls "
                            "WHERE outcome = 'lost'").fetchall()
        stats = {r[0]: r[1] for r in conn.execute(
            "SELECT outcome, cost_usd::float8 FROM get_refiner_stats() WHERE source = 'llm_calls'")}
        total = conn.execute("SELECT sum(cost_usd)::float8 FROM llm_calls").fetchone()[0]
    assert len(lost) == in_flight
    if not lost:
        return  # Ctrl-C: the stopping process stored every answer it had
    for prompt_tokens, completion_tokens, cost, error in lost:
        assert prompt_tokens > 0 and completion_tokens == 0
        assert cost == pytest.approx(prompt_tokens * 0.15 / 1e6)  # gpt-4o-mini's input price
        assert "stopped before this call's answer was recorded" in error and "may have billed it" in error
    assert stats["lost"] == pytest.approx(sum(c for _, _, c, _ in lost)) and stats["lost"] > 0
    assert total == pytest.approx(sum(stats.values()))
