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
    """Content identity of the rows in ``paths`` after cross-drop de-duplication, split included (order-free)."""
    seen: set[tuple[str, str]] = set()
    for path in paths:
        table = pq.read_table(path, columns=["row_hash", "split"])
        seen.update(zip(table.column("split").to_pylist(), table.column("row_hash").to_pylist()))
    h = hashlib.sha256()
    for split, row_hash in sorted(seen):
        h.update(f"{split}:{row_hash}\n".encode())
    return h.hexdigest()
