"""Secrets stay out of what is stored, logged and printed: an API key echoed back altered (a
character dropped, split over lines or spaces, cut) by the fake OpenAI server over real HTTP,
through the `refinery` CLI and Dagster; and malformed database URLs."""

from __future__ import annotations

import os
import re
import threading
import traceback

import dagster as dg
import psycopg
import pytest

from dagster_project.core.db.pg import (
    DatabaseSetupError,
    check_url,
    dagster_storage_url,
    mask_url,
)
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from dagster_project.core.secrets import ECHO_MIN, scrub
from tests.conftest import (
    PROJECT_ROOT,
    refine_cli_env,
    refinery,
)
from tests.conftest import ingest_sample as ingest
from tests.fakes.openai_server import refinement_answer

KEY = "sk-proj-Q7vXb29LmZtR4kWc8NpY3sHd"
ECHOES = {
    "dropped": KEY[:14] + KEY[15:],
    "newline": KEY[:16] + "\n" + KEY[16:],
    "spaced": " ".join(KEY[i:i + 6] for i in range(0, len(KEY), 6)),
    "partial": KEY[9:25],
    "whole": KEY,
}


def leaks(text: str, secret: str = KEY) -> list[str]:
    """Runs of ECHO_MIN characters of `secret` in `text`, whitespace ignored."""
    compact = re.sub(r"\s", "", text)
    return sorted({secret[i:i + ECHO_MIN] for i in range(len(secret) - ECHO_MIN + 1)
                   if secret[i:i + ECHO_MIN] in compact})


@pytest.mark.parametrize("kind", sorted(ECHOES))
def test_scrub_removes_the_key_and_its_near_echoes(kind):
    text = f"Incorrect API key provided: {ECHOES[kind]}. You can find your key at https://example.com."
    assert leaks(text) and not leaks(scrub(text, [KEY])), scrub(text, [KEY])
    assert "Incorrect API key provided" in scrub(text, [KEY]) and "example.com" in scrub(text, [KEY])


def test_scrub_masks_any_sk_token_and_leaves_ordinary_text_alone():
    assert scrub("key sk-other-abcdefghij1234 here") == "key sk-*** here"
    text = "The refined summary mentions sk-learn and a task-list of 12 items."
    assert scrub(text, [KEY]) == text


def test_an_error_escaping_the_refine_step_carries_no_echo_of_the_key(store, fake_openai):
    """Whatever raises inside the step (here the progress callback, which logs to Dagster)
    reaches Dagster's event log with its causes: it is re-raised scrubbed, without the chain."""
    fake_openai.chat_responder = refinement_answer
    llm = LLMChain(models=["gpt-4o-mini"], base_url=fake_openai.base_url, api_key=KEY, prices={})

    def progress(done, total):
        try:
            raise ValueError(f"the log rejected a line quoting {ECHOES['newline']}")
        except ValueError as exc:
            raise RuntimeError(f"logging failed: {exc}") from exc

    with pytest.raises(Exception) as info:
        refine_collection(ingest(store), "support", llm, wordpiece_counter(), budget=8000,
                          thresholds=RoutingThresholds(), progress=progress)
    shown = "".join(traceback.format_exception(info.value))
    assert "logging failed" in shown and not leaks(shown), leaks(shown)


# ------------------------------------------------------------------ through the CLI and Dagster

@pytest.fixture
def cli_env(pg_server, tmp_path, fake_openai):
    return refine_cli_env(pg_server, tmp_path, fake_openai, OPENAI_API_KEY=KEY, LLM_MAX_RETRIES="0",
                          REFINE_MIN_WORDS="0", REFINE_MIN_QUALITY="0")


def echoing_server(fake) -> dict[str, int]:
    """Each document (by title, in order of arrival) gets one way of echoing the key: in a 401's
    or a 500's error body, in invalid answers (quarantined), or inside a valid refinement."""
    ways = ["401", "500", "invalid", "valid"]
    assigned: dict[str, str] = {}
    used = {w: 0 for w in ways}
    lock = threading.Lock()

    def responder(body):
        title = re.search(r"^Title: (.+)$", body["messages"][1]["content"], re.MULTILINE).group(1)
        with lock:
            way = assigned.setdefault(title, ways[len(assigned) % len(ways)])
            used[way] += 1
        if way == "401":
            return 401, {}, {"error": {"message": f"Incorrect API key provided: {ECHOES['dropped']}"}}
        if way == "500":
            return 500, {}, {"error": {"message": f"upstream failed for key\n{ECHOES['newline']}"}}
        if way == "invalid":
            echo = ECHOES["spaced"] if len(body["messages"]) == 2 else ECHOES["partial"]
            return f"I cannot answer with JSON; your key is {echo}"
        answer = refinement_answer(body).replace("written by", f"for {ECHOES['partial']} ({ECHOES['dropped']}) by")
        return answer

    fake.chat_responder = responder
    return used


