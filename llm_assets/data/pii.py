"""PII scrubbing: e-mail addresses, phone numbers and card numbers become placeholders.

Kept text must survive, so every detector leans towards precision (the labelled corpus in
``llm_assets_tests/test_pii_corpus.py`` measures both precision and recall):

* e-mail: an address whose domain is not reserved for documentation (RFC 2606 / RFC 6761:
  ``example.com/.org/.net``, ``*.example``, ``*.test``, ``*.invalid``, ``*.localhost``);
* phone: a candidate found by Google's libphonenumber (the ``phonenumbers`` port) written as
  a phone number: in international ``+`` form, or as a North American 3-3-4 number with phone
  punctuation (``(555) 010-9999``, ``555-010-9999``) or, with bare spaces, an assigned one;
  never one number in a run of numbers (a statistics table or a list of years);
* card: digits in a card's usual grouping (4-4-4-4 with one separator, Amex 4-6-5, or 13-19
  contiguous digits) that pass the Luhn check and start with a card network's issuer prefix.

We use libphonenumber for phones because phone formats are country-specific data that a
maintained library keeps current; Presidio and scrubadub were not taken: Presidio needs a
spaCy model downloaded at run time, scrubadub pulls scikit-learn and textblob, and for
phones both delegate to this same library.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import phonenumbers

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]"}

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})\b")
RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
RESERVED_TLDS = ("example", "test", "invalid", "localhost")

# A North American number without its "+": 3-3-4 digits, optionally after a leading 1.
NANP_SHAPE = re.compile(r"(?:1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}")
# Cheap pre-filter: libphonenumber only runs on text with seven digits close together.
PHONE_HINT = re.compile(r"\d(?:[\s().+-]{0,3}\d){6}")
NUMBER_RUN = re.compile(r"\d[ \t]*$")  # text before a candidate that ends in a number: a table row

CARD = re.compile(
    r"(?<![\d.,-])(?:"
    r"\d{4}([ -])\d{4}\1\d{4}\1\d{4}"  # 4-4-4-4, one separator throughout
    r"|\d{4}([ -])\d{6}\2\d{5}"  # Amex 4-6-5
    r"|\d{13,19}"  # contiguous
    r")(?![\d]|[.,-]\d)"
)
CARD_HINT = re.compile(r"\d(?:[ -]?\d){12}")  # cheap pre-filter: 13 digits with at most single separators
# Issuer prefixes (IIN ranges) and the lengths each network issues.
CARD_NETWORKS = [
    ("visa", [(4, 4)], {13, 16, 19}),
    ("mastercard", [(51, 55), (2221, 2720)], {16}),
    ("amex", [(34, 34), (37, 37)], {15}),
    ("discover", [(6011, 6011), (644, 649), (65, 65)], {16, 17, 18, 19}),
    ("jcb", [(3528, 3589)], {16, 17, 18, 19}),
    ("diners", [(300, 305), (36, 36), (38, 39)], {14, 15, 16}),
    ("unionpay", [(62, 62)], {16, 17, 18, 19}),
]


@dataclass(frozen=True)
class Finding:
    kind: str  # email, phone or card
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_network(digits: str) -> str | None:
    """The network whose issuer prefix and length fit ``digits``, or None."""
    for name, ranges, lengths in CARD_NETWORKS:
        if len(digits) not in lengths:
            continue
        for lo, hi in ranges:
            if lo <= int(digits[: len(str(lo))]) <= hi:
                return name
    return None


def is_reserved_domain(domain: str) -> bool:
    """Documentation domains (RFC 2606 / 6761) name nobody, so addresses there are kept."""
    domain = domain.lower()
    return domain.rsplit(".", 1)[-1] in RESERVED_TLDS or any(domain == d or domain.endswith("." + d) for d in RESERVED_DOMAINS)


def _emails(text: str) -> list[Finding]:
    if "@" not in text:
        return []
    return [Finding("email", m.start(), m.end()) for m in EMAIL.finditer(text) if not is_reserved_domain(m.group(1))]


def _cards(text: str) -> list[Finding]:
    if not CARD_HINT.search(text):
        return []
    found = []
    for m in CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if luhn_ok(digits) and card_network(digits):
            found.append(Finding("card", m.start(), m.end()))
    return found


def _in_number_run(text: str, start: int, end: int) -> bool:
    """A candidate with another number right before or after it (spaces only between) is table data."""
    return bool(NUMBER_RUN.search(text[max(0, start - 8):start])) or bool(re.match(r"[ \t]*\d", text[end:end + 8]))


def _phones(text: str) -> list[Finding]:
    if not PHONE_HINT.search(text):
        return []
    found = []
    for m in phonenumbers.PhoneNumberMatcher(text, "US", leniency=phonenumbers.Leniency.POSSIBLE):
        start, raw = m.start, m.raw_string
        if raw.startswith("(") and ")" not in raw:  # "(+44 161 496 0000)": the bracket is the sentence's
            start, raw = start + 1, raw[1:]
        if raw.startswith("+") or (_written_like_a_us_phone(raw) and not _in_number_run(text, start, m.end)):
            found.append(Finding("phone", start, m.end))
    return found


def _written_like_a_us_phone(raw: str) -> bool:
    """3-3-4 digits; with bare spaces only (as table cells are) it must also be an assigned number."""
    if not NANP_SHAPE.fullmatch(raw):
        return False
    return bool(re.search(r"[().-]", raw)) or phonenumbers.is_valid_number(phonenumbers.parse(raw, "US"))


def _may_hold_pii(text: str) -> bool:
    """Every detector needs an '@' or a digit (regex \\d: any script's, hence isascii); most text has neither, and eleven
    substring scans say so much faster than the detectors' regexes (spelled out: a loop costs as much again)."""
    return ("@" in text or not text.isascii() or "0" in text or "1" in text or "2" in text or "3" in text or "4" in text
            or "5" in text or "6" in text or "7" in text or "8" in text or "9" in text)


def find_pii(text: str) -> list[Finding]:
    """Every e-mail, card and phone number in ``text``, in order, none overlapping.

    E-mails first, then cards (a card number would also look like phone groups), then phones.
    """
    if not _may_hold_pii(text):
        return []
    taken: list[Finding] = []
    for detect in (_emails, _cards, _phones):
        for f in detect(text):
            if not any(f.start < t.end and t.start < f.end for t in taken):
                taken.append(f)
    return sorted(taken, key=lambda f: f.start)


def scrub(text: str, counts: Counter | None = None) -> str:
    """Replace PII in ``text``; add what was found to ``counts``."""
    found = find_pii(text)
    if not found:
        return text
    counts = counts if counts is not None else Counter()
    out, pos = [], 0
    for f in found:
        out += [text[pos:f.start], PLACEHOLDERS[f.kind]]
        pos = f.end
        counts[f.kind] += 1
    return "".join(out) + text[pos:]


def scrub_value(value: Any, counts: Counter) -> Any:
    """Scrub a string, the contents of a message list, or every string inside lists and dicts."""
    if isinstance(value, str):
        return scrub(value, counts)
    if isinstance(value, list):
        return [scrub_value(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: scrub_value(v, counts) for k, v in value.items()}
    return value
