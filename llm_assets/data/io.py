"""Datasets on disk: Parquet with an explicit Arrow schema per kind (messages as list<struct>)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llm_assets.data.formats import CANONICAL
from llm_assets.data.pipeline import DUPLICATE_COLUMNS

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


def write_duplicates(df: pd.DataFrame, path: Path) -> None:
    """Rows left out as exact copies, each with the source row of the copy that was kept."""
    pq.write_table(pa.Table.from_pylist(df[DUPLICATE_COLUMNS].to_dict("records"), schema=DUPLICATES), path)


class DropWriter:
    """A drop's three tables written batch by batch (one row group per batch), so no table is ever whole in memory.
    A table no batch added to is written empty, as ``write_table`` writes it, so a small drop's files (and so its
    version) are the same bytes as when the tables were written whole."""

    def __init__(self, directory: Path, kind: str):
        schemas = [dataset_arrow_schema(kind), QUARANTINE, DUPLICATES]
        names = ["dataset.parquet", "quarantine.parquet", "duplicates.parquet"]
        self.writers = [pq.ParquetWriter(directory / name, schema) for name, schema in zip(names, schemas)]
        self.rows = [0, 0, 0]

    def write(self, kept: list[dict[str, Any]], quarantined: list[dict[str, Any]], duplicates: list[dict[str, int]]) -> None:
        for i, rows in enumerate((kept, quarantined, duplicates)):
            if rows:
                schema = self.writers[i].schema  # column by column: the same table as from_pylist, in half the time
                self.writers[i].write_table(pa.Table.from_pydict({n: [r[n] for r in rows] for n in schema.names}, schema=schema))
                self.rows[i] += len(rows)

    def close(self) -> None:
        for writer, rows in zip(self.writers, self.rows):
            if not rows:
                writer.write_table(writer.schema.empty_table())
            writer.close()

    def __enter__(self) -> "DropWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_table(path: Path) -> pd.DataFrame:
    """Read back with plain Python lists/dicts in nested columns (not numpy arrays)."""
    table = pq.read_table(path)
    return pd.DataFrame(table.to_pylist(), columns=table.column_names)
