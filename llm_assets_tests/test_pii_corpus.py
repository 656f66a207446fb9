"""PII detection measured on a labelled corpus: precision and recall per kind.

Each snippet marks its PII inline as ``[[kind:text]]``; everything else must survive scrubbing.
The negatives are the numbers that ordinary kept text is full of (statistics tables, year lists,
dates, ISBNs, versions, IPs, prices, order numbers) and addresses at documentation domains.
Print the figures with ``.venv/bin/python -m llm_assets_tests.test_pii_corpus``.
"""

from __future__ import annotations

import re
from collections import Counter

from llm_assets.data.pii import PLACEHOLDERS, find_pii, scrub

KINDS = ("email", "phone", "card")

CORPUS = [
    # sports statistics tables
    "Pos Team Pld W D L GF GA GD Pts\n1 Manchester City 38 28 5 5 94 33 61 89\n2 Arsenal 38 26 6 6 88 43 45 84\n"
    "3 Liverpool 38 24 10 4 86 41 45 82\n4 Aston Villa 38 20 8 10 76 61 15 68",
    "Player AB R H HR RBI AVG\nJudge 559 133 177 62 131 .311\nOhtani 537 102 148 46 95 .273\nSoto 576 128 166 41 109 .288",
    "MIN FG 3PT FT REB AST PTS\n36 11-20 4-9 6-7 8 7 32\n34 9-17 2-5 4-4 11 3 24",
    "Splits: 5K 0:14:32, 10K 0:29:10, half 1:01:25, finish 2:03:59 (PB 2:02:40).",
    "India 325/6 (50 ov) beat Australia 298 (48.2 ov) by 27 runs; Kohli 117 off 113 balls, 9x4 2x6.",
    "Tour de France GC: 1 Pogacar 83:38:56, 2 Vingegaard +6:17, 3 Evenepoel +9:18",
    "Season totals 2019 2020 2021 2022 2023\nGoals 31 25 36 29 44\nAssists 12 9 15 11 14\nMinutes 2710 2233 3011 2874 3190",
    "Qualifying times 1 32.418 1 32.514 1 32.660 1 32.702 1 32.803",
    "Final scores: 6-4 6-3 7-6 (7-4); 3-2 after extra time; 102-99 in overtime.",
    "League table 1 20 14 4 2 41 15 26 46 2 20 13 4 3 38 18 20 43 3 20 12 5 3 35 17 18 41",
    # year lists and dates
    "He won the title in 1998 2001 2004 2007 and 2010.",
    "Olympic host years: 1996 2000 2004 2008 2012 2016 2020 2024",
    "Editions 1930 1934 1938 1950 1954 1958 1962 1966 1970 1974 1978 1982 1986 1990 1994",
    "Published 2023-10-05 14:30:00 UTC, updated 2023-10-06T09:12:45Z.",
    "Due on 05/11/2023 or 11/05/2023 at the latest; fiscal years 1914-1918 and 1939-1945.",
    "Unix time 1696512000 is 2023-10-05; 1700000000 fell on 2023-11-14.",
    # ISBNs, versions, IPs, codes
    "ISBN 978-3-16-148410-0, ISBN-10 0-306-40615-2, ISBN 9780306406157.",
    "Upgrade from 2.13.0 to 10.4.12.1002, then to build 22621.2428.",
    "The server at 192.168.100.200 forwards to 10.0.0.1 and 2001:db8::ff00:42:8329.",
    "SKU 5012345678900, EAN 4006381333931, UPC 036000291452.",
    "Case No. 2:21-cv-01234; Patent US 10,123,456 B2; Docket 1-2023-000123.",
    "New York, NY 10001-1234; Beverly Hills 90210; PO Box 4521.",
    "Coordinates 40.7128, -74.0060; elevation 1 234 m.",
    # prices, quantities, order numbers
    "A reported 20 million pounds ($41.1 million), up from $1,234,567.89 in 2019.",
    "Population 8 336 817 (2020), up from 8 175 133 (2010); area 783.8 km2.",
    "Order #1234567890123 shipped; invoice INV-2023-000123456; tracking 1Z999AA10123456784.",
    "Revenue 2021 2022 2023: 4 512 4 873 5 201 (in thousands), margin 12.5%.",
    "Lottery draw: 4 8 15 16 23 42, bonus 7.",
    "Account balance 1234 5678 after 12 transfers of 250.00.",
    "Budget lines 4000 1234 5678 9010 2000 3000 in the spreadsheet.",
    "Batch 1998 2001 2004 2007 passed inspection; lot 555 0123 4567 8901 failed.",
    "Odds +150 +200 -110; temperatures -3 +5 +12 +18; call 911 or 112.",
    "Flight BA 0117 departs 18:45 from gate 23; seat 14C; booking ref 1234-5678-90.",
    "Attendance 41 212 555 0147 12 in the ledger column.",
    # documentation domains (RFC 2606 / 6761) are kept
    "Write to jane@example.com or ops@mail.example.org for access.",
    "Test accounts: alice@example.net, bob@shop.example, carol@ci.test, dave@nowhere.invalid, eve@box.localhost.",
    # e-mails
    "Sure, her email address is [[email:kathy.bates@gmail.com]]",
    "Contact [[email:jane.doe+news@mail.proton.me]] or [[email:j.smith@cs.stanford.edu]].",
    "Press office: [[email:press@bbc.co.uk]]; support: [[email:first_last@company-name.de]]",
    "David Spade's email address is [[email:dspande@davidspade.com]].",
    "Forwarded from [[email:Mike.O-Neil@robertlight.com]] (see also jane@example.com).",
    "Reply-To: <[[email:no-reply@notifications.github.com]]>; Cc: [[email:a.b-c_d@sub.domain.co.jp]]",
    "Ask [[email:examples@examplecorp.com]] (not an RFC 2606 domain) or [[email:test.user@testing.io]].",
    "Docs use user@example.com; the real owner is [[email:owner@example-bank.com]], twitter @owner, 5 @ 3.50.",
    # phones, international and North American formats
    "Call [[phone:+44 20 7946 0958]] during office hours.",
    "Berlin office: [[phone:+49 30 123456]], fax [[phone:+49 30 1234567]].",
    "Paris: [[phone:+33 1 42 68 53 00]]; Tokyo: [[phone:+81 3-1234-5678]].",
    "Sydney [[phone:+61 2 9374 4000]], Mumbai [[phone:+91 98765 43210]].",
    "Madrid [[phone:+34 912 345 678]], Rome [[phone:+39 06 6988 4857]].",
    "Moscow [[phone:+7 495 123-45-67]], Beijing [[phone:+86 10 6552 9988]].",
    "São Paulo [[phone:+55 11 91234-5678]], Cape Town [[phone:+27 21 460 9000]], Dublin [[phone:+353 1 234 5678]].",
    "Here is the number: [[phone:+1 917-444-6321]].  Please tell me if this is helpful.",
    "Call us on [[phone:(555) 010-9999]] or [[phone:555-010-9999]].",
    "That would be [[phone:(202) 225-2815]].",
    "The state established a toll-free arson tip line at [[phone:800-540-7085]].",
    "The phone number is: [[phone:932-682-1067]]",
    "It's [[phone:+1 (555) 555-5555]].",
    "Reception [[phone:212.555.0147]], after hours [[phone:1-800-555-0199]].",
    "Kathy Bates' cell phone number: [[phone:(512) 555-2994]]",
    # cards in their usual groupings
    "Card [[card:4111 1111 1111 1111]], expiry 12/27, CVV 123.",
    "Charge [[card:4111-1111-1111-1111]] again.",
    "Mastercard [[card:5555 5555 5555 4444]] and [[card:5105105105105100]].",
    "Amex [[card:3782 822463 10005]] or [[card:371449635398431]].",
    "Discover [[card:6011 1111 1111 1117]], JCB [[card:3530 1113 3330 0000]].",
    "New Mastercard range: [[card:2223 0031 2200 3222]].",
    "Stored as [[card:4012888888881881]] and [[card:6011000990139424]].",
    # mixed
    "Ticket 2024-000123: customer [[email:lee.wong@outlook.com]] ([[phone:+44 161 496 0000]]) paid with "
    "[[card:4000 0566 5566 5556]] on 2024-03-01 for order 778812345.",
    "Scores 21-19 21-17; contact [[email:coach@club-badminton.fr]] or [[phone:+33 6 12 34 56 78]].",
    "Results 1998 2001 2004 2007; enquiries [[phone:+44 20 7946 0000]] or info@example.org.",
]

