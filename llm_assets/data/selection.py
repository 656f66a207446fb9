"""Which validated drops a recipe trains on, and the identity of the rows it gets from them.

A drop is validated once, for everyone; whether its quarantined share is acceptable is the
consumer's call (``data.max_reject_rate`` of each recipe). The rows a stage trains on are the
union of the chosen drops de-duplicated by content, so their identity is a hash of those rows'
content hashes: re-validating an unchanged drop, or landing a drop whose every row is already
there, changes nothing a model could learn from.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow.parquet as pq


def left_out_because(summary: dict[str, Any], max_reject_rate: float) -> str | None:
    """Why a validated drop (its dataset summary) is not trained on under ``max_reject_rate``; None when it is."""
    if not summary.get("checks_passed", False):
        return "its dataset failed a blocking check (see the dataset's checks)"
    rate = summary.get("reject_rate")
    if rate is None and summary.get("rows_in"):
        rate = summary.get("rows_quarantined", 0) / summary["rows_in"]
    if rate is not None and rate > max_reject_rate:
        return (f"{rate:.1%} of its rows were quarantined, above this recipe's data.max_reject_rate "
                f"{max_reject_rate:.1%} (raise it to train on the drop's good rows)")
    return None


def rows_digest(paths: list[str]) -> str:
    """Content identity of the rows in ``paths`` with their split, de-duplicated across drops as the training
    stages load them (``llm_assets.training.data.load_rows``: the first drop wins)."""
    split_of: dict[str, str] = {}
    for path in paths:
        table = pq.read_table(path, columns=["row_hash", "split"])
        for row_hash, split in zip(table.column("row_hash").to_pylist(), table.column("split").to_pylist()):
            split_of.setdefault(row_hash, split)
    h = hashlib.sha256()
    for row_hash in sorted(split_of):
        h.update(f"{split_of[row_hash]}:{row_hash}\n".encode())
    return h.hexdigest()
