"""Datasets on disk: Parquet with an explicit Arrow schema per kind (messages as list<struct>)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm_assets.data.formats import CANONICAL
from llm_assets.data.pipeline import DUPLICATE_COLUMNS, QUARANTINE_COLUMNS

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
BASE = [("source_row", pa.int64()), ("row_hash", pa.string()), ("split", pa.string()), ("meta", pa.string())]
QUARANTINE = pa.schema([("source_row", pa.int64()), ("reason", pa.string()), ("field", pa.string()),
                        ("detail", pa.string()), ("raw", pa.string())])
DUPLICATES = pa.schema([("source_row", pa.int64()), ("duplicate_of", pa.int64())])


def dataset_arrow_schema(kind: str) -> pa.Schema:
    return pa.schema(BASE + [(c, MESSAGES if c == "prompt" else pa.string()) for c in CANONICAL[kind]])


def write_dataset(df: pd.DataFrame, path: Path, kind: str) -> None:
    schema = dataset_arrow_schema(kind)
    pq.write_table(pa.Table.from_pylist(df[schema.names].to_dict("records"), schema=schema), path)


def write_quarantine(df: pd.DataFrame, path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(df[QUARANTINE_COLUMNS].to_dict("records"), schema=QUARANTINE), path)


def write_duplicates(df: pd.DataFrame, path: Path) -> None:
    """Rows left out as exact copies, each with the source row of the copy that was kept."""
    pq.write_table(pa.Table.from_pylist(df[DUPLICATE_COLUMNS].to_dict("records"), schema=DUPLICATES), path)


def read_table(path: Path) -> pd.DataFrame:
    """Read back with plain Python lists/dicts in nested columns (not numpy arrays)."""
    table = pq.read_table(path)
    return pd.DataFrame(table.to_pylist(), columns=table.column_names)
