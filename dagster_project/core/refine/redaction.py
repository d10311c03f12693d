"""Redaction for pricing-sensitive documents: no number from such a document leaves the
process. Currency amounts become [AMOUNT], percentages [PERCENT], every other number [NUMBER]."""

from __future__ import annotations

from collections.abc import Iterable

import regex  # \p{Sc} and \p{N}: every currency symbol and every numeral Unicode knows

# ISO 4217 codes, less those that are also common upper-case words or technical names (ALL,
# TOP, TRY, PHP, AMD, CVE, ...): "PHP 8" and "TOP 10" are no prices. Codes are matched in upper
# case only, next to a number.
_ISO_4217 = (
    "AED AFN ANG AOA ARS AUD AWG AZN BBD BDT BGN BHD BIF BMD BND BOV BRL BSD BTN BWP BYN BZD CAD CDF "
    "CHE CHF CHW CLF CLP CNH CNY COP COU CRC CUC CZK DJF DKK DOP DZD EGP ETB EUR FJD FKP GBP GHS GIP "
    "GMD GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW "
    "KWD KYD KZT LAK LBP LKR LRD LSL LYD MDL MGA MKD MMK MNT MRU MUR MVR MWK MXN MXV MYR MZN NGN NOK "
    "NPR NZD OMR PAB PGK PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SRD SSP "
    "STN SYP SZL THB TJS TMT TND TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF "
    "XAG XAU XCD XCG XDR XOF XPD XPF XPT XSU XUA YER ZAR ZMW ZWG ZWL RMB NTD"
).split()
_CODES = rf"(?<![A-Za-z])(?:{'|'.join(_ISO_4217)})(?![A-Za-z])"
# Currency symbols (Unicode category Sc) and those Unicode classes as letters; local
# abbreviations, in the case they are written in.
_SIGNS = r"[\p{Sc}円元圓圆원]"
_BEFORE = r"(?<!\w)(?:Rs\.?|Rp|RM|S/|Fr\.|kr\.?|zł)(?!\w)"
_AFTER = r"(?<!\w)(?:kr\.?|zł|Kč|Ft|lei|лв\.?|руб\.?|грн\.?|Rs\.?|RM)(?!\w)"
_CURRENCY_WORDS = (r"dollars?|euros?|pounds?|cents?|yen|yuan|renminbi|rupees?|francs?|pesos?|kronor|kroner|"
                   r"kron[ae]|zlotys?|forints?|lira|lire|rand|ringgit|baht|shekels?|dirhams?|r[ou]+bles?|"
                   r"hryvnias?|reais|dinars?|riyals?|rials?")
_WORDS = rf"(?i:\b(?:{_CURRENCY_WORDS})\b)"