def test_echoes_of_the_key_reach_no_table_no_event_log_and_no_output(cli_env, fake_openai):
    used = echoing_server(fake_openai)
    run = refinery(cli_env, "refine", "--json")
    # Documents answered 401 or 500 await the model: the run says so (exit 1), its messages too.
    assert run.returncode == 1 and '"awaiting_model"' in run.stdout, run.stderr
    assert all(used.values()), used  # every way of echoing was exercised
    assert not leaks(run.stdout + run.stderr), leaks(run.stdout + run.stderr)

    with psycopg.connect(cli_env["DATABASE_URL"]) as conn:
        def texts(sql):
            return [str(v) for row in conn.execute(sql).fetchall() for v in row]

        errors = texts("SELECT error FROM llm_calls WHERE error IS NOT NULL")
        quarantined = texts("SELECT raw_text, errors::text FROM refine_quarantine")
        refined = texts("SELECT refined::text FROM refined_documents")
        comments = texts("SELECT comment FROM feedback_events WHERE comment IS NOT NULL")
    # The echoes were there to leak: errors of both kinds, quarantined answers, refinements
    # quoting the key, each stored with the key masked.
    assert any("answered 401" in e for e in errors) and any("answered 500" in e for e in errors)
    assert quarantined and any("your key is" in q for q in quarantined)
    for name, values in {"llm_calls": errors, "refine_quarantine": quarantined, "refined_documents": refined,
                         "feedback_events": comments}.items():
        assert not leaks("\n".join(values)), (name, leaks("\n".join(values)))
    assert any("***" in r for r in refined)

    os.environ["DAGSTER_PG_URL"] = dagster_storage_url(cli_env["DAGSTER_PG_URL"])
    try:
        with dg.DagsterInstance.from_config(str(PROJECT_ROOT)) as instance:
            runs = instance.get_runs()
            assert runs
            log = "\n".join(repr(event) for r in runs for event in instance.all_logs(r.run_id))
    finally:
        del os.environ["DAGSTER_PG_URL"]
    assert "answered 401" in log  # the warnings are in the event log...
    assert not leaks(log), leaks(log)  # ...without the key


# ------------------------------------------------------------------ database URLs

BAD_URLS = {
    "a % in the password": "postgresql://writer:pa%ss-Hunter42@localhost:5432/refinery",
    "a space in the password": "postgresql://writer:pa ss-Hunter42@localhost:5432/refinery",
    "an @ in the password": "postgresql://writer:pa@ss-Hunter42@localhost:5432/refinery",
    "a / in the password": "postgresql://writer:pa/ss-Hunter42@localhost:5432/refinery",
    "unparsable (bracket)": "postgresql://writer:pa[ss-Hunter42@localhost:5432/refinery",
    "a port that is no number": "postgresql://writer:Hunter42-pass@localhost:54x2/refinery",
    "another scheme": "mysql://writer:Hunter42-pass@localhost/refinery",
    "key=value garbage": "host=localhost password=Hunter42-pass nonsense",
}


@pytest.mark.parametrize("url", BAD_URLS.values(), ids=BAD_URLS.keys())
def test_malformed_database_url_is_refused_without_its_password(url):
    with pytest.raises(DatabaseSetupError) as info:
        check_url(url, "DATABASE_URL")
    message = str(info.value)
    assert "Hunter42" not in message and "\n" not in message
    assert message.startswith("DATABASE_URL is not a valid PostgreSQL connection string") and "%25" in message
    assert "Hunter42" not in mask_url(url)


@pytest.mark.parametrize("url", [BAD_URLS["a % in the password"], BAD_URLS["unparsable (bracket)"]],
                         ids=["percent", "unparsable"])
def test_cli_says_what_is_wrong_with_database_url_in_one_line(url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_PG_URL", "DAGSTER_HOME")}
    env.update(DATABASE_URL=url, REFINERY_HOME=str(tmp_path / "home"), PGSSL_MODE="require")
    for command in (["status"], ["db-url"]):
        out = refinery(env, *command)
        assert out.returncode == 2, (command, out.stderr)
        assert "Hunter42" not in out.stdout + out.stderr and "Traceback" not in out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("refinery: DATABASE_URL is not a valid"), out.stderr
