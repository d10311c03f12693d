"""Keeping secrets out of what is stored, logged or raised: the one scrubber for API keys,
their near-echoes (a server quoting a key cut, with a character dropped or wrapped over lines),
`sk-...` tokens, and database passwords."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

ECHO_MIN = 8  # characters: a run this long taken from a secret is treated as the secret
MASK = "***"
_TOKEN = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")  # what OpenAI-style keys look like, whoever's they are


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with each secret masked where it appears whole and, for secrets of ECHO_MIN or
    more characters, wherever ECHO_MIN or more consecutive characters of it appear, even with
    whitespace inside; and with every `sk-...` token masked."""
    if not text:
        return text
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
        if len(secret) >= ECHO_MIN:
            text = _mask_echoes(text, secret)
    return _TOKEN.sub("sk-" + MASK, text)


def _mask_echoes(text: str, secret: str) -> str:
    # Match on the text without whitespace, then mask the matching stretch of the original
    # (whitespace included), so "sk-ab cd\nef..." is caught like "sk-abcdef...".
    positions = [i for i, ch in enumerate(text) if not ch.isspace()]
    compact = "".join(text[i] for i in positions)
    grams = {secret[i:i + ECHO_MIN] for i in range(len(secret) - ECHO_MIN + 1)}
    spans = []
    i = 0
    while i <= len(compact) - ECHO_MIN:
        if compact[i:i + ECHO_MIN] not in grams:
            i += 1
            continue
        end = i + ECHO_MIN
        while end < len(compact) and compact[i:end + 1] in secret:
            end += 1
        spans.append((positions[i], positions[end - 1] + 1))
        i = end
    for start, stop in reversed(spans):
        text = text[:start] + MASK + text[stop:]
    return text


class ScrubbedError(RuntimeError):
    """An error whose text held a secret, re-raised with the text scrubbed and no chain."""


@contextmanager
def errors_scrubbed(clean: Callable[[str], str]) -> Iterator[None]:
    """Whatever escapes the block reaches logs and Dagster's event log with its causes: an
    exception whose text (or a cause's) `clean` would change is replaced by a ScrubbedError
    carrying the cleaned text alone; others pass through untouched."""
    try:
        yield
    except Exception as exc:
        chain, seen = [], exc
        while seen is not None and len(chain) < 10:
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__
        if all(clean(str(e)) == str(e) for e in chain):
            raise
        raise ScrubbedError(f"{type(exc).__name__}: {clean(str(exc))}") from None