# English number words; other languages' number words are not covered (docs/architecture.md).
_ONES = "one|two|three|four|five|six|seven|eight|nine"
_TEENS = "zero|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen"
_TENS = "twenty|thirty|forty|fourty|fifty|sixty|seventy|eighty|ninety"
_SCALES = "hundred|thousand|million|billion|trillion|dozen"
_WORD = rf"(?:(?:{_TENS})(?:-(?:{_ONES}))?|{_ONES}|{_TEENS}|{_SCALES})"
_WORD_NUMBER = rf"(?i:(?<!\w){_WORD}(?:(?:\s+and\s+|[\s-]+){_WORD})*(?!\w))"
_CJK_NUMERALS = "〇零一二三四五六七八九十百千万萬亿億兆两兩壹贰貳叁參肆伍陆陸柒捌玖拾佰仟廿卅"
# Every character with a numeric value: digits of every script, superscripts, circled and
# parenthesized numbers, vulgar fractions, Roman numerals (\p{N}), and CJK numerals.
_NUMERAL = rf"[\p{{N}}{_CJK_NUMERALS}]"
_DIGITS = rf"{_NUMERAL}(?:[,.\u00a0\u202f' ]?{_NUMERAL})*"  # "1,900.00", "1 900": one number; "1, 2": two
_NUMBER = rf"(?:{_DIGITS}|{_WORD_NUMBER})"
# Numbers are found first, then their neighbours decide what they are: one scan of the text
# (one alternation of "currency, then number" and "number, then currency" tried at every
# position was five times slower).
_NUMBER_RUN = regex.compile(_NUMBER)
_NUMERAL_RUN = regex.compile(_DIGITS)  # detection: amounts written in numerals
_ASCII_NUMERAL_RUN = regex.compile(r"[0-9](?:[,.' ]?[0-9])*")  # the same, in a text of ASCII alone
# Matched backwards from the number: one attempt instead of one per position before it.
_PREFIX = regex.compile(rf"(?:(?<![A-Za-z])[A-Z]{{1,3}}(?={_SIGNS}))?(?:{_SIGNS}|{_CODES}|{_BEFORE})\s?$", regex.REVERSE)
_PREFIX_REACH = 8  # "US$ ", "Rs. ", "CHF ": what a prefix may span before its number
_MAGNITUDE_TEXT = r"\s?(?:k|K|m|M|bn|(?i:million|billion|thousand))(?!\w)"
_MAGNITUDE = regex.compile(_MAGNITUDE_TEXT)
# A sign after a number that starts a name ("$c2", "$count") is a template variable, not a currency.
_SUFFIX = regex.compile(rf"\s?(?:{_SIGNS}(?![a-z_\d])|{_CODES}|{_AFTER}|{_WORDS})")
_PERCENT = regex.compile(r"\s?(?:[%％‰]|(?i:percent|per\s?cent|pct)(?!\w))")
SENSITIVE_AMOUNTS = 3  # a document quoting this many currency amounts is treated as pricing-sensitive
# The detection and redaction rules below: a change re-decides every stored document's
# pricing_sensitive and re-chunks the sensitive ones (their embedded text is redacted; sql/0023).
PRICING_VERSION = "2"  # 2: a number ending a name ("$v1 $v2") is not an amount


def _numbers(text: str, runs: regex.Pattern = _NUMBER_RUN):
    """(start, end, label) of every number in the text, in order, with the currency or percent
    sign around it: [AMOUNT], [PERCENT] or [NUMBER]."""
    end_of_last = 0
    for m in runs.finditer(text):
        start, end = m.span()
        if start < end_of_last:
            continue  # part of the previous one's currency ("19 元" after a CJK numeral run)
        magnitude = _MAGNITUDE.match(text, end)
        after = magnitude.end() if magnitude else end
        if prefix := _PREFIX.search(text, max(end_of_last, start - _PREFIX_REACH), start):
            start, end, label = prefix.start(), after, "[AMOUNT]"
        elif percent := _PERCENT.match(text, end):
            end, label = percent.end(), "[PERCENT]"
        elif not _in_name(text, start) and (suffix := _SUFFIX.match(text, after)):
            end, label = suffix.end(), "[AMOUNT]"
        else:
            label = "[NUMBER]"
        end_of_last = end
        yield start, end, label


def _in_name(text: str, start: int) -> bool:
    """The number ends a name ("v1", "arg_2", "$c1"): an amount is never glued to the letters
    before it (a CJK letter may be: "料金1,900円")."""
    return start > 0 and (text[start - 1].isascii() and (text[start - 1].isalpha() or text[start - 1] == "_"))


def redact_pricing(text: str) -> str:
    parts, pos = [], 0
    for start, end, label in _numbers(text):
        parts += [text[pos:start], label]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


# What names a currency in a table header or a list's cue line.
# Searched one kind at a time: as one alternation the search was 2.5 times slower (the cue lines
# of the PEPs: 0.68 CPU-s against 0.27).
_CURRENCY_KINDS = tuple(regex.compile(kind) for kind in (_SIGNS, _CODES, _BEFORE, _AFTER, _WORDS))


def _names_currency(text: str) -> bool:
    return any(kind.search(text) for kind in _CURRENCY_KINDS)


# What names a column or a list of bare numbers as prices: a currency, or one of these words.
_PRICE_WORDS = regex.compile(
    r"\b(?:prices?|pricing|priced|costs?|fees?|monthly|annual(?:ly)?|yearly|per\s+(?:month|year|seat|user)|"
    r"subscriptions?|billed|billing|tariffs?|msrp)\b|/\s?(?:mo|month|yr|year)\b", regex.IGNORECASE)
