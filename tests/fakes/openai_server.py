"""A fake OpenAI-compatible HTTP server on 127.0.0.1 for tests: /v1/embeddings with deterministic
vectors, /v1/chat/completions with scripted replies (and `n` choices), the Batch API (/v1/files,
/v1/batches: a batch runs its lines through the same chat and embeddings answers when released),
and a queue of scripted failures."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


class FakeOpenAI:
    """Use as `with FakeOpenAI() as fake: OpenAI(base_url=fake.base_url, ...)`."""

    def __init__(self, dims: int = 1536, delay: float = 0.0) -> None:
        self.dims = dims
        self.delay = delay
        self.requests: list[dict[str, Any]] = []  # {"path", "headers" (lower-case names), "body"}
        self.chat_replies: deque[str] = deque()
        # Optional: body -> content str, or (status, headers, body) for a scripted failure.
        self.chat_responder: Any = None
        self.chat_headers: dict[str, str] = {}  # added to every successful chat answer
        self.accepts_n = True  # False: a request with n > 1 gets the 400 some compatible servers give
        # Batch API: uploaded files (id -> bytes) and batches (id -> object). A batch stays
        # in_progress while `hold_batches` is set; `batch_outcome` "failed" or "expired" ends it so.
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.hold_batches = False
        self.batch_outcome = "completed"
        self._failures: deque[tuple[int, dict[str, str], Any]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeOpenAI:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        # A short poll keeps stop() (and each test's teardown) fast.
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        serve.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the fake server is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail_next(
        self, status: int, times: int = 1, headers: dict[str, str] | None = None, body: Any = None
    ) -> None:
        """The next `times` requests (any endpoint) get this answer; a 2xx status with a body
        scripts a malformed success."""
        if body is None:
            body = {"error": {"message": f"fake failure {status}", "type": "fake_error", "code": status}}
        with self._lock:
            self._failures.extend([(status, dict(headers or {}), body)] * times)

    def reply(self, *contents: str) -> None:
        """Queue raw assistant contents for /v1/chat/completions (default '{}')."""
        with self._lock:
            self.chat_replies.extend(contents)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def embedding_inputs(self) -> list[list[str]]:
        """The inputs of each embeddings request, in arrival order."""
        with self._lock:
            bodies = [r["body"] for r in self.requests if r["path"].endswith("/embeddings") and not r.get("batch")]
        return [_as_list(b.get("input")) for b in bodies]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r["body"] for r in self.requests if r["path"].endswith("/chat/completions") and not r.get("batch")]

    @property
    def batch_lines(self) -> list[dict[str, Any]]:
        """The request bodies batches ran (chat and embeddings), in order."""
        with self._lock:
            return [r["body"] for r in self.requests if r.get("batch")]

    def requests_to(self, method: str, prefix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r.get("method", "POST") == method and r["path"].startswith(prefix)]

    @property
    def max_inputs(self) -> int:
        return max((len(i) for i in self.embedding_inputs), default=0)

    @staticmethod
    def vector(text: str, dims: int) -> np.ndarray:
        """The (not normalized) float32 vector the fake returns for `text`."""
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)

    def _answer(self, path: str, headers: dict[str, str], body: Any,
                method: str = "POST", batch: str | None = None) -> tuple[int, dict[str, str], Any]:
        if path.startswith(("/v1/files", "/v1/batches")):
            with self._lock:
                self.requests.append({"path": path, "headers": headers, "body": body, "method": method})
                failure = self._failures.popleft() if self._failures else None
            return failure or self._batch_api(method, path, body)
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body, "batch": batch})
            failure = self._failures.popleft() if self._failures else None
            chat_reply = "{}"
            if failure is None and path == "/v1/chat/completions" and self.chat_replies:
                chat_reply = self.chat_replies.popleft()
            responder = self.chat_responder
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            return failure
        n = int(body.get("n") or 1) if path == "/v1/chat/completions" else 1
        if n > 1 and not self.accepts_n:
            return 400, {}, {"error": {"message": "Unrecognized request argument supplied: n",
                                       "type": "invalid_request_error", "param": "n"}}
        if path == "/v1/chat/completions" and responder is not None:
            # One responder call per choice: it sees the same body n times.
            answers = [responder(body) for _ in range(n)]
            failed = next((a for a in answers if isinstance(a, tuple)), None)
            if failed is not None:
                return failed
            return 200, dict(self.chat_headers), self._chat(body, *answers)
        if path == "/v1/embeddings":
            return 200, {}, self._embeddings(body)
        if path == "/v1/chat/completions":
            return 200, dict(self.chat_headers), self._chat(body, chat_reply)
        return 404, {}, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}

    # ------------------------------------------------------------------ Batch API

    def _batch_api(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        parts = path.split("?")[0].strip("/").split("/")  # v1, files|batches, [id], [content]
        with self._lock:
            if method == "POST" and parts == ["v1", "files"]:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = body["file"]
                return 200, {}, {"id": file_id, "object": "file", "bytes": len(body["file"]), "created_at": 0,
                                 "filename": body.get("filename", "batch.jsonl"), "purpose": body.get("purpose"),
                                 "status": "processed"}
            if method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
                if parts[2] not in self.files:
                    return 404, {}, {"error": {"message": f"no file {parts[2]}"}}
                return 200, {"Content-Type": "application/octet-stream"}, self.files[parts[2]]
            if method == "POST" and parts == ["v1", "batches"]:
                if body.get("input_file_id") not in self.files:
                    return 400, {}, {"error": {"message": "input_file_id names no file"}}
                batch_id = f"batch_{len(self.batches) + 1}"
                self.batches[batch_id] = {
                    "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                    "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                    "status": "in_progress", "output_file_id": None, "error_file_id": None, "created_at": 0,
                    "metadata": body.get("metadata"), "request_counts": {"total": 0, "completed": 0, "failed": 0}}
                return 200, {}, self.batches[batch_id]
            if method == "GET" and parts == ["v1", "batches"]:
                return 200, {}, {"object": "list", "data": list(self.batches.values()), "has_more": False}
            if method == "GET" and len(parts) == 3 and parts[1] == "batches":
                batch = self.batches.get(parts[2])
                if batch is None:
                    return 404, {}, {"error": {"message": f"no batch {parts[2]}"}}
                hold = self.hold_batches
        if method == "GET" and len(parts) == 3 and parts[1] == "batches":
            if batch["status"] == "in_progress" and not hold:
                self._run_batch(batch)
            return 200, {}, batch
        return 404, {}, {"error": {"message": f"no route {method} {path}"}}

    def _run_batch(self, batch: dict[str, Any]) -> None:
        if self.batch_outcome != "completed":
            batch["status"] = self.batch_outcome
            batch["errors"] = {"object": "list", "data": [{"code": "fake", "message": f"batch {self.batch_outcome}"}]}
            return
        out, errors = [], []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            request = json.loads(line)
            status, _, answer = self._answer(request["url"], {}, request["body"], batch=batch["id"])
            record = {"id": f"req-{request['custom_id']}", "custom_id": request["custom_id"],
                      "response": {"status_code": status, "request_id": "fake", "body": answer}, "error": None}
            (out if status == 200 else errors).append(json.dumps(record))
        with self._lock:
            for name, lines in (("output_file_id", out), ("error_file_id", errors)):
                if lines:
                    file_id = f"file-{len(self.files) + 1}"
                    self.files[file_id] = ("\n".join(lines) + "\n").encode()
                    batch[name] = file_id
            batch["request_counts"] = {"total": len(out) + len(errors), "completed": len(out), "failed": len(errors)}
            batch["status"] = "completed"

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = _as_list(body.get("input"))
        dims = int(body.get("dimensions") or self.dims)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vec = self.vector(text, dims)
            embedding: Any = vec.tolist()
            if as_base64:  # what the openai client asks for by default
                embedding = base64.b64encode(vec.astype("<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(_tokens(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _chat(self, body: dict[str, Any], *contents: str) -> dict[str, Any]:
        prompt = sum(_tokens(str(m.get("content", ""))) for m in body.get("messages", []))
        completion = sum(_tokens(c) for c in contents)
        return {
            "id": f"chatcmpl-fake-{self.request_count}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                for i, content in enumerate(contents)
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }


def refinement_answer(body: dict[str, Any]) -> str:
    """A schema-valid refined document, titled after the prompt's `Title:` line."""
    import re

    match = re.search(r"^Title: (.+)$", "\n".join(str(m.get("content", "")) for m in body["messages"]), re.M)
    title = match.group(1) if match else "Untitled"
    return json.dumps({
        "title": title, "summary": f"A summary of {title} written by {body['model']}.",
        "key_points": ["first point"], "topics": ["topic"], "entities": [{"name": "Lumen", "kind": "product"}],
        "questions_answered": [f"What is {title}?"], "content_type": "guide", "language": "en",
    })


