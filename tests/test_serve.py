"""`refinery serve` as deployed: a real process on a real port, tokens made by the CLI, requests
over HTTP; one tenant's token reads only its collections; bad requests get a 4xx JSON body that
says what to fix; tokens never reach the log; the health check notices a dead database, and a
killed postmaster gets fast 503s, then service again soon after it is back."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
import pytest

from dagster_project.core.db.pg import _with_database
from tests.conftest import PROJECT_ROOT, enterable, new_database, refinery
from tests.test_tenants import tenant_manifest


class Served:
    def __init__(self, env: dict, port: int, process: subprocess.Popen, log: list[str]):
        self.env, self.port, self.process, self.log = env, port, process, log

    def request(self, method: str, path: str, body=None, token: str | None = None, headers: dict | None = None,
                raw: bytes | None = None) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            all_headers = dict(headers or {})
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            if data is not None:
                all_headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=all_headers)
            response = conn.getresponse()
            payload = response.read()
            return response.status, json.loads(payload) if payload else {}, dict(response.getheaders())
        finally:
            conn.close()


def start_serve(env: dict) -> Served:
    process = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "serve", "--port", "0"], env=env,
                               cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    deadline = time.monotonic() + 120
    port = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        log.append(line)
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    if port is None:
        process.kill()
        pytest.fail("refinery serve did not start:\n" + "".join(log))
    threading.Thread(target=lambda: log.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return Served(env, port, process, log)


def stop_serve(server: Served) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def served(pg_server, tmp_path_factory):
    """Product owned by acme, sales by globex, support public; ingested and refined (extractive);
    a token for acme and one for globex; `refinery serve` running. One per module (an ingest
    costs most of a test): tests leave it serving as they found it."""
    root = enterable(tmp_path_factory.mktemp("served"))
    env = {**os.environ, "DATABASE_URL": new_database(pg_server), "EMBED_PROVIDER": "hash",
           "REFINERY_HOME": str(root / "home"), "CORPUS_MANIFEST": tenant_manifest(root)}
    for name in ("LLM_MODEL", "OPENAI_API_KEY", "CHUNK_MAX_TOKENS", "DAGSTER_HOME"):
        env.pop(name, None)
    for args in (("ingest",), ("refine",)):
        done = refinery(env, *args)
        assert done.returncode == 0, done.stderr
    server = start_serve(env)
    server.tokens = {tenant: create_token(env, tenant) for tenant in ("acme", "globex")}
    yield server
    stop_serve(server)


def create_token(env: dict, tenant: str) -> dict:
    done = refinery(env, "token", "create", "--tenant", tenant, "--json")
    assert done.returncode == 0, done.stderr
    token = json.loads(done.stdout)
    assert token["token"] not in done.stderr
    return token


def test_search_and_documents_over_http_see_only_the_tokens_tenant(served):
    acme, globex = served.tokens["acme"]["token"], served.tokens["globex"]["token"]
    status, body, _ = served.request("GET", "/v1/search?q=" + quote("pricing plans and discounts") + "&k=10",
                                     token=globex)
    assert status == 200, body
    assert body["tenant"] == "globex" and body["hits"] and {h["collection"] for h in body["hits"]} == {"sales"}
    for mode in ("text", "vector", "hybrid"):
        status, body, _ = served.request("POST", "/v1/search", {"query": "pricing plans and discounts", "k": 10,
                                                                "mode": mode}, token=acme)
        assert status == 200, body
        assert {h["collection"] for h in body["hits"]} <= {"product"} and body["mode"] == mode
    # a filter naming another tenant's collection does not widen the search: it is answered exactly
    # like a collection that does not exist (a 404 that says to check the name, not an empty 200)
    other = served.request("POST", "/v1/search", {"query": "pricing", "filters": {"collection": "sales"}}, token=acme)
    typo = served.request("GET", "/v1/search?q=pricing&collection=prodcut", token=acme)
    assert other[0] == typo[0] == 404 and other[1]["error"]["code"] == typo[1]["error"]["code"] == "no_collection"
    assert "'prodcut'" in typo[1]["error"]["message"] and "corpus.yaml" in typo[1]["error"]["message"]
    assert "sales" not in str(typo[1]) and "globex" not in str(other[1])
    status, body, _ = served.request("GET", "/v1/search?q=zzzqqq&collection=product&mode=text", token=acme)
    assert status == 200 and body["hits"] == []  # a real collection with no match stays an empty 200
    status, body, _ = served.request("POST", "/v1/search", {"query": "sync offline", "filters": {"category": "product"}},
                                     token=acme)
    assert status == 200 and body["hits"] and all(h["collection"] == "product" for h in body["hits"])

    hit = served.request("GET", "/v1/search?q=pricing&k=1", token=globex)[1]["hits"][0]
    document_url = f"/v1/documents/{quote(hit['collection'])}/{quote(hit['path'])}"
    status, body, _ = served.request("GET", document_url, token=globex)
    assert status == 200, body
    assert body["collection"] == "sales" and body["refined"]["title"] and body["link"] == "extractive"
    assert body["awaiting_model"] is False  # extractive by design (no model configured), not a stand-in
    # another tenant's document is answered exactly like a missing one
    missing = served.request("GET", document_url, token=acme)
    absent = served.request("GET", "/v1/documents/sales/no-such-file.md", token=acme)
    assert missing[0] == absent[0] == 404 and missing[1]["error"]["code"] == absent[1]["error"]["code"]


def test_search_answers_documents_with_passages_unless_chunks_are_asked_for(served):
    token = served.tokens["acme"]["token"]
    status, body, _ = served.request("GET", "/v1/search?q=sync&k=5&passages=2", token=token)
    assert status == 200, body
    paths = [h["path"] for h in body["hits"]]
    assert body["passages"] == 2 and paths and len(paths) == len(set(paths))  # one entry per document
    assert all(1 <= len(h["passages"]) <= 2 and h["text"] == h["passages"][0]["text"] for h in body["hits"])
    status, body, _ = served.request("POST", "/v1/search", {"query": "sync", "k": 20, "passages": 0}, token=token)
    assert status == 200 and body["hits"] and all("passages" not in h for h in body["hits"])
    assert len({h["chunk_id"] for h in body["hits"]}) == len(body["hits"]) > len({h["path"] for h in body["hits"]})
    status, body, _ = served.request("GET", "/v1/search?q=sync&passages=11", token=token)
    assert status == 400 and body["error"]["code"] == "bad_passages"


def test_bad_requests_get_a_4xx_json_error_that_says_what_to_fix(served):
    token = served.tokens["acme"]["token"]
    cases = [
        (("GET", "/v1/search?q=x"), {}, 401, "unauthorized", "Authorization: Bearer"),
        (("GET", "/v1/search?q=x"), {"token": "rfy_not-a-real-token"}, 401, "unauthorized", "unknown or revoked"),
        (("GET", "/v1/search?q=x&token=" + token), {"token": token}, 400, "token_in_url", "Authorization header"),
        (("GET", "/v1/search"), {"token": token}, 400, "missing_query", "`q`"),
        (("GET", "/v1/search?q=x&k=0"), {"token": token}, 400, "bad_k", "from 1 to 100"),
        (("GET", "/v1/search?q=x&k=many"), {"token": token}, 400, "bad_k", "from 1 to 100"),
        # digits to str.isdigit, not numbers to int(): once a 500 with a traceback in the log
        (("GET", "/v1/search?q=x&k=%C2%B2"), {"token": token}, 400, "bad_k", "from 1 to 100"),
        (("GET", "/v1/search?q=x&k=%D9%A3"), {"token": token}, 400, "bad_k", "from 1 to 100"),
        (("GET", "/v1/search?q=x&passages=%C2%B3"), {"token": token}, 400, "bad_passages", "from 0"),
        (("POST", "/v1/search"), {"token": token, "raw": b'{"query": "x", "k": ' + b"9" * 5000 + b"}"}, 400,
         "bad_json", "not valid JSON"),
        (("GET", "/v1/search?q=x&mode=fuzzy"), {"token": token}, 400, "bad_mode", "hybrid"),
        (("GET", "/v1/search?q=x&colour=red"), {"token": token}, 400, "unknown_parameter", "colour"),
        (("GET", "/v1/search?q=" + "x" * 2001), {"token": token}, 400, "query_too_long", "at most 2000"),
        (("POST", "/v1/search"), {"token": token, "raw": b"{not json"}, 400, "bad_json", "not valid JSON"),
        (("POST", "/v1/search"), {"token": token, "body": ["query"]}, 400, "bad_json", "JSON object"),
        (("POST", "/v1/search"), {"token": token, "body": {"query": "x", "filters": {"owner": "me"}}}, 400,
         "bad_filters", "collection, category"),
        (("POST", "/v1/search"), {"token": token, "raw": b"x" * 20000}, 413, "body_too_large", "at most 16384"),
        (("POST", "/v1/search"), {"token": token, "body": {"query": "x"}, "headers": {"Content-Type": "text/plain"}},
         415, "unsupported_media_type", "application/json"),
        (("DELETE", "/v1/search"), {"token": token}, 405, "method_not_allowed", "GET or POST"),
        (("GET", "/v2/everything"), {}, 404, "not_found", "/v1/search"),
        (("GET", "/v1/documents/product"), {"token": token}, 400, "bad_document", "{collection}/{path}"),
        (("GET", "/v1/search?q=" + "x" * 9000), {"token": token}, 414, "uri_too_long", "POST /v1/search"),
    ]
    for (method, path), kw, status, code, hint in cases:
        got_status, body, _ = served.request(method, path, **kw)
        assert (got_status, body["error"]["code"]) == (status, code), (path, body)
        assert hint in body["error"]["message"], (path, body)
    # what the HTTP layer refuses before any route gets a JSON body too
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as raw:
        # 101 headers, one over the stdlib's limit (and nothing after them: all of it is read)
        raw.sendall(b"GET /health/live HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)))
        answer = b"".join(iter(lambda: raw.recv(65536), b""))
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and json.loads(payload)["error"]["code"] == "bad_http"
    # the server still answers after all of that
    assert served.request("GET", "/v1/search?q=sync", token=token)[0] == 200


def test_a_revoked_token_is_refused_at_once_and_tokens_never_reach_the_log(served):
    token = create_token(served.env, "globex")
    assert served.request("GET", "/v1/search?q=pricing", token=token["token"])[0] == 200
    done = refinery(served.env, "token", "revoke", str(token["id"]))
    assert done.returncode == 0, done.stderr
    status, _, headers = served.request("GET", "/v1/search?q=pricing", token=token["token"])
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    listed = refinery(served.env, "token", "list", "--json")
    assert token["token"] not in listed.stdout
    assert [t["revoked_at"] is not None for t in json.loads(listed.stdout) if t["id"] == token["id"]] == [True]
    served.request("GET", "/v1/search?q=secret+question", token=served.tokens["acme"]["token"])
    time.sleep(0.5)
    log = "".join(served.log)
    assert "GET /v1/search 200" in log and "GET /v1/search 401" in log
    for secret in (served.tokens["acme"]["token"], token["token"], "secret question", "secret+question"):
        assert secret not in log
    with psycopg.connect(served.env["DATABASE_URL"]) as conn:  # stored hashed: the value is nowhere in the table
        stored = conn.execute("SELECT token_hash FROM api_tokens").fetchall()
    assert len(stored) == 3 and all(token["token"].encode() not in bytes(h) for (h,) in stored)


def test_health_checks_the_database_and_the_embedder_and_notices_an_outage(served):
    status, body, _ = served.request("GET", "/health")
    assert status == 200, body
    assert body["database"]["ok"] and body["embedder"]["ok"] and body["embedder"]["detail"].startswith("hash:")
    assert served.request("GET", "/health/live")[0] == 200
    # the service's connections die (as when the server restarts): health says so, then recovers
    url = served.env["DATABASE_URL"]
    database = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(_with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        try:
            status, body, _ = served.request("GET", "/health")
            assert status == 503 and body["status"] == "unavailable" and not body["database"]["ok"], body
            status, body, _ = served.request("GET", "/v1/search?q=sync", token=served.tokens["acme"]["token"])
            assert status == 503 and body["error"]["code"] == "database_unavailable", body
        finally:
            conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    deadline = time.monotonic() + 30
    while served.request("GET", "/health")[0] != 200:
        assert time.monotonic() < deadline, "the service did not recover after the database came back"
        time.sleep(0.5)
    assert served.request("GET", "/v1/search?q=sync", token=served.tokens["acme"]["token"])[0] == 200


def test_nul_bytes_lone_surrogates_and_bad_lengths_get_a_400_naming_the_value(served):
    token = served.tokens["acme"]["token"]
    cases = [
        (("GET", "/v1/search?q=refund&status=%00"), {}, "bad_character", "parameter status"),
        (("GET", "/v1/search?q=refund%00x"), {}, "bad_character", "parameter q"),
        (("GET", "/v1/search?q=refund&%00=x"), {}, "bad_character", "a parameter name"),
        (("GET", "/v1/documents/product/a%00b"), {}, "bad_character", "the URL path"),
        (("GET", "/v1/documents/product/a%ED%A0%80b"), {}, None, None),  # invalid UTF-8: no such document
        (("POST", "/v1/search"), {"body": {"query": "refund", "filters": {"doc_type": "\u0000"}}},
         "bad_character", "filters.doc_type"),
        (("POST", "/v1/search"), {"body": {"query": "refund\u0000x"}}, "bad_character", "query"),
        (("POST", "/v1/search"), {"body": {"query": "refund", "filters": {"doc\u0000": "x"}}},
         "bad_character", "a field name in filters"),
        (("POST", "/v1/search"), {"raw": b'{"query": "refund \\ud800"}'}, "bad_character", "query is not valid Unicode"),
        (("POST", "/v1/search"), {"raw": b"", "headers": {"Content-Length": "-5"}}, "bad_content_length", "'-5'"),
        (("POST", "/v1/search"), {"raw": b"", "headers": {"Content-Length": "1_0"}}, "bad_content_length", "0 or more"),
        (("POST", "/v1/search"), {"raw": b"[" * 8000 + b"]" * 8000}, "bad_json", "not valid JSON"),
    ]
    for (method, path), kw, code, hint in cases:
        status, body, _ = served.request(method, path, token=token, **kw)
        if code is None:
            assert status == 404 and body["error"]["code"] == "no_document", (path, body)
            continue
        assert (status, body["error"]["code"]) == (400, code), (path, kw, body)
        assert hint in body["error"]["message"], (path, kw, body)
    time.sleep(0.5)
    log = "".join(served.log)
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
    assert served.request("GET", "/v1/search?q=sync", token=token)[0] == 200


def test_a_token_anywhere_in_the_url_is_refused_and_no_part_of_it_is_logged(served):
    token = served.tokens["acme"]["token"]
    leaked = create_token(served.env, "acme")["token"]  # the one pasted into URLs
    encoded = "".join(f"%{b:02X}" for b in leaked.encode())
    paths = [f"/v1/{leaked}", f"/v1/documents/product/{leaked}", f"/v1/search;{leaked}",
             f"/v1/search?q={leaked}", f"/v1/search?q=x&session={leaked}", f"/v1/search?q=x&{leaked}",
             f"/v1/documents/product/{encoded}", f"/v1/documents/product/x/{leaked[:24]}.md",
             f"/{leaked}/health"]
    for path in paths:
        for auth in (token, None):
            status, body, _ = served.request("GET", path, token=auth)
            assert status == 400 and body["error"]["code"] == "token_in_url", (path, body)
            assert "Authorization header" in body["error"]["message"]
    # a request line the HTTP layer refuses before any route
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as raw:
        raw.sendall(f"GET /v1/{leaked} HTTP/1.1 extra\r\n\r\n".encode())
        answer = b"".join(iter(lambda: raw.recv(65536), b""))
    assert b'"status": 400, "code": "bad_http"' in answer, answer
    time.sleep(0.5)
    log = "".join(served.log)
    assert log.count(" 400 ") >= len(paths) * 2, log[-3000:]
    secret = leaked[len("rfy_"):]
    pieces = {secret[i:i + 8] for i in range(len(secret) - 7)}
    assert not [p for p in pieces if p in log], log[-3000:]


# ------------------------------------------------------------------ the postmaster killed under serve

@pytest.fixture
def own_database_home():
    """A REFINERY_HOME with its own embedded server (one this test may kill), directly under the
    temporary directory (under root the server's user must cross every parent)."""
    home = enterable(Path(tempfile.mkdtemp(prefix="refinery-serve-")))
    yield home
    pid_file = home / "pgdata" / "postmaster.pid"
    try:
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        postmaster.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        postmaster.wait(20)
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    shutil.rmtree(home, ignore_errors=True)


def _timed(served: Served, *args, **kwargs) -> tuple[float, int, dict]:
    started = time.monotonic()
    status, body, _ = served.request(*args, **kwargs)
    return time.monotonic() - started, status, body


def test_with_the_postmaster_killed_requests_fail_fast_and_search_recovers_once_it_is_back(own_database_home):
    home = own_database_home
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME", "LLM_MODEL", "OPENAI_API_KEY",
                        "CHUNK_MAX_TOKENS")}
    env.update(REFINERY_HOME=str(home / "home"), EMBED_PROVIDER="hash", CORPUS_MANIFEST=tenant_manifest(home))
    done = refinery(env, "ingest")
    assert done.returncode == 0, done.stderr
    token = create_token(env, "acme")["token"]
    server = start_serve(env)
    try:
        assert server.request("GET", "/v1/search?q=sync", token=token)[0] == 200
        pid_file = home / "home" / "pgdata" / "postmaster.pid"
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        postmaster.send_signal(signal.SIGKILL)
        postmaster.wait(10)
        # down for 35 s, probed each second as a load balancer would: every answer within the bound
        # (--db-wait, 2 s). Long enough for the pool's reconnection backoff (1, 2, 4 ... 32 s) to
        # have its next attempt some 30 s away: without the fix, recovery would wait for it.
        slowest = {"/health": 0.0, "/v1/search": 0.0}
        outage_ends = time.monotonic() + 35
        while time.monotonic() < outage_ends:
            seconds, status, body = _timed(server, "GET", "/health")
            assert status == 503 and not body["database"]["ok"], body
            assert "database is unreachable" in body["database"]["error"] and seconds < 3.5, (seconds, body)
            slowest["/health"] = max(slowest["/health"], seconds)
            seconds, status, body = _timed(server, "GET", "/v1/search?q=sync", token=token)
            assert status == 503 and body["error"]["code"] == "database_unavailable", body
            assert "unreachable" in body["error"]["message"] and seconds < 3.5, (seconds, body)
            slowest["/v1/search"] = max(slowest["/v1/search"], seconds)
            time.sleep(1)
        done = refinery(env, "db", "start")
        assert done.returncode == 0, done.stderr
        back = time.monotonic()
        while server.request("GET", "/v1/search?q=sync", token=token)[0] != 200:
            assert time.monotonic() - back < 5, "search did not recover within 5 s of the database's return"
            time.sleep(0.2)
        print(f"slowest answers while down: {slowest}; search recovered {time.monotonic() - back:.1f} s after "
              "`refinery db start` returned")
        assert server.request("GET", "/health")[0] == 200
    finally:
        stop_serve(server)
        refinery(env, "db", "stop")
    time.sleep(0.3)
    log = "".join(server.log)
    assert "Traceback" not in log, log[-3000:]


def test_serve_stops_cleanly_on_sigterm(served):
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=20) == 0
