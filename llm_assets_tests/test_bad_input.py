"""Bad input: each defect is quarantined with its row number and reason; every good row is kept."""

import json

import pytest

from llm_assets.data.formats import FormatError
from llm_assets.data.pipeline import validate_drop
from llm_assets.data.readers import UnreadableFile

GOOD = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(5)]


def lines(rows):
    return [json.dumps(r).encode() for r in rows]


def with_bad_line(bad: bytes, at: int = 3) -> bytes:
    ls = lines(GOOD)
    ls.insert(at - 1, bad)
    return b"\n".join(ls) + b"\n"


def assert_only(result, row, reason, *fragments):
    assert result.rows_in == 6 and result.rows_kept == 5, result.quarantine.to_dict("records")
    assert sorted(result.dataset["completion"]) == sorted(r["completion"] for r in GOOD)
    q = result.quarantine
    assert list(q["source_row"]) == [row] and q.iloc[0]["reason"] == reason
    for f in fragments:
        assert f in q.iloc[0]["detail"], q.iloc[0]["detail"]


@pytest.mark.parametrize(
    "bad, reason, fragments",
    [
        (b'{"prompt": "cut off", "completion": ', "malformed_json", ["line 3", "not valid JSON"]),
        (b'{"prompt": "no completion here"}', "missing_field", ["row 3", "'completion'", "missing"]),
        (b'{"prompt": "typed", "completion": 42}', "wrong_type", ["row 3", "'completion'", "must be a string"]),
        (b'{"prompt": "", "completion": "x"}', "empty_text", ["row 3", "'prompt'", "empty"]),
        (b'{"prompt": "  \\n ", "completion": "x"}', "empty_text", ["'prompt'"]),
        (b'{"prompt": "caf\xe9", "completion": "x"}', "not_utf8", ["row 3", "byte", "UTF-8"]),
        (b'["not", "an", "object"]', "not_an_object", ["line 3", "list"]),
    ],
)
def test_bad_line_is_quarantined_alone(bad, reason, fragments):
    assert_only(validate_drop("sft", "d.jsonl", with_bad_line(bad)), 3, reason, *fragments)


def test_ten_megabyte_row_is_quarantined_as_too_long():
    huge = json.dumps({"prompt": "x" * (10 * 1024 * 1024), "completion": "y"}).encode()
    r = validate_drop("sft", "d.jsonl", with_bad_line(huge, at=2))
    assert_only(r, 2, "too_long", "'prompt'", "10,485,760 characters")
    assert len(r.quarantine.iloc[0]["raw"]) < 1000  # the quarantine keeps an excerpt, not 10 MB


def test_duplicates_are_deduplicated_not_quarantined_and_name_the_kept_row():
    data = b"\n".join(lines(GOOD + [GOOD[1], GOOD[3]])) + b"\n"
    r = validate_drop("sft", "d.jsonl", data)
    assert r.rows_in == 7 and r.rows_kept == 5 and r.rows_quarantined == 0 and r.rows_duplicate == 2
    assert r.duplicates.to_dict("records") == [{"source_row": 6, "duplicate_of": 2}, {"source_row": 7, "duplicate_of": 4}]
    assert r.reject_rate == 0.0 and r.reasons().empty
    assert r.rows_in == r.rows_kept + r.rows_quarantined + r.rows_duplicate


def test_duplicates_table_round_trips_through_parquet(tmp_path):
    from llm_assets.data.io import read_table, write_duplicates

    r = validate_drop("sft", "d.jsonl", b"\n".join(lines(GOOD + [GOOD[1]])) + b"\n")
    write_duplicates(r.duplicates, tmp_path / "duplicates.parquet")
    assert read_table(tmp_path / "duplicates.parquet").to_dict("records") == [{"source_row": 6, "duplicate_of": 2}]
    empty = validate_drop("sft", "d.jsonl", b"\n".join(lines(GOOD)) + b"\n").duplicates
    write_duplicates(empty, tmp_path / "none.parquet")
    assert list(read_table(tmp_path / "none.parquet").columns) == ["source_row", "duplicate_of"]


def test_duplicates_do_not_count_toward_the_reject_rate():
    data = b"\n".join(lines(GOOD + [GOOD[0]]) + [b"{oops"]) + b"\n"
    r = validate_drop("sft", "d.jsonl", data)
    assert (r.rows_in, r.rows_kept, r.rows_quarantined, r.rows_duplicate) == (7, 5, 1, 1)
    assert r.reject_rate == 1 / 7
    assert list(r.reasons()["reason"]) == ["malformed_json"]


def test_shared_news_duplicates_are_not_rejects(shared_data):
    r = validate_drop("pretraining", "news.jsonl", (shared_data / "cpt" / "news_articles.jsonl").read_bytes())
    assert (r.rows_in, r.rows_kept, r.rows_quarantined, r.rows_duplicate) == (400, 390, 0, 10)
    assert r.reject_rate == 0.0
    assert (r.duplicates["duplicate_of"] < r.duplicates["source_row"]).all()
    assert set(r.duplicates["duplicate_of"]) <= set(r.dataset["source_row"])


def test_ragged_csv_row():
    data = b"prompt,completion\nq0,a0\nq1,a1\nq2,a2,surplus\nq3,a3\nq4,a4\nq5,a5\n"
    r = validate_drop("sft", "d.csv", data)
    assert r.rows_in == 6 and r.rows_kept == 5
    q = r.quarantine.iloc[0]
    assert q["source_row"] == 3 and q["reason"] == "ragged_row" and "3 fields but the header has 2" in q["detail"]


def test_non_utf8_csv_row():
    data = b"prompt,completion\nq0,a0\nq1,caf\xe9\nq2,a2\n"
    r = validate_drop("sft", "d.csv", data)
    assert r.rows_kept == 2 and list(r.quarantine["source_row"]) == [2] and r.quarantine.iloc[0]["reason"] == "not_utf8"


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"])
def test_empty_file_is_a_clear_error(data):
    with pytest.raises(UnreadableFile, match="the file is empty"):
        validate_drop("sft", "d.jsonl", data)


def test_unknown_format_is_a_clear_error():
    with pytest.raises(FormatError, match=r"unknown sft format: columns found \['a', 'b'\]"):
        validate_drop("sft", "d.jsonl", b'{"a": 1, "b": 2}\n')


def test_broken_json_array_names_the_position():
    with pytest.raises(UnreadableFile, match="line 2, column"):
        validate_drop("sft", "d.json", b'[{"prompt": "a", "completion": "b"},\n {"prompt": }]')


def test_several_defects_each_quarantined_exactly_once():
    ls = lines(GOOD)
    ls[1:1] = [b"{oops", b'{"prompt": "p", "completion": ""}']
    ls.append(ls[0])
    r = validate_drop("sft", "d.jsonl", b"\n".join(ls) + b"\n")
    assert r.rows_in == 8 and r.rows_kept == 5 and r.rows_quarantined == 2 and r.rows_duplicate == 1
    assert list(r.quarantine["source_row"]) == [2, 3] and list(r.duplicates["source_row"]) == [8]
    assert list(r.quarantine["reason"]) == ["malformed_json", "empty_text"]
