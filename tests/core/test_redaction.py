"""Pricing detection (which documents are sensitive) and redaction (what of their text may
leave the process): currencies of every script, price tables and lists, numerals of every kind
and English number words."""

from __future__ import annotations

import re
import unicodedata

import pytest

from dagster_project.core.refine.redaction import (
    SENSITIVE_AMOUNTS,
    body_pricing_evidence,
    is_pricing_sensitive,
    looks_pricing_sensitive,
    pricing_evidence,
    redact_pricing,
)

# QA item 3: each was not detected, three times in a document.
AMOUNTS = ["1,900円", "19 元", "19 zł", "1.900 kr", "₪19", "₺19", "SGD 19", "MXN 190", "19 Kč", "2 500 Ft",
           "19 lei", "Rs. 500", "R$ 19", "₴ 49", "19 CHF", "ZAR 1 200", "49 PLN", "THB 990", "19 ₫", "四十九元"]


@pytest.mark.parametrize("amount", AMOUNTS)
def test_amounts_in_every_currency_are_detected_and_redacted_as_amounts(amount):
    text = f"Basic is {amount}, Plus is {amount} and Max is {amount} a month."
    assert looks_pricing_sensitive(text)
    assert redact_pricing(text) == "Basic is [AMOUNT], Plus is [AMOUNT] and Max is [AMOUNT] a month."


def test_every_currency_symbol_unicode_knows_is_one():
    symbols = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Sc"]
    assert len(symbols) > 50
    for symbol in symbols:
        assert looks_pricing_sensitive(f"A {symbol}19, B {symbol}29, C {symbol}39"), hex(ord(symbol))


@pytest.mark.parametrize("text", [
    "| Plan | Price (USD/month) |\n|---|---|\n| Pro | 49 |",  # QA item 3: the currency in the header only
    "| Plan | Monthly |\n|---|---|\n| Basic | 19 |\n| Pro | 49 |\n| Team | 99/seat |",
    "| Plan | Seats | Cost |\n|:--|--:|--:|\n| Basic | 1 | 19.90 |\n| Pro | 5 | 49 |\n| Team | 20 | 1,990 |",
    "## Pricing\n- Basic: 19\n- Pro: 49\n- Team: 99",
    "Prices in EUR:\n- Basic 19\n- Pro 49",
    "Annual fees:\n1. Starter — 190\n2. Growth — 490\n3. Scale — 990 per seat",
])
def test_price_tables_and_lists_of_bare_numbers_are_detected(text):
    assert looks_pricing_sensitive(text)


@pytest.mark.parametrize("text", [
    "PEP 8 and PEP 484; Python 3.12.1 listens on port 8080; TOP 10 queries; PHP 8 and AMD 64.",
    "| Version | Released |\n|---|---|\n| 3.11 | 2022 |\n| 3.12 | 2023 |\n| 3.13 | 2024 |",
    "The cost of a call is small: one lookup.\n\nTimings:\n- 1.2 usec\n- 3.4 usec",
    "Run `$ git checkout v1` then `$ git rebase`; the regex uses $ and ^.",
    "Sections:\n- 1 Introduction\n- 2 Motivation\n- 3 Rationale",
])
def test_technical_text_is_not_detected(text):
    assert not looks_pricing_sensitive(text)


@pytest.mark.parametrize("text, redacted", [
    # QA item 4
    ("forty-nine dollars a month; Team is ninety-nine euros. Discount: twenty percent.",
     "[AMOUNT] a month; Team is [AMOUNT]. Discount: [PERCENT]."),
    ("superscript price ⁴⁹ and circled ⑤ and fraction ½", "superscript price [NUMBER] and circled [NUMBER] and fraction [NUMBER]"),
    ("中文价格：四十九元每月。", "中文价格：[AMOUNT]每月。"),
    ("two hundred and fifty thousand users; Twelve seats; a dozen", "[NUMBER] users; [NUMBER] seats; a [NUMBER]"),
    ("Ⅻ, ٤٩, ४९, ４９ and 四千九百円", "[NUMBER], [NUMBER], [NUMBER], [NUMBER] and [AMOUNT]"),
    ("$1.2M, 3 million dollars, 15% off, 15 ％, twenty-five per cent",
     "[AMOUNT], [AMOUNT], [PERCENT] off, [PERCENT], [PERCENT]"),
    ("someone often tones down one-off offers", "someone often tones down [NUMBER]-off offers"),
])
def test_every_numeral_and_english_number_word_is_redacted(text, redacted):
    assert redact_pricing(text) == redacted


def test_no_character_with_a_numeric_value_survives():
    numerals = "".join(chr(c) for c in range(0x30000) if unicodedata.numeric(chr(c), None) is not None
                       and unicodedata.category(chr(c)).startswith("N"))
    out = redact_pricing(" ".join(numerals[i:i + 3] for i in range(0, len(numerals), 3)))
    assert not [ch for ch in out if unicodedata.numeric(ch, None) is not None], out[:200]
    assert not re.search(r"\d", redact_pricing("Pro plan 4711 ... | Pro | 4,9 | 49０ |"))


def test_a_cards_amounts_and_the_bodys_add_up():
    """The parser counts the title and body's evidence on its worker; the card's is added where
    the row is built: two amounts in the card and one in the body make a price list, as they
    would in one text."""
    card = {"kind": "card", "text": "Plans from $9 or €12."}
    body = [{"kind": "paragraph", "text": "The team plan is $29."}]
    assert is_pricing_sensitive(False, "Plans", [card, *body])
    assert is_pricing_sensitive(False, "Plans", [card, *body], body_pricing_evidence("Plans", [b["text"] for b in body]))
    assert not is_pricing_sensitive(False, "Plans", [card])
    assert not is_pricing_sensitive(False, "Plans", body)
    assert pricing_evidence("Pay $9, $12, $29 or $49.") == SENSITIVE_AMOUNTS


def test_template_variables_are_not_amounts():
    """Hugo's docs are full of "{{ complement $c1 $c2 $c3 }}": a number that ends a name, or a
    sign that starts one, is no currency amount (five Hugo pages were flagged, and their numbers
    redacted from what was embedded), while "512,50 $US" and "1,900円" still are."""
    assert not looks_pricing_sensitive("{{ complement $c1 $c2 $c3 }} {{ merge $m1 $m2 $m3 }} {{ mul $v1 $v2 }}")
    assert not looks_pricing_sensitive("{{ $total := add 5 $count }} {{ sub 7 $x }} {{ div 9 $y }}")
    assert looks_pricing_sensitive("English $512.50, Français 512,50 $US, Deutsch 512,50 $")
    assert looks_pricing_sensitive("スターター 1,900円、プロ 4,900円、チーム 9,900円")
