"""The one hashing helper: content fingerprints and ids derived from source identity."""

from __future__ import annotations

import hashlib
import uuid


def content_hash(data: str | bytes) -> bytes:
    """sha256 of text (UTF-8) or bytes; 32 raw bytes, stored as bytea."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).digest()


def file_hash(path) -> tuple[bytes, int]:
    """content_hash of a file's bytes, read in blocks (never the whole file in memory), and its size."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.digest(), size


def stable_id(*parts: str | bytes | int) -> uuid.UUID:
    """A UUID derived from its parts, so the same source always gets the same id."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, int):
            part = str(part)
        if isinstance(part, str):
            part = part.encode("utf-8")
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return uuid.UUID(bytes=h.digest()[:16])
