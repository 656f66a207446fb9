"""A landed file to its dataset, quarantine and duplicates tables on disk, batch by batch: what ``<kind>_dataset``
runs, so a drop of a million rows needs memory for one batch, not for the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from llm_assets.data.io import DropWriter
from llm_assets.data.pipeline import DropTally, contract_violations, stream_drop
from llm_assets.data.readers import DEFAULT_BATCH_ROWS, Source, row_groups

FIRST_VIOLATIONS = 10  # contract violations kept to show; the rest are counted


def prepare_drop(kind: str, name: str, source: Source, directory: Path, *, override: dict[str, Any] | None = None,
                 batch_rows: int = DEFAULT_BATCH_ROWS, **limits: Any) -> DropTally:
    """Validate ``source`` into ``directory``/{dataset,quarantine,duplicates}.parquet; ``limits`` are ``stream_drop``'s
    ``max_chars`` and ``eval_fraction``."""
    with DropWriter(directory, kind) as writer:
        return stream_drop(kind, name, source, writer, override=override, batch_rows=batch_rows, **limits)


@dataclass
class StoredProblems:
    """What is wrong with a stored dataset file against its contract: counts, and the first violations in words."""

    violations: int = 0
    first: list[str] = field(default_factory=list)
    duplicate_rows: int = 0


def stored_dataset_problems(kind: str, path: Path, batch_rows: int = DEFAULT_BATCH_ROWS) -> StoredProblems:
    """Check a stored dataset batch by batch: each batch against the contract, and every row hash against all earlier
    ones (32 bytes per row), so a duplicate in another batch is found too."""
    out, seen = StoredProblems(), set()
    parquet = pq.ParquetFile(path)
    if parquet.metadata.num_rows == 0:
        return StoredProblems(1, contract_violations(kind, pd.DataFrame()))
    for batch in (b for group in row_groups(parquet) for b in group.to_batches(max_chunksize=batch_rows)):
        frame = pd.DataFrame(batch.to_pylist(), columns=batch.schema.names)
        problems = contract_violations(kind, frame)  # duplicates inside the batch included
        batch_seen: set[bytes] = set()
        for row, h in zip(frame["source_row"], frame["row_hash"]):
            key = _hash_key(h)
            if key in seen or key in batch_seen:
                out.duplicate_rows += 1
            if key in seen:
                problems.append(f"source row {row}: row_hash is duplicated (an earlier batch has it)")
            batch_seen.add(key)
        seen |= batch_seen
        out.violations += len(problems)
        out.first += problems[:FIRST_VIOLATIONS - len(out.first)]
    return out


def _hash_key(row_hash: Any) -> bytes:
    """32 bytes for a well-formed hash; anything else as its text (the contract reports it)."""
    try:
        return bytes.fromhex(row_hash)
    except (TypeError, ValueError):
        return str(row_hash).encode()
