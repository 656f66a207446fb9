"""A failed dataset check says in one line what is wrong and what to do; the rows are in its metadata."""

from __future__ import annotations

import json

import pandas as pd

from llm_assets.assets.data import dataset_checks
from llm_assets.data.io import write_dataset
from llm_assets.data.pipeline import validate_drop
from llm_assets.data.prepare import stored_dataset_problems


def test_failed_dataset_checks_say_what_to_do_in_one_line(tmp_path):
    rows = [{"prompt": f"Say {w}.", "completion": w} for w in ("alpha", "beta", "gamma", "delta")]
    result = validate_drop("sft", "words.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    stored = pd.concat([result.dataset, result.dataset.head(1)], ignore_index=True)  # a duplicate the pipeline let through
    stored.loc[1, "completion"] = ""  # and a row the contract refuses
    write_dataset(stored, tmp_path / "dataset.parquet", "sft")
    problems = stored_dataset_problems("sft", tmp_path / "dataset.parquet")
    failed = {c.check_name: c for c in dataset_checks("sft", result, problems, 0.5) if not c.passed}
    assert set(failed) == {"contract_holds", "no_duplicates"}
    for check in failed.values():
        assert check.description and "\n" not in check.description
    assert "land it again" in failed["contract_holds"].description and failed["contract_holds"].metadata["violations"].value >= 1
    assert "materialize sft_dataset again" in failed["no_duplicates"].description
