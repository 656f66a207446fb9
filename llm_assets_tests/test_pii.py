import json
from collections import Counter

from llm_assets.data.pii import scrub, scrub_value
from llm_assets.data.pipeline import validate_drop


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_scrubs_email_phone_and_luhn_valid_cards_with_counts():
    counts = Counter()
    text = ("Mail jane.doe+x@mail.proton.me or call (555) 010-9999 / +44 20 7946 0958; "
            "card 4111 1111 1111 1111, also 4111-1111-1111-1111.")
    out = scrub(text, counts)
    assert "jane" not in out and "010-9999" not in out and "7946" not in out and "4111" not in out
    assert counts == Counter(email=1, phone=2, card=2)


def test_ordinary_numbers_survive():
    text = ("In 2023, 1,234,567 people paid $41.1 million; server 192.43.244.18; "
            "order 1234567890123 (not Luhn-valid); score 3-2; ISBN 978-3-16-148410-0.")
    counts = Counter()
    assert scrub(text, counts) == text
    assert not counts


def test_year_lists_and_tables_that_pass_luhn_by_chance_survive():
    """These digit runs pass the Luhn check; they used to become [CARD] and [PHONE]."""
    for text in ["Champions in 1998 2001 2004 2007 and 2010.",
                 "Season 2019 2020 2021 2022\nGoals 31 25 36 29 44",
                 "Lot 1000 2000 3000 4000 5000 6000 7000 8000"]:
        assert scrub(text) == text, scrub(text)


def test_documentation_domains_are_not_scrubbed():
    text = "Write to ana.lopez@example.com, ops@mail.example.org, qa@ci.test or me@box.localhost."
    assert scrub(text) == text
    assert scrub("Write to ana.lopez@mailbox.org.") == "Write to [EMAIL]."


def test_scrub_value_reaches_nested_strings_and_keeps_other_values():
    counts = Counter()
    value = {"owner": "kathy.bates@gmail.com", "tags": ["call +44 20 7946 0958", 3], "n": None}
    assert scrub_value(value, counts) == {"owner": "[EMAIL]", "tags": ["call [PHONE]", 3], "n": None}
    assert counts == Counter(email=1, phone=1)


def test_meta_column_is_scrubbed():
    rows = [{"prompt": "p", "completion": "c", "author": "kathy.bates@gmail.com", "notes": {"phone": "(512) 555-2994"}}]
    r = validate_drop("sft", "d.jsonl", jsonl(rows))
    meta = json.loads(r.dataset.iloc[0]["meta"])
    assert meta == {"author": "[EMAIL]", "notes": {"phone": "[PHONE]"}}
    assert r.pii_counts == Counter(email=1, phone=1)


def test_quarantine_raw_and_detail_are_scrubbed():
    data = (b'{"prompt": "mail kathy.bates@gmail.com", "completion": ""}\n'
            b'{"prompt": "call (512) 555-2994", "completion": \n'
            b'{"messages": [{"role": "kathy.bates@gmail.com", "content": "x"}]}\n'
            b'{"prompt": "ok", "completion": "fine"}\n')
    r = validate_drop("sft", "d.jsonl", data)
    assert r.rows_quarantined == 3
    leaked = r.quarantine[["raw", "detail"]].to_json()
    assert "kathy" not in leaked and "555-2994" not in leaked, leaked
    assert "[EMAIL]" in r.quarantine.iloc[0]["raw"] and "[PHONE]" in r.quarantine.iloc[1]["raw"]


def test_pii_counts_are_what_the_stored_dataset_had_scrubbed():
    """A duplicate or a row quarantined after mapping is not stored, so its scrubbed PII is not counted."""
    rows = [{"prompt": "mail kathy.bates@gmail.com", "chosen": "a", "rejected": "b"},
            {"prompt": "mail kathy.bates@gmail.com", "chosen": "a", "rejected": "b"},
            {"prompt": "call (512) 555-2994", "chosen": "same", "rejected": "same"}]
    r = validate_drop("preference", "p.jsonl", jsonl(rows))
    assert (r.rows_kept, r.rows_duplicate, r.rows_quarantined) == (1, 1, 1)
    assert r.pii_counts == Counter(email=1)