_PER = r"(?:\s*(?:/|(?i:per|a))\s*\w+)?"  # "49/month", "49 per seat"
_BARE_NUMBER = regex.compile(rf"^\s*[~≈]?\s*{_DIGITS}(?:{_MAGNITUDE_TEXT})?{_PER}\s*$")
_LIST_ITEM = regex.compile(rf"^\s*(?:[-*+•]|\d+[.)])?\s*[^:|]{{0,60}}?[:=–—-]?\s*{_DIGITS}(?:{_MAGNITUDE_TEXT})?{_PER}\s*$")
_LIST_REACH = 12  # lines after a price heading that may hold its bare numbers


def _is_price_cue(line: str) -> bool:
    return bool(_PRICE_WORDS.search(line)) or _names_currency(line)


def _table_prices(lines: list[str], header: int) -> int:
    """Bare numbers in the columns of a pipe table whose header names a price or a currency."""
    cells = lines[header].strip().strip("|").split("|")
    priced = {i for i, c in enumerate(cells) if _is_price_cue(c)}
    found = 0
    for line in lines[header + 2:]:
        if "|" not in line:
            break
        row = line.strip().strip("|").split("|")
        found += sum(1 for i in priced if i < len(row) and _BARE_NUMBER.match(row[i]))
    return found


def _list_prices(lines: list[str], cue: int) -> int:
    """Items with a bare number after a short line naming prices ("Monthly prices:", "## Pricing")."""
    found = 0
    for line in lines[cue + 1: cue + 1 + _LIST_REACH]:
        if _LIST_ITEM.match(line):
            found += 1
        elif line.strip():
            break
    return found


def looks_pricing_sensitive(text: str) -> bool:
    return pricing_evidence(text) >= SENSITIVE_AMOUNTS


def pricing_evidence(text: str) -> int:
    """Currency amounts in the text, up to SENSITIVE_AMOUNTS (which it also is for a price table
    or price list that settles it), counting the bare numbers of a price table (a pipe table with
    a price or currency column) or a price list (items after a short line that names prices).
    Evidence of a document's parts adds up (is_pricing_sensitive). One scan for numerals, whose
    neighbours say whether they are amounts: scanning for each kind of currency marker was twice
    as slow on the PEPs."""
    found = 0
    # A text of ASCII alone has no other numerals: the plain digit scan is 3 times faster.
    for _, _, label in _numbers(text, _ASCII_NUMERAL_RUN if text.isascii() else _NUMERAL_RUN):
        found += label == "[AMOUNT]"
        if found >= SENSITIVE_AMOUNTS:
            return SENSITIVE_AMOUNTS
    # Tables and lists: only table headers and short cue lines are searched for price words.
    lines = text.split("\n")
    for at, line in enumerate(lines):
        if "|" in line and at + 1 < len(lines) and _is_rule(lines[at + 1]):
            count = _table_prices(lines, at) if _is_price_cue(line) else 0
        elif len(line) <= 80 and (line.rstrip().endswith(":") or line.lstrip().startswith("#")):
            count = _list_prices(lines, at) if _is_price_cue(line) else 0
        else:
            continue
        if count and (found + count >= SENSITIVE_AMOUNTS or _names_currency(line)):
            return SENSITIVE_AMOUNTS
    return found


def _is_rule(line: str) -> bool:
    return bool(line.strip()) and set(line.strip()) <= set("|-: ")


_CARD_KIND = "card"  # chunking.CARD_KIND (chunking imports this module)


def body_pricing_evidence(title: str, blocks: Iterable[str]) -> int:
    """pricing_evidence of a document's title and body blocks (computed where it is parsed, on
    every core: it cost the PEPs' documents step 1.5-2 CPU-seconds in the main process)."""
    return pricing_evidence("\n".join([title, *blocks]))


def is_pricing_sensitive(declared: bool, title: str, blocks: list[dict], body_evidence: int | None = None) -> bool:
    """A document's effective flag, decided once at ingest: the manifest or front matter says
    so, or its text (title and blocks, as stored) looks like a price list: the evidence of its
    card (the first block, of kind "card") and of its title and body add up to SENSITIVE_AMOUNTS.
    `body_evidence`: that of the title and body, when the parser already counted it."""
    if declared:
        return True
    card = [b["text"] for b in blocks[:1] if b.get("kind") == _CARD_KIND]
    if body_evidence is None:
        body_evidence = body_pricing_evidence(title, (b["text"] for b in blocks[len(card):]))
    return body_evidence + (pricing_evidence(card[0]) if card else 0) >= SENSITIVE_AMOUNTS
