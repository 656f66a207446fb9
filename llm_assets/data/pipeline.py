"""One landed file in, a validated dataset and a quarantine table out.

read -> map columns -> source contract -> canonical rows -> PII scrub -> exact de-duplication
-> split by content hash -> dataset contract. Every row that does not make it is in the
quarantine table with its source row number and reason: rows in = kept + quarantined.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from llm_assets.data.contracts import dataset_schema, row_failures, source_schema
from llm_assets.data.formats import CANONICAL, Format, RowError, rename_columns, resolve_format
from llm_assets.data.pii import scrub_value
from llm_assets.data.readers import Rejection, excerpt, read_rows

DEFAULT_MAX_CHARS = 100_000
DEFAULT_EVAL_FRACTION = 0.1
QUARANTINE_COLUMNS = ["source_row", "reason", "field", "detail", "raw"]


@dataclass
class DropResult:
    kind: str
    format: Format
    dataset: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    blank_lines: int
    columns_seen: list[str]
    pii_counts: Counter = field(default_factory=Counter)

    @property
    def rows_kept(self) -> int:
        return len(self.dataset)

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantine)

    @property
    def reject_rate(self) -> float:
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def reasons(self) -> pd.DataFrame:
        """Quarantine counts per (reason, field), most frequent first, with one example each."""
        if self.quarantine.empty:
            return pd.DataFrame(columns=["reason", "field", "rows", "example"])
        g = self.quarantine.groupby(["reason", "field"], dropna=False)
        out = g.agg(rows=("source_row", "size"), example=("detail", "first")).reset_index()
        return out.sort_values(["rows", "reason"], ascending=[False, True]).reset_index(drop=True)


def content_hash(row: dict[str, Any], kind: str) -> str:
    canonical = {c: row[c] for c in CANONICAL[kind]}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def split_of(row_hash: str, eval_fraction: float) -> str:
    """Deterministic split: the same content lands in the same split in every drop and every run."""
    return "eval" if int(row_hash[:15], 16) / 16**15 < eval_fraction else "train"


def _raw(row: dict[str, Any]) -> str:
    return excerpt(json.dumps(row, ensure_ascii=False, default=str))


def validate_drop(
    kind: str,
    name: str,
    data: bytes,
    *,
    override: dict[str, Any] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
) -> DropResult:
    """Validate one landed file. Raises ``UnreadableFile`` / ``FormatError`` for whole-file problems."""
    override = override or {}
    read = read_rows(name, data)
    rejected: list[dict[str, Any]] = [
        {"source_row": r.source_row, "reason": r.reason, "field": None, "detail": r.detail, "raw": r.raw} for r in read.rejected
    ]
    rows = [(n, rename_columns(r, override.get("columns") or {})) for n, r in read.rows]
    fmt = resolve_format(kind, override, [r for _, r in rows], read.columns_seen)

    source = pd.DataFrame({c: [r.get(c) for _, r in rows] for c in fmt.columns}, dtype=object)
    failures = row_failures(source_schema(fmt, max_chars), source)
    for i, problems in sorted(failures.items()):
        n, r = rows[i]
        detail = "; ".join(f"field '{col}' {text}" for _, col, text in problems)
        rejected.append({"source_row": n, "reason": problems[0][0], "field": problems[0][1], "detail": f"row {n}: {detail}", "raw": _raw(r)})

    pii: Counter = Counter()
    kept: list[dict[str, Any]] = []
    first_row_of: dict[str, int] = {}
    for i, (n, r) in enumerate(rows):
        if i in failures:
            continue
        try:
            canon = fmt.mapper(r)
        except RowError as e:
            rejected.append({"source_row": n, "reason": e.reason, "field": None, "detail": f"row {n}: {e}", "raw": _raw(r)})
            continue
        canon = {k: scrub_value(v, pii) for k, v in canon.items()}
        h = content_hash(canon, kind)
        if h in first_row_of:
            rejected.append({"source_row": n, "reason": "duplicate", "field": None,
                             "detail": f"row {n}: exact duplicate of row {first_row_of[h]}", "raw": _raw(r)})
            continue
        first_row_of[h] = n
        extra = {k: v for k, v in r.items() if k not in fmt.columns}
        kept.append({"source_row": n, "row_hash": h, "split": split_of(h, eval_fraction),
                     "meta": json.dumps(extra, sort_keys=True, ensure_ascii=False, default=str), **canon})

    columns = ["source_row", "row_hash", "split", "meta", *CANONICAL[kind]]
    dataset = pd.DataFrame(kept, columns=columns).astype({"source_row": "int64"})
    quarantine = pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS).sort_values("source_row", kind="stable").reset_index(drop=True)
    quarantine["source_row"] = quarantine["source_row"].astype("int64")
    rows_in = len(read.rows) + len(read.rejected)
    assert rows_in == len(dataset) + len(quarantine), "row accounting is broken: rows in != kept + quarantined"
    return DropResult(kind, fmt, dataset, quarantine, rows_in, read.blank_lines, read.columns_seen, pii)


def contract_violations(kind: str, dataset: pd.DataFrame) -> list[str]:
    """What is wrong with a stored dataset against its contract (empty when it holds)."""
    if dataset.empty:
        return ["the dataset has no rows"]
    try:
        failures = row_failures(dataset_schema(kind), dataset)
    except Exception as e:  # table-level failures (missing column, wrong dtype)
        return [str(e)]
    return [f"source row {dataset.iloc[i]['source_row']}: {col} {text}" for i, probs in failures.items() for _, col, text in probs]


def length_stats(dataset: pd.DataFrame, kind: str) -> dict[str, int]:
    """Characters per example (prompt and reply together), for the UI."""
    if dataset.empty:
        return {}

    def chars(v: Any) -> int:
        return sum(len(m["content"]) for m in v) if isinstance(v, list) else len(v)

    lengths = dataset[list(CANONICAL[kind])].apply(lambda r: sum(chars(v) for v in r), axis=1)
    q = lengths.quantile([0.5, 0.95])
    return {"min": int(lengths.min()), "median": int(q[0.5]), "p95": int(q[0.95]), "max": int(lengths.max())}


__all__ = ["DropResult", "Rejection", "validate_drop", "contract_violations", "length_stats", "split_of", "content_hash"]