MARK = re.compile(r"\[\[(email|phone|card):(.+?)\]\]")


def parse(snippet: str) -> tuple[str, set[tuple[str, int, int]]]:
    """The plain text and its labelled (kind, start, end) spans."""
    text, spans, pos = [], set(), 0
    for m in MARK.finditer(snippet):
        text.append(snippet[pos:m.start()])
        start = sum(map(len, text))
        text.append(m.group(2))
        spans.add((m.group(1), start, start + len(m.group(2))))
        pos = m.end()
    text.append(snippet[pos:])
    return "".join(text), spans


def measure(corpus: list[str]) -> dict[str, dict[str, float]]:
    """Exact-span precision and recall per kind, with the counts behind them."""
    tp, found, expected = Counter(), Counter(), Counter()
    for snippet in corpus:
        text, gold = parse(snippet)
        got = {(f.kind, f.start, f.end) for f in find_pii(text)}
        for kind, *_ in got:
            found[kind] += 1
        for kind, *_ in gold:
            expected[kind] += 1
        for kind, *_ in got & gold:
            tp[kind] += 1
    return {k: {"precision": tp[k] / found[k] if found[k] else 1.0, "recall": tp[k] / expected[k] if expected[k] else 1.0,
                "found": found[k], "expected": expected[k], "correct": tp[k]} for k in KINDS}