def _form(content_type: str, raw: bytes) -> dict[str, Any]:
    """A multipart/form-data body: text fields as str, the `file` field as bytes."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    form: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if name == "file":
            form["file"] = payload
            form["filename"] = part.get_filename()
        else:
            form[name] = payload.decode()
    return form


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [v if isinstance(v, str) else json.dumps(v) for v in value]


def _tokens(text: str) -> int:
    return len(text.split())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    timeout = 10  # idle keep-alive connections must not pin handler threads forever

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; with Nagle on, the client's delayed ACK holds
        # the body back ~40 ms per request, which no real server does.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            body = _form(self.headers["Content-Type"], raw)
        else:
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                body = {"_raw": raw.decode(errors="replace")}
        self._reply(*self.server.fake._answer(  # type: ignore[attr-defined]
            self.path, {k.lower(): v for k, v in self.headers.items()}, body))

    def do_GET(self) -> None:
        self._reply(*self.server.fake._answer(  # type: ignore[attr-defined]
            self.path, {k.lower(): v for k, v in self.headers.items()}, None, "GET"))

    def _reply(self, status: int, headers: dict[str, str], payload: Any) -> None:
        if isinstance(payload, bytes):
            data = payload
        else:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        headers = dict(headers)
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


if __name__ == "__main__":
    # A fake in its own process (benchmarks: it must not share the client's interpreter lock).
    import argparse
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    fake = FakeOpenAI(delay=args.delay).start()
    fake.chat_responder = refinement_answer
    print(fake.base_url, flush=True)
    sys.stdin.read()  # until the parent closes stdin
    fake.stop()
