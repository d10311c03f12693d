"""Errors from OpenAI-compatible servers turned into one sentence that says what failed and
what to fix, with the API key (and echoes of it) scrubbed out. Shared by the embedder and the
LLM client."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from .secrets import scrub

# `openai` is imported in the functions that call it: its import costs about as much as
# Dagster's, at every command's start and in every parse worker's fork server, and an
# ingest with the hash or local embedder never calls it.


def server_place(base_url: str | None, what: str) -> str:
    """'the <what> at host[:port]': never the userinfo of a URL, which may hold credentials."""
    url = urlsplit(base_url or "https://api.openai.com/v1")
    return f"the {what} at {url.hostname}{f':{url.port}' if url.port else ''}"


class ErrorExplainer:
    def __init__(self, *, where: str, secret: str | None, timeout: float, max_retries: int) -> None:
        self.where = where
        # Short placeholders ("ollama") are no secret, and scrubbing them would garble words.
        self._secret = secret if secret and len(secret) >= 8 else ""
        self.timeout = timeout
        self.max_retries = max_retries

    def scrub(self, message: str) -> str:
        return scrub(message, [self._secret])

    def explain(self, exc: Exception, hints: Mapping[int | str, str]) -> str:
        """`hints` by HTTP status, plus "timeout", "connection", "rate_limit", "server" and "other"."""
        import openai
        retried = f"after {self.max_retries} retries" if self.max_retries else "(retries are off)"
        if isinstance(exc, openai.APITimeoutError):
            return self.scrub(f"{self.where} did not answer within {self.timeout:g}s {retried}: {hints['timeout']}")
        if isinstance(exc, openai.APIConnectionError):
            return self.scrub(f"could not reach {self.where} {retried}: {hints['connection']}")
        if not isinstance(exc, openai.APIStatusError):
            return self.scrub(f"the request to {self.where} failed ({type(exc).__name__}: {exc})")
        status = exc.status_code
        detail = self.server_message(exc.body)
        said = f"{self.where} answered {status}" + (f" ({detail})" if detail else "")
        if status in hints:
            return self.scrub(f"{said}: {hints[status]}")
        if status == 429:
            return self.scrub(f"{said} {retried}: {hints['rate_limit']}")
        if status >= 500:
            return self.scrub(f"{said} {retried}: {hints['server']}")
        return self.scrub(f"{said}: {hints['other']}")

    def server_message(self, body: object) -> str:
        """The server's own error text, short: it is the best hint at what is wrong."""
        if isinstance(body, dict):
            body = body.get("message") or body.get("error") or ""
        # Scrub before cutting, or a cut key's prefix could slip out.
        text = self.scrub(" ".join(str(body or "").split()))
        return text[:200] + ("…" if len(text) > 200 else "")
