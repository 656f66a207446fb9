"""Readers accept the files people have, and say plainly what is wrong with the ones they cannot read."""

import json

import pandas as pd
import pytest

from llm_assets.data.pipeline import validate_drop
from llm_assets.data.readers import UnreadableFile

BOM = "\ufeff".encode()
ROWS = [{"prompt": "first", "completion": "one"}, {"prompt": "second", "completion": "two"}]


def test_jsonl_with_a_utf8_bom_keeps_its_first_row():
    data = BOM + "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    r = validate_drop("sft", "d.jsonl", data)
    assert r.rows_kept == 2 and r.rows_quarantined == 0
    assert list(r.dataset["source_row"]) == [1, 2] and r.dataset.iloc[0]["completion"] == "one"


def test_json_array_with_a_utf8_bom_is_read():
    r = validate_drop("sft", "d.json", BOM + json.dumps(ROWS).encode())
    assert r.rows_kept == 2 and r.dataset.iloc[0]["completion"] == "one"


def test_csv_with_a_utf8_bom_names_its_first_column():
    r = validate_drop("sft", "d.csv", BOM + b"prompt,completion\nfirst,one\n")
    assert r.columns_seen == ["prompt", "completion"] and r.rows_kept == 1


def test_header_only_csv_says_so():
    with pytest.raises(UnreadableFile, match=r"^the CSV has a header \(prompt, completion\) but no data rows$"):
        validate_drop("sft", "d.csv", b"prompt,completion\n")


def test_jsonl_whose_every_line_is_broken_says_so():
    with pytest.raises(UnreadableFile) as e:
        validate_drop("sft", "d.jsonl", b"{oops\nnot json either\n[1, 2]\n")
    assert str(e.value).startswith("none of the 3 lines is a JSON object: line 1: not valid JSON"), str(e.value)
    assert "columns found []" not in str(e.value)


def test_empty_json_array_and_row_less_parquet_say_so(tmp_path):
    with pytest.raises(UnreadableFile, match="the file holds no rows"):
        validate_drop("sft", "d.json", b"[]")
    pd.DataFrame({"prompt": pd.Series([], dtype=str), "completion": pd.Series([], dtype=str)}).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(UnreadableFile, match=r"the file has columns \(prompt, completion\) but no rows"):
        validate_drop("sft", "e.parquet", (tmp_path / "e.parquet").read_bytes())


def test_nul_byte_in_a_jsonl_line_is_named():
    data = b'{"prompt": "a\x00b", "completion": "c"}\n' + json.dumps(ROWS[1]).encode() + b"\n"
    r = validate_drop("sft", "d.jsonl", data)
    q = r.quarantine.iloc[0]
    assert r.rows_kept == 1 and q["reason"] == "nul_byte" and "line 1: contains a NUL byte (\\x00) at column 14" in q["detail"], q["detail"]


def test_nul_byte_in_a_csv_row_is_quarantined_not_kept():
    r = validate_drop("sft", "d.csv", b"prompt,completion\na\x00b,c\nx,y\n")
    assert r.rows_kept == 1 and r.dataset.iloc[0]["completion"] == "y"
    assert r.quarantine.iloc[0]["reason"] == "nul_byte" and "row 1: contains a NUL byte" in r.quarantine.iloc[0]["detail"]


def test_nul_byte_in_a_json_array_is_named():
    with pytest.raises(UnreadableFile, match=r"line 2 contains a NUL byte"):
        validate_drop("sft", "d.json", b'[{"prompt": "a", "completion": "b"},\n{"prompt": "a\x00", "completion": "b"}]')


def test_utf16_file_is_named():
    data = json.dumps(ROWS[0]).encode("utf-16")
    with pytest.raises(UnreadableFile, match="UTF-16"):
        validate_drop("sft", "d.jsonl", data)


def test_quarantine_excerpt_of_a_long_row_is_cut_after_scrubbing():
    """An address that straddles the excerpt's cut would otherwise leave its first half in the table."""
    text = "x" * 280 + " kathy.bates@gmail.com " + "y" * 500  # the address starts at character 293 of the row
    r = validate_drop("sft", "d.jsonl", json.dumps({"prompt": text, "completion": ""}).encode() + b"\n" + json.dumps(ROWS[0]).encode())
    raw = r.quarantine.iloc[0]["raw"]
    assert "kathy" not in raw and len(raw) < 400, raw


def test_csv_field_over_128_kib_is_quarantined_as_too_long_not_a_crash():
    data = b"prompt,completion\n" + b"x" * 200_000 + b",y\nq,a\n"
    r = validate_drop("sft", "d.csv", data)
    assert r.rows_kept == 1 and list(r.quarantine["reason"]) == ["too_long"] and "200,000 characters" in r.quarantine.iloc[0]["detail"]
