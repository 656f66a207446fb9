from collections import Counter

from llm_assets.data.pii import scrub


def test_scrubs_email_phone_and_luhn_valid_cards_with_counts():
    counts = Counter()
    text = ("Mail jane.doe+x@mail.example.org or call (555) 010-9999 / +44 20 7946 0958; "
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