def mistakes(corpus: list[str]) -> list[str]:
    out = []
    for snippet in corpus:
        text, gold = parse(snippet)
        got = {(f.kind, f.start, f.end) for f in find_pii(text)}
        out += [f"missed {k} {text[s:e]!r}" for k, s, e in gold - got]
        out += [f"false {k} {text[s:e]!r} in {text[:60]!r}" for k, s, e in got - gold]
    return out


def test_corpus_is_big_enough_and_labelled_for_every_kind():
    assert len(CORPUS) >= 60
    labelled = Counter(k for s in CORPUS for k, *_ in parse(s)[1])
    assert all(labelled[k] >= 10 for k in KINDS), labelled


def test_precision_and_recall_per_kind():
    scores = measure(CORPUS)
    for kind, s in scores.items():
        print(f"{kind}: precision {s['precision']:.3f} recall {s['recall']:.3f} ({s['correct']} of {s['expected']} found, {s['found']} flagged)")
    assert all(s["precision"] >= 0.95 and s["recall"] >= 0.9 for s in scores.values()), (scores, mistakes(CORPUS))


def test_negatives_survive_scrubbing_unchanged():
    """Every snippet without a label (tables, years, dates, codes, documentation domains) is kept byte for byte."""
    negatives = [s for s in CORPUS if not MARK.search(s)]
    assert len(negatives) >= 30
    changed = [s for s in negatives if scrub(s) != s]
    assert not changed, changed


def test_scrubbed_positives_keep_the_surrounding_text():
    text, _ = parse("Ticket 2024-000123: customer [[email:lee.wong@outlook.com]] paid with [[card:4000 0566 5566 5556]] on 2024-03-01.")
    counts = Counter()
    assert scrub(text, counts) == f"Ticket 2024-000123: customer {PLACEHOLDERS['email']} paid with {PLACEHOLDERS['card']} on 2024-03-01."
    assert counts == Counter(email=1, card=1)


if __name__ == "__main__":
    for kind, s in measure(CORPUS).items():
        print(f"{kind:6} precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
              f"({s['correct']} correct of {s['expected']} labelled, {s['found']} flagged)")
    print("\n".join(mistakes(CORPUS)) or "no mistakes")
