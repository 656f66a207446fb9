"""Canonical dataset rows (from the dataset assets' Parquet files) into what the TRL trainers take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset


def load_rows(paths: list[str], split: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of every drop, de-duplicated across drops by content hash before the split is chosen (the first drop
    wins), so a row one drop put in train and another in eval can never be in both."""
    rows, seen = [], set()
    for path in paths:
        for row in pq.read_table(Path(path)).to_pylist():
            if row["row_hash"] not in seen:
                seen.add(row["row_hash"])
                if split is None or row["split"] == split:
                    rows.append(row)
    rows.sort(key=lambda r: r["row_hash"])  # independent of drop order: same data, same run
    return rows[:limit] if limit else rows


def plain(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages) + "\n"


def prompt_dataset(rows: list[dict[str, Any]], template: str) -> Dataset:
    return Dataset.from_list([{"prompt": plain(r["prompt"]) if template == "plain" else r["prompt"]} for r in rows])


def text_dataset(rows: list[dict[str, Any]]) -> Dataset:
    return Dataset.from_list([{"text": r["text"]} for r in rows])
