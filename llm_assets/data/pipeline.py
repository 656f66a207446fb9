"""One landed file in, a validated dataset, a quarantine table and a duplicates table out.

read -> map columns -> source contract -> canonical rows -> PII scrub -> row checks after mapping
(the dataset contract, row by row) -> exact de-duplication -> split by content hash. Every row
that is not kept is either in the quarantine table (with its source row number and reason) or,
when it repeats a kept row exactly, in the duplicates table: rows in = kept + quarantined +
duplicates. Duplicates are de-duplication, not rejection: they never count toward the reject rate.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pandera.pandas as pa

from llm_assets.data.contracts import dataset_schema, row_failures, source_schema
from llm_assets.data.formats import CANONICAL, Format, RowError, canonical_row_error, rename_columns, resolve_format
from llm_assets.data.pii import scrub, scrub_value
from llm_assets.data.readers import Rejection, excerpt, read_rows

DEFAULT_MAX_CHARS = 100_000
DEFAULT_EVAL_FRACTION = 0.1
QUARANTINE_COLUMNS = ["source_row", "reason", "field", "detail", "raw"]
DUPLICATE_COLUMNS = ["source_row", "duplicate_of"]


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
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DUPLICATE_COLUMNS))

    @property
    def rows_kept(self) -> int:
        return len(self.dataset)

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantine)

    @property
    def rows_duplicate(self) -> int:
        return len(self.duplicates)

    @property
    def reject_rate(self) -> float:
        """Quarantined rows over rows in; exact duplicates are not rejects."""
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


def _quarantined(n: int, reason: str, field: str | None, detail: str, raw: str) -> dict[str, Any]:
    """A quarantine entry; the detail may quote the row, so it is scrubbed like the raw excerpt."""
    return {"source_row": n, "reason": reason, "field": field, "detail": scrub(detail), "raw": raw}


def _source_failures(fmt: Format, rows: list[tuple[int, dict[str, Any]]], max_chars: int) -> dict[int, dict[str, Any]]:
    """Rows whose own fields break the detected format's contract, by position in ``rows``."""
    source = pd.DataFrame({c: [r.get(c) for _, r in rows] for c in fmt.columns}, dtype=object)
    out = {}
    for i, problems in sorted(row_failures(source_schema(fmt, max_chars), source).items()):
        n, r = rows[i]
        detail = "; ".join(f"field '{col}' {text}" for _, col, text in problems)
        out[i] = _quarantined(n, problems[0][0], problems[0][1], f"row {n}: {detail}", _raw(r))
    return out


def _canonical_rows(kind: str, fmt: Format, rows: list[tuple[int, dict[str, Any]]], skip: set[int]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Map, scrub and check each row; returns (candidates with source_row, meta and their PII counts, quarantine entries)."""
    candidates, rejected = [], []
    for i, (n, r) in enumerate(rows):
        if i in skip:
            continue
        pii: Counter = Counter()
        try:
            canon = {k: scrub_value(v, pii) for k, v in fmt.mapper(r).items()}
            problem = canonical_row_error(kind, canon)
            if problem:
                raise problem
        except RowError as e:
            rejected.append(_quarantined(n, e.reason, e.field, f"row {n}: {e}", _raw(r)))
            continue
        extra = scrub_value({k: v for k, v in r.items() if k not in fmt.columns}, pii)
        candidates.append({"source_row": n, "meta": json.dumps(extra, sort_keys=True, ensure_ascii=False, default=str), "pii": pii, **canon})
    return candidates, rejected


def _contract_failures(kind: str, candidates: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Mapped rows that would break the stored dataset's contract, caught here one by one so no row fails the drop."""
    if not candidates:
        return {}
    columns = CANONICAL[kind]
    schema = dataset_schema(kind)
    per_row = pa.DataFrameSchema({c: schema.columns[c] for c in columns}, name=schema.name)
    frame = pd.DataFrame({c: [row[c] for row in candidates] for c in columns}, dtype=object)
    out = {}
    for i, problems in row_failures(per_row, frame).items():
        n = candidates[i]["source_row"]
        detail = "; ".join(f"after mapping, field '{col}' {text}" for _, col, text in problems)
        shown = {c: candidates[i][c] for c in columns}
        out[i] = _quarantined(n, problems[0][0], problems[0][1], f"row {n}: {detail}", excerpt(json.dumps(shown, ensure_ascii=False)))
    return out


def _every_request(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inference rows: each is a request that gets its own reply (sampled replies to one prompt differ), so a repeated
    prompt is kept, never de-duplicated away; its identity is its row number and its content. A prompt file is never
    trained on: every row is held out ("eval")."""
    def identity(row: dict[str, Any]) -> str:
        body = {"source_row": row["source_row"], "prompt": row["prompt"]}
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    return [{**row, "row_hash": identity(row), "split": "eval"} for row in candidates]


def _deduplicate(kind: str, candidates: list[dict[str, Any]], eval_fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
    """Keep the first occurrence of each content; later exact copies name the row they repeat."""
    if kind == "inference":
        return _every_request(candidates), []
    kept, duplicates, first_row_of = [], [], {}
    for row in candidates:
        h = content_hash(row, kind)
        if h in first_row_of:
            duplicates.append({"source_row": row["source_row"], "duplicate_of": first_row_of[h]})
            continue
        first_row_of[h] = row["source_row"]
        kept.append({**row, "row_hash": h, "split": split_of(h, eval_fraction)})
    return kept, duplicates


def validate_drop(
    kind: str,
    name: str,
    data: bytes,
    *,
    override: dict[str, Any] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
) -> DropResult:
    """Validate one landed file. Raises ``UnreadableFile`` / ``FormatError`` for whole-file problems only."""
    override = override or {}
    read = read_rows(name, data)
    rejected = [_quarantined(r.source_row, r.reason, None, r.detail, r.raw) for r in read.rejected]
    rows = [(n, rename_columns(r, override.get("columns") or {})) for n, r in read.rows]
    fmt = resolve_format(kind, override, [r for _, r in rows], read.columns_seen)

    source_failures = _source_failures(fmt, rows, max_chars)
    candidates, mapping_failures = _canonical_rows(kind, fmt, rows, set(source_failures))
    contract_failures = _contract_failures(kind, candidates)
    candidates = [row for i, row in enumerate(candidates) if i not in contract_failures]
    kept, duplicates = _deduplicate(kind, candidates, eval_fraction)
    rejected += [*source_failures.values(), *mapping_failures, *contract_failures.values()]

    columns = ["source_row", "row_hash", "split", "meta", *CANONICAL[kind]]
    dataset = pd.DataFrame(kept, columns=columns).astype({"source_row": "int64"})
    quarantine = pd.DataFrame(rejected, columns=QUARANTINE_COLUMNS).sort_values("source_row", kind="stable").reset_index(drop=True)
    quarantine["source_row"] = quarantine["source_row"].astype("int64")
    dup_table = pd.DataFrame(duplicates, columns=DUPLICATE_COLUMNS).astype("int64")
    pii = sum((row["pii"] for row in kept), Counter())  # what the stored dataset had scrubbed
    rows_in = len(read.rows) + len(read.rejected)
    assert rows_in == len(dataset) + len(quarantine) + len(dup_table), "row accounting is broken: rows in != kept + quarantined + duplicates"
    return DropResult(kind, fmt, dataset, quarantine, rows_in, read.blank_lines, read.columns_seen, pii, dup_table)


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


__all__ = ["DropResult", "Rejection", "DUPLICATE_COLUMNS", "validate_drop", "contract_violations", "length_stats", "split_of", "content_hash"]
