"""The read-only HTTP search API of `refinery serve`: search, a document's refined JSON and a
health check, for applications, one tenant per token, as the read roles only (stdlib HTTP)."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg

from ..db.tenants import TOKEN_PREFIX, TOKEN_SHAPE, TenantError
from ..secrets import scrub
from .hybrid import FILTER_COLUMNS, SEARCH_MODES
from .searcher import Searcher, SearchError, hit_record

log = logging.getLogger(__name__)

# Bounds on what a request may ask: anything larger is refused with 413 or 400, before any work.
MAX_BODY_BYTES = 16 * 1024
MAX_QUERY_CHARS = 2000  # as a feedback event's query (sql/0007_feedback.sql)
MAX_K = 100
DEFAULT_PASSAGES = 3  # results are documents with their best passages, as `refinery search` gives them
MAX_PASSAGES = 10
MAX_PATH_CHARS = 8192  # a 2,000-character query, URL-encoded, fits
MAX_FILTER_CHARS = 200
IDLE_SECONDS = 30  # a client that sends nothing for this long is disconnected
ROUTES = ("GET /health", "GET /health/live", "GET|POST /v1/search", "GET /v1/documents/{collection}/{path}")
_TOKEN_IN_URL = re.compile(r"(^|&)(token|access_token|api_key|key)=", re.IGNORECASE)
_CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")


def holds_token(text: str) -> bool:
    """Whether a token-shaped value is anywhere in `text`, as sent or percent-decoded."""
    return bool(TOKEN_SHAPE.search(text) or TOKEN_SHAPE.search(unquote(text)))


def without_tokens(text: str) -> str:
    """`text` fit for the log: token-shaped values masked; if one is still there once decoded
    (percent-encoded), nothing of it is kept."""
    text = TOKEN_SHAPE.sub(TOKEN_PREFIX + "[masked]", text)
    return "[not logged: it holds a token]" if holds_token(text) else text


def checked_text(value: str, name: str) -> str:
    """`value` if PostgreSQL can take it as text (no NUL, valid Unicode), else a 400 naming `name`:
    every request value passes here where it enters, so none fails later in the database."""
    if "\x00" in value:
        raise ApiError(400, "bad_character", f"{name} contains a NUL character (%00 or \\u0000): remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "bad_character", f"{name} is not valid Unicode (a lone surrogate such as "
                                             "\\ud800): send UTF-8 text") from None
    return value


def checked_json(body: object, name: str = "the body") -> None:
    """Every string of a JSON body, keys too, through checked_text, named by where it is
    (e.g. filters.doc_type). Iterative: a body may nest as deep as the JSON parser allows."""
    pending = [(body, name)]
    while pending:
        value, where = pending.pop()
        if isinstance(value, str):
            checked_text(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                inner = checked_text(key, f"a field name in {where}")
                pending.append((item, inner if where == name else f"{where}.{inner}"))
        elif isinstance(value, list):
            pending.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


_ASCII_NUMBER = re.compile(r"[0-9]{1,4}")


def _url_number(value):
    """A whole number given in a URL ("5") as an int; anything else as it came, for the caller's
    check to refuse. ASCII digits only: "²" and "٣" are digits to str.isdigit, not numbers."""
    if isinstance(value, str) and _ASCII_NUMBER.fullmatch(value.strip()):
        return int(value)
    return value


class ApiError(Exception):
    """A request refused: its HTTP status, a stable code and a message that says what to fix."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class ServeState:
    """What every request handler shares: the store (read roles only), the searcher, the embedder's
    key, and when the active model was last checked."""
    store: object
    settings: object
    searcher: Searcher | None = None
    secrets: list[str] = field(default_factory=list)  # kept out of health answers (the database password)
    checked_at: float = 0.0
    connection_wait: float = 30.0  # the store's bound on the wait for a connection (refinery serve --db-wait)
    model_check_seconds: float = 10.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def current_searcher(self) -> Searcher:
        """The searcher of the model search serves now: a model switch (refinery model switch) is
        picked up within model_check_seconds, a first ingest as soon as it is done."""
        if self.searcher is not None and time.monotonic() - self.checked_at <= self.model_check_seconds:
            return self.searcher
        with self._lock:
            active = self.store.active_model_key()
            if self.searcher is None or active != self.searcher.model_key:
                try:
                    self.searcher = Searcher(self.settings, self.store)
                except SearchError as exc:
                    raise ApiError(503, "not_ready", str(exc)) from None
            self.checked_at = time.monotonic()
            return self.searcher


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    server_version = "refinery-serve"
    sys_version = ""
    timeout = IDLE_SECONDS
    state: ServeState  # set on the subclass made by make_server

    # ------------------------------------------------------------------ plumbing

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _other_method(self) -> None:
        self._handle(self.command)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _other_method

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        self._tenant = None
        try:
            status, body = self._route(method)
            headers = {}
        except ApiError as exc:
            status, headers = exc.status, exc.headers
            body = {"error": {"status": exc.status, "code": exc.code, "message": exc.message}}
        except psycopg.OperationalError:
            self.state.store.drop_broken_connections()
            status, headers = 503, {"Retry-After": "5"}
            body = {"error": {"status": 503, "code": "database_unavailable",
                              "message": f"the database is unreachable; retry shortly (a request waits at "
                                         f"most {self.state.connection_wait:g} s for it)"}}
        except Exception:
            log.exception("%s %s failed", method, self._path_only())
            status, headers = 500, {}
            body = {"error": {"status": 500, "code": "internal", "message": "the server failed; see its log"}}
        self._send(status, body, headers)
        log.info("%s %s %d %.1f ms tenant=%s", method, self._path_only(), status,
                 (time.perf_counter() - started) * 1000, self._tenant or "-")

    def _send(self, status: int, body: dict, headers: dict) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        if status >= 400 and self._unread_body():
            self.close_connection = True  # the body was not read: it must not be taken for the next request
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What the HTTP layer refuses before a route runs (a malformed request line, a line or
        header over the stdlib's limits, an unknown method) gets a JSON body too."""
        data = json.dumps({"error": {"status": code, "code": "bad_http",
                                     "message": f"{message or explain or 'malformed request'}: send a well-formed "
                                                "HTTP/1.1 request with lines under 64 KiB and at most 100 headers"}})
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(data.encode())

    def _unread_body(self) -> bool:
        return bool(self.headers.get("Content-Length", "0") not in ("", "0") and not getattr(self, "_body_read", False)
                    or self.headers.get("Transfer-Encoding"))

    def _path_only(self) -> str:
        """The path without its query string: queries are the users' words, and stay out of logs;
        nor any token (refused with token_in_url, but still logged)."""
        return without_tokens(urlsplit(self.path).path[:200])

    def log_message(self, format: str, *args) -> None:
        pass  # one line per request from _handle, without the query string or any header

    def log_error(self, format: str, *args) -> None:
        log.warning("request refused by the HTTP layer: " + format, *args)

    # ------------------------------------------------------------------ routes

    def _route(self, method: str) -> tuple[int, dict]:
        if len(self.path) > MAX_PATH_CHARS:
            raise ApiError(414, "uri_too_long", f"the URL is longer than {MAX_PATH_CHARS} characters: "
                                                "send a long query as POST /v1/search with a JSON body")
        url = urlsplit(self.path)
        # anywhere in the URL (path, ;parameters, any query value), percent-encoded or not
        if _TOKEN_IN_URL.search(url.query) or holds_token(self.path):
            raise ApiError(400, "token_in_url", "send the token in the Authorization header (Bearer), never in "
                                                "the URL: URLs end up in logs and browser histories")
        checked_text(unquote(url.path), "the URL path")
        path = url.path.rstrip("/") or "/"
        if path == "/health/live":
            self._allow(method, "GET")
            return 200, {"status": "ok"}
        if path == "/health":
            self._allow(method, "GET")
            return self._health()
        if path == "/v1/search":
            self._allow(method, "GET", "POST")
            tenant = self._authenticate()
            request = self._json_body() if method == "POST" else self._query_params(url.query)
            return 200, self._search(tenant, request)
        if path.startswith("/v1/documents/"):
            self._allow(method, "GET")
            tenant = self._authenticate()
            return 200, self._document(tenant, path[len("/v1/documents/"):])
        raise ApiError(404, "not_found", f"no route {path[:100]!r}: the routes are {', '.join(ROUTES)}")

    def _allow(self, method: str, *allowed: str) -> None:
        if method not in allowed:
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed here: use {' or '.join(allowed)}",
                           {"Allow": ", ".join(allowed)})

    def _authenticate(self) -> str:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="refinery"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send `Authorization: Bearer <token>`; an operator creates a token "
                                                "with `refinery token create --tenant NAME`", challenge)
        token = token.strip()
        tenant = None
        if token.startswith(TOKEN_PREFIX) and len(token) <= 100:
            tenant = self.state.store.token_tenant(token)
        if tenant is None:
            raise ApiError(401, "unauthorized", "the token is unknown or revoked: ask the operator for a new one "
                                                "(`refinery token create`)", challenge)
        self._tenant = tenant
        return tenant

    def _json_body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "length_required", "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "length_required", "a POST needs a Content-Length header and a JSON body")
        if not _CONTENT_LENGTH.fullmatch(length.strip()):
            raise ApiError(400, "bad_content_length", f"Content-Length must be a whole number of bytes (0 or more), "
                                                      f"not {length.strip()[:20]!r}")
        size = int(length)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"the body is {size} bytes; at most {MAX_BODY_BYTES} are accepted")
        content_type = self.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", f"the body must be application/json, not {content_type[:50]}")
        raw = self.rfile.read(size)
        self._body_read = True
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, a number of 5,000 digits
            raise ApiError(400, "bad_json", f"the body is not valid JSON ({exc.__class__.__name__}: "
                                            f"{str(exc)[:100]})") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", 'the body must be a JSON object, e.g. {"query": "...", "k": 5}')
        checked_json(body)
        return body

    @staticmethod
    def _query_params(query: str) -> dict:
        try:
            params = parse_qs(query, strict_parsing=False, max_num_fields=20)
        except ValueError:
            raise ApiError(400, "too_many_parameters", "at most 20 query parameters are accepted") from None
        repeated = [name for name, values in params.items() if len(values) > 1]
        if repeated:
            raise ApiError(400, "repeated_parameter", f"give each parameter once: {', '.join(repeated)[:100]}")
        flat = {checked_text(name, "a parameter name"): checked_text(values[0], f"parameter {name}")
                for name, values in params.items()}
        request = {"query": flat.pop("q", flat.pop("query", None)), "filters": {}}
        for name in ("k", "mode", "passages"):
            if name in flat:
                request[name] = flat.pop(name)
        for column in FILTER_COLUMNS:
            if column in flat:
                request["filters"][column] = flat.pop(column)
        if flat:
            raise ApiError(400, "unknown_parameter", f"unknown parameter(s) {', '.join(sorted(flat))[:100]}: use q, k, "
                                                     f"mode, passages and the filters {', '.join(FILTER_COLUMNS)}")
        return request

    # ------------------------------------------------------------------ endpoints

    def _search(self, tenant: str, request: dict) -> dict:
        unknown = set(request) - {"query", "k", "mode", "passages", "filters"}
        if unknown:
            raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(sorted(unknown))[:100]}: use query, k, "
                                                 "mode, passages and filters")
        query = request.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ApiError(400, "missing_query", "give the question as `q` (GET) or `query` (POST JSON)")
        if len(query) > MAX_QUERY_CHARS:
            raise ApiError(400, "query_too_long", f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS}")
        k = _url_number(request.get("k", 5))
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ApiError(400, "bad_k", f"k must be a whole number from 1 to {MAX_K}, not {str(request.get('k'))[:20]}")
        passages = _url_number(request.get("passages", DEFAULT_PASSAGES))
        if isinstance(passages, bool) or not isinstance(passages, int) or not 0 <= passages <= MAX_PASSAGES:
            raise ApiError(400, "bad_passages", f"passages must be a whole number from 0 (the k best chunks) to "
                                                f"{MAX_PASSAGES}, not {str(request.get('passages'))[:20]}")
        mode = request.get("mode", "hybrid")
        if mode not in SEARCH_MODES:
            raise ApiError(400, "bad_mode", f"mode must be one of {', '.join(SEARCH_MODES)}, not {str(mode)[:20]!r}")
        filters = request.get("filters") or {}
        if not isinstance(filters, dict):
            raise ApiError(400, "bad_filters", f"filters must be an object with some of {', '.join(FILTER_COLUMNS)}")
        for column, value in filters.items():
            if column not in FILTER_COLUMNS:
                raise ApiError(400, "bad_filters", f"unknown filter {str(column)[:40]!r}: use {', '.join(FILTER_COLUMNS)}")
            if not isinstance(value, str) or len(value) > MAX_FILTER_CHARS:
                raise ApiError(400, "bad_filters", f"filter {column} must be a string of at most {MAX_FILTER_CHARS} "
                                                   "characters")
        searcher = self.state.current_searcher()
        started = time.perf_counter()
        try:
            hits = searcher.search(query, mode=mode, k=k, filters=filters, tenant=tenant, passages=passages or None)
        except SearchError as exc:
            raise ApiError(400, "bad_query", str(exc)) from None
        except TenantError as exc:
            raise ApiError(503, "tenant_not_ready", str(exc)) from None
        # A misspelt collection read as "no results" (QA). Another tenant's is answered the same way.
        if not hits and filters.get("collection") and not self.state.store.holds_collection(filters["collection"], tenant):
            raise ApiError(404, "no_collection", f"no collection {filters['collection'][:60]!r} with documents for "
                                                 f"tenant {tenant}: check its name in corpus.yaml")
        return {"tenant": tenant, "mode": mode, "k": k, "passages": passages, "filters": filters,
                "ms": round((time.perf_counter() - started) * 1000, 2), "hits": [hit_record(h) for h in hits]}

    def _document(self, tenant: str, rest: str) -> dict:
        collection, _, path = (unquote(part) for part in rest.partition("/"))
        if not collection or not path:
            raise ApiError(400, "bad_document", "name the document as /v1/documents/{collection}/{path}, the path as "
                                                "search hits give it (URL-encoded)")
        document = self.state.store.refined_document(collection, path, tenant)
        if document is None:  # absent and another tenant's look the same: nothing leaks
            raise ApiError(404, "no_document", f"no document {collection[:60]}/{path[:200]} for tenant {tenant}")
        if document["refined"] is None:
            raise ApiError(404, "not_refined", f"{collection[:60]}/{path[:200]} has no refined JSON yet: the operator "
                                               "runs `refinery refine`")
        return document

    def _health(self) -> tuple[int, dict]:
        checks = {"database": self._check(lambda: self.state.store.active_model_key() or "no model embedded yet")}
        searcher = self.state.searcher
        if checks["database"]["ok"]:
            def embed():
                current = self.state.current_searcher()
                vector = current.embed("health check")
                if not all(map(math.isfinite, vector.tolist())):
                    raise ValueError("the embedder returned a vector that is not finite")
                return current.model_key

            checks["embedder"] = self._check(embed)
        else:
            checks["embedder"] = {"ok": False, "error": "not checked: the database is down",
                                  "model": searcher.model_key if searcher else None}
        healthy = all(c["ok"] for c in checks.values())
        return (200 if healthy else 503), {"status": "ok" if healthy else "unavailable", **checks}

    def _check(self, probe) -> dict:
        started = time.perf_counter()
        try:
            detail = probe()
        except ApiError as exc:
            return {"ok": False, "error": exc.message}
        except Exception as exc:  # noqa: BLE001 - a health check reports what failed instead of failing
            reason = scrub((str(exc).strip().splitlines() or [""])[0][:200], self.state.secrets)
            if isinstance(exc, psycopg.OperationalError):
                self.state.store.drop_broken_connections()
                reason = f"the database is unreachable: {reason}"
            return {"ok": False, "error": f"{type(exc).__name__}: {reason}"}
        return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2), "detail": detail}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def make_server(state: ServeState, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundApiHandler", (ApiHandler,), {"state": state})
    return _Server((host, port), handler)
