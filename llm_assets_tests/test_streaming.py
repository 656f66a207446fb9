"""Data prep in batches: with 3 rows per batch, de-duplication, quarantine row numbers and row accounting across batch
boundaries are the same as in one batch, for every file type; the tables written batch by batch are the same tables."""

import csv
import hashlib
import io
import json

import pandas as pd
import pytest

from llm_assets.data.io import read_table
from llm_assets.data.pipeline import validate_drop
from llm_assets.data.prepare import prepare_drop
from llm_assets.objects import LocalObjects
from llm_assets.resources.landing import HASH_CHUNK, Landing

MAX_CHARS = 50


def rows(special):
    """14 rows; row 3 is unreadable or invalid in the file type's own way, copies repeat rows of earlier batches."""
    r = {n: {"prompt": f"q{n}", "completion": f"a{n}"} for n in (1, 2, 4, 7, 13)}
    r[6] = {"prompt": "q6", "completion": ""}
    r[9] = {"prompt": "mail jane.doe@gmail.com", "completion": "a9"}
    r[11] = {"prompt": "q11", "completion": "x" * (MAX_CHARS + 1)}
    r.update({5: r[1], 8: r[4], 10: r[7], 12: {"prompt": "mail john.roe@gmail.com", "completion": "a9"}, 14: r[2]})
    return [special if n == 3 else r[n] for n in range(1, 15)]


def jsonl():
    return b"".join(b'{"prompt": "q3", "completion": \n' if isinstance(r, str) else json.dumps(r).encode() + b"\n"
                    for r in rows("broken"))


def csv_bytes():
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["prompt", "completion"])
    for r in rows(None):
        w.writerow(["q3", "a3", "surplus"] if r is None else [r["prompt"], r["completion"]])
    return out.getvalue().encode()


def parquet_bytes():
    out = io.BytesIO()
    pd.DataFrame(rows({"prompt": "q3", "completion": None})).to_parquet(out)
    return out.getvalue()


FILES = {
    "d.jsonl": (jsonl, "malformed_json"),
    "d.csv": (csv_bytes, "ragged_row"),
    "d.parquet": (parquet_bytes, "missing_field"),
    "d.json": (lambda: json.dumps(rows("not an object")).encode(), "not_an_object"),
}


class OneWayStream(io.RawIOBase):
    """A stream that cannot seek, as an S3 object body."""

    def __init__(self, data):
        self.inner = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.inner.readinto(buffer)


@pytest.mark.parametrize("name", FILES)
def test_three_row_batches_give_the_tables_of_one_batch(name, tmp_path):
    make, reason = FILES[name]
    data = make()
    whole = validate_drop("sft", name, data, max_chars=MAX_CHARS)
    (tmp_path / name).write_bytes(data)
    for source in (data, tmp_path / name, OneWayStream(data)):
        r = validate_drop("sft", name, source, max_chars=MAX_CHARS, batch_rows=3)
        assert (r.rows_in, r.rows_kept, r.rows_quarantined, r.rows_duplicate) == (14, 6, 3, 5)
        assert list(r.dataset["source_row"]) == [1, 2, 4, 7, 9, 13]
        assert list(r.quarantine["source_row"]) == [3, 6, 11]
        assert list(r.quarantine["reason"]) == [reason, "empty_text", "too_long"]
        assert r.duplicates.to_dict("records") == [{"source_row": s, "duplicate_of": d} for s, d in
                                                   [(5, 1), (8, 4), (10, 7), (12, 9), (14, 2)]]
        assert r.pii_counts == {"email": 1}  # row 12's address is scrubbed, then it repeats row 9 and is not kept
        for table in ("dataset", "quarantine", "duplicates"):
            pd.testing.assert_frame_equal(getattr(r, table), getattr(whole, table))


@pytest.mark.parametrize("name", FILES)
def test_prepare_writes_the_same_tables_batch_by_batch(name, tmp_path):
    make, _ = FILES[name]
    data = make()
    whole = validate_drop("sft", name, data, max_chars=MAX_CHARS)
    tally = prepare_drop("sft", name, data, tmp_path, max_chars=MAX_CHARS, batch_rows=3)
    assert (tally.rows_in, tally.rows_kept, tally.rows_quarantined, tally.rows_duplicate) == (14, 6, 3, 5)
    assert dict(tally.splits) == dict(whole.dataset["split"].value_counts())
    assert [s["source_row"] for s in tally.samples] == [1, 2, 4]
    assert tally.reasons()[["reason", "rows"]].values.tolist() == whole.reasons()[["reason", "rows"]].values.tolist()
    assert read_table(tmp_path / "dataset.parquet").to_dict("records") == whole.dataset.to_dict("records")
    assert read_table(tmp_path / "quarantine.parquet").to_dict("records") == whole.quarantine.to_dict("records")
    assert read_table(tmp_path / "duplicates.parquet").to_dict("records") == whole.duplicates.to_dict("records")


def test_landing_hash_of_a_file_larger_than_its_chunk_is_the_whole_files(tmp_path):
    data = bytes(range(256)) * (HASH_CHUNK * 3 // 256) + b"tail"
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "big.jsonl").write_bytes(data)
    zone = Landing(LocalObjects(tmp_path))
    (landed,) = zone.scan("sft").files
    assert zone.sha256(landed) == hashlib.sha256(data).hexdigest()


def test_stored_check_finds_what_contract_violations_finds_across_batches(tmp_path):
    from llm_assets.data.io import write_dataset
    from llm_assets.data.pipeline import contract_violations
    from llm_assets.data.prepare import stored_dataset_problems

    df = validate_drop("sft", "d.jsonl", jsonl(), max_chars=MAX_CHARS).dataset
    df.loc[1, "completion"] = ""
    df.loc[2, "prompt"] = None
    df.loc[3, "split"] = "test"
    df.loc[4, "prompt"] = [{"role": "assistant", "content": "a"}]
    df = pd.concat([df, df.head(1)], ignore_index=True)  # row 1 again, in the last 3-row batch
    write_dataset(df, tmp_path / "dataset.parquet", "sft")
    found = stored_dataset_problems("sft", tmp_path / "dataset.parquet", batch_rows=3)
    assert found.duplicate_rows == 1
    expected = contract_violations("sft", df)  # the whole table at once: both copies of row 1 are named
    assert found.violations == len(expected) - 1 and set(found.first) - set(expected) == {
        "source row 1: row_hash is duplicated (an earlier batch has it)"}
