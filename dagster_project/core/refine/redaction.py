"""Redaction for pricing-sensitive documents: no number from such a document leaves the
process. Currency amounts become [AMOUNT], percentages [PERCENT], every other number [NUMBER]."""

from __future__ import annotations

import re

_CURRENCY_SYMBOLS = r"[$€£¥₹₩₽¢]"
_CURRENCY_CODES = r"(?:USD|EUR|GBP|JPY|CHF|CAD|AUD|INR|CNY|SEK|NOK|DKK|US\$|A\$|C\$)"
_NUMBER = r"\d[\d,.\u00a0\u202f' ]*\d|\d"
_AMOUNT = re.compile(
    rf"(?:{_CURRENCY_SYMBOLS}\s?|{_CURRENCY_CODES}\s?)(?:{_NUMBER})(?:\s?(?:k|K|m|M|bn|million|billion))?"
    rf"|(?:{_NUMBER})\s?(?:{_CURRENCY_SYMBOLS}|{_CURRENCY_CODES}\b|(?:dollars?|euros?|pounds?|cents?)\b)",
    re.IGNORECASE,
)
_PERCENT = re.compile(rf"(?:{_NUMBER})\s?(?:%|percent\b|per cent\b)", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
SENSITIVE_AMOUNTS = 3  # a document quoting this many currency amounts is treated as pricing-sensitive
# The detection and redaction rules below: a change re-decides every stored document's
# pricing_sensitive and re-chunks the sensitive ones (their embedded text is redacted; sql/0023).
PRICING_VERSION = "1"


def redact_pricing(text: str) -> str:
    text = _AMOUNT.sub("[AMOUNT]", text)
    text = _PERCENT.sub("[PERCENT]", text)
    return _ANY_NUMBER.sub("[NUMBER]", text)


_MARKER = re.compile(rf"{_CURRENCY_SYMBOLS}|\b(?:{_CURRENCY_CODES}|dollars?|euros?|pounds?|cents?)\b", re.IGNORECASE)


def looks_pricing_sensitive(text: str) -> bool:
    """At least SENSITIVE_AMOUNTS currency amounts. Scans for the (rare) currency markers first
    and tests only their neighbourhood: the full amount pattern over a whole document is slow."""
    found = 0
    for marker in _MARKER.finditer(text):
        around = text[max(0, marker.start() - 24): marker.end() + 24]
        if _AMOUNT.search(around):
            found += 1
            if found >= SENSITIVE_AMOUNTS:
                return True
    return False


def is_pricing_sensitive(declared: bool, title: str, blocks: list[dict]) -> bool:
    """A document's effective flag, decided once at ingest: the manifest or front matter says
    so, or its text (title and blocks, as stored) looks like a price list."""
    return declared or looks_pricing_sensitive("\n".join([title, *(b["text"] for b in blocks)]))
