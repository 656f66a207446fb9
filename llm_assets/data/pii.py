"""PII scrubbing: e-mail addresses, phone numbers and card-like numbers become placeholders.

Patterns lean towards precision: phone numbers need a phone-like grouping (not any run of
digits, IP addresses or years), and card numbers must pass the Luhn check, so prices, counts
and identifiers in ordinary text survive.
"""

from __future__ import annotations

import re
from collections import Counter

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
PHONE = re.compile(
    r"(?<![\w.])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)|\d{1,4})(?:[\s.-]?\d{2,4}){2,4}"  # +44 20 7946 0958, +1-555-010-9999
    r"|\(\d{3}\)\s?\d{3}[\s.-]\d{4}"  # (555) 010-9999
    r"|\d{3}[-.\s]\d{3}[-.\s]\d{4}"  # 555-010-9999
    r")(?![\w.]\d)"
)
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]"}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def scrub(text: str, counts: Counter | None = None) -> str:
    """Replace PII in ``text``; add what was found to ``counts``."""
    counts = counts if counts is not None else Counter()

    def card(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            counts["card"] += 1
            return PLACEHOLDERS["card"]
        return m.group()

    def sub(kind: str) -> "callable":
        def f(m: re.Match) -> str:
            counts[kind] += 1
            return PLACEHOLDERS[kind]
        return f

    text = EMAIL.sub(sub("email"), text)
    text = CARD.sub(card, text)  # before phones: a card number would otherwise look like phone groups
    return PHONE.sub(sub("phone"), text)


def scrub_value(value, counts: Counter):
    """Scrub a string, or the contents of a message list."""
    if isinstance(value, str):
        return scrub(value, counts)
    if isinstance(value, list):
        return [{**m, "content": scrub(m["content"], counts)} for m in value]
    return value
