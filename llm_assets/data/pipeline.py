"""One landed file in, a validated dataset, a quarantine table and a duplicates table out.

read -> map columns -> source contract -> canonical rows -> PII scrub -> row checks after mapping
(the dataset contract, row by row) -> exact de-duplication -> split by content hash. Every row
that is not kept is either in the quarantine table (with its source row number and reason) or,
when it repeats a kept row exactly, in the duplicates table: rows in = kept + quarantined +
duplicates. Duplicates are de-duplication, not rejection: they never count toward the reject rate.

The file is read and checked in batches (``stream_drop``), so a drop of any number of rows fits in memory: one
batch, and a 32-byte content hash per kept row for exact de-duplication across the whole drop.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np
import pandas as pd
import pandera.pandas as pa

from llm_assets.data.contracts import dataset_schema, row_failures, row_failures_of, source_schema
from llm_assets.data.formats import CANONICAL, Format, RowError, canonical_row_error, rename_columns, resolve_format
from llm_assets.data.pii import scrub, scrub_value
from llm_assets.data.readers import (DEFAULT_BATCH_ROWS, ReadBatch, Rejection, Source, UnreadableFile, excerpt, nothing_readable,
                                     open_rows, suffix_of)

DEFAULT_MAX_CHARS = 100_000
DEFAULT_EVAL_FRACTION = 0.1
QUARANTINE_COLUMNS = ["source_row", "reason", "field", "detail", "raw"]
DUPLICATE_COLUMNS = ["source_row", "duplicate_of"]
DETECT_ROWS = 1_000  # the format is detected from the first batches holding at least this many readable rows
SAMPLE_ROWS = 3  # kept rows shown in the UI
# json.dumps(..., sort_keys=True, ensure_ascii=False[, default=str]) without building an encoder per row
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
META_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


@dataclass
class DropResult:
    """A validated drop held in memory (``validate_drop``): its three tables, and the counts the stream made of them."""

    tally: "DropTally"
    dataset: pd.DataFrame
    quarantine: pd.DataFrame
    duplicates: pd.DataFrame

    kind = property(lambda self: self.tally.kind)
    format = property(lambda self: self.tally.format)
    rows_in = property(lambda self: self.tally.rows_in)
    blank_lines = property(lambda self: self.tally.blank_lines)
    columns_seen = property(lambda self: self.tally.columns_seen)
    pii_counts = property(lambda self: self.tally.pii_counts)
    rows_kept = property(lambda self: len(self.dataset))
    rows_quarantined = property(lambda self: len(self.quarantine))
    rows_duplicate = property(lambda self: len(self.duplicates))
    reject_rate = property(lambda self: self.tally.reject_rate)

    def reasons(self) -> pd.DataFrame:
        return self.tally.reasons()


def _content_digest(row: dict[str, Any], kind: str) -> bytes:
    canonical = {c: row[c] for c in CANONICAL[kind]}
    return hashlib.sha256(CANONICAL_JSON.encode(canonical).encode()).digest()


def content_hash(row: dict[str, Any], kind: str) -> str:
    return _content_digest(row, kind).hex()


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
    out = {}
    for i, problems in sorted(row_failures_of(source_schema(fmt, max_chars), [r for _, r in rows]).items()):
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
        candidates.append({"source_row": n, "meta": META_JSON.encode(extra), "pii": pii, **canon})
    return candidates, rejected


def _contract_failures(kind: str, candidates: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Mapped rows that would break the stored dataset's contract, caught here one by one so no row fails the drop."""
    if not candidates:
        return {}
    columns = CANONICAL[kind]
    schema = dataset_schema(kind)
    per_row = pa.DataFrameSchema({c: schema.columns[c] for c in columns}, name=schema.name)
    out = {}
    for i, problems in row_failures_of(per_row, candidates).items():
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


@dataclass
class DropTally:
    """What validating a drop counted, without its rows: the figures, reasons and samples its asset reports."""

    kind: str
    format: Format
    columns_seen: list[str]
    rows_in: int = 0
    rows_kept: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    blank_lines: int = 0
    pii_counts: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    reason_rows: dict[tuple[str, Any], list] = field(default_factory=dict)  # (reason, field) -> [rows, first detail]
    lengths: array = field(default_factory=lambda: array("q"))  # characters per kept example
    samples: list[dict[str, Any]] = field(default_factory=list)  # the first kept rows

    @property
    def reject_rate(self) -> float:
        """Quarantined rows over rows in; exact duplicates are not rejects."""
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def reasons(self) -> pd.DataFrame:
        """Quarantine counts per (reason, field), most frequent first, with one example each."""
        keys = sorted(self.reason_rows, key=lambda k: (k[0], k[1] is None, k[1] or ""))  # as a groupby orders them
        rows = [(reason, fld, *self.reason_rows[reason, fld]) for reason, fld in keys]
        out = pd.DataFrame(rows, columns=["reason", "field", "rows", "example"])
        return out.sort_values(["rows", "reason"], ascending=[False, True]).reset_index(drop=True)

    def length_stats(self) -> dict[str, int]:
        """Characters per example (prompt and reply together), for the UI."""
        if not self.lengths:
            return {}
        lengths = np.frombuffer(self.lengths, dtype=np.int64)
        p50, p95 = np.quantile(lengths, [0.5, 0.95])
        return {"min": int(lengths.min()), "median": int(p50), "p95": int(p95), "max": int(lengths.max())}

    def add(self, kept: list[dict[str, Any]], quarantined: list[dict[str, Any]], duplicates: list[dict[str, int]]) -> None:
        self.rows_kept += len(kept)
        self.rows_quarantined += len(quarantined)
        self.rows_duplicate += len(duplicates)
        for row in kept:
            self.pii_counts.update(row["pii"])  # what the stored dataset had scrubbed
            self.splits[row["split"]] += 1
            self.lengths.append(sum(_chars(row[c]) for c in CANONICAL[self.kind]))
        self.samples += kept[:SAMPLE_ROWS - len(self.samples)]
        for q in quarantined:
            entry = self.reason_rows.setdefault((q["reason"], q["field"]), [0, q["detail"]])
            entry[0] += 1


def _chars(v: Any) -> int:
    return sum(len(m["content"]) for m in v) if isinstance(v, list) else len(v)


class DropSink(Protocol):
    def write(self, kept: list[dict[str, Any]], quarantined: list[dict[str, Any]], duplicates: list[dict[str, int]]) -> None: ...


class _Deduplicator:
    """Exact de-duplication across a whole drop: one 32-byte content hash per kept row, however many batches."""

    def __init__(self, kind: str, eval_fraction: float):
        self.kind, self.eval_fraction = kind, eval_fraction
        self.first_row_of: dict[bytes, int] = {}

    def __call__(self, candidates: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
        """Keep the first occurrence of each content; later exact copies name the row they repeat."""
        if self.kind == "inference":
            return _every_request(candidates), []
        kept, duplicates = [], []
        for row in candidates:
            digest = _content_digest(row, self.kind)
            first = self.first_row_of.get(digest)
            if first is not None:
                duplicates.append({"source_row": row["source_row"], "duplicate_of": first})
                continue
            self.first_row_of[digest] = row["source_row"]
            h = digest.hex()
            kept.append({**row, "row_hash": h, "split": split_of(h, self.eval_fraction)})
        return kept, duplicates


def _detection_sample(batches: Iterator[ReadBatch]) -> list[ReadBatch]:
    """The first batches, until they hold ``DETECT_ROWS`` readable rows (or the whole file): what the format is detected from."""
    sample: list[ReadBatch] = []
    for batch in batches:
        sample.append(batch)
        if sum(len(b.rows) for b in sample) >= DETECT_ROWS:
            break
    return sample


def stream_drop(kind: str, name: str, source: Source, sink: DropSink, *, override: dict[str, Any] | None = None,
                max_chars: int = DEFAULT_MAX_CHARS, eval_fraction: float = DEFAULT_EVAL_FRACTION,
                batch_rows: int = DEFAULT_BATCH_ROWS) -> DropTally:
    """Validate one landed file batch by batch, handing each batch's kept, quarantined and duplicate rows to ``sink`` in
    source order; memory holds one batch and the de-duplication hashes. The format is detected from the first
    batches (at least ``DETECT_ROWS`` readable rows). Raises ``UnreadableFile`` / ``FormatError`` for whole-file problems only, before ``sink`` sees
    a row."""
    override = override or {}
    renames = override.get("columns") or {}
    with open_rows(name, source, batch_rows) as read:
        sample = _detection_sample(read.batches)
        rows = [r for b in sample for _, r in b.rows]
        if not rows:
            rejected = [r for b in sample for r in b.rejected]
            if not rejected and not read.columns_seen and any(b.blank_lines for b in sample):
                raise UnreadableFile("the file is empty: there are no rows to ingest")
            raise UnreadableFile(nothing_readable(suffix_of(name), rejected, read.columns_seen))
        seen: dict[str, None] = dict.fromkeys(read.columns_seen)
        for r in rows:
            seen.update(dict.fromkeys(r))
        fmt = resolve_format(kind, override, [rename_columns(r, renames) for r in rows], list(seen))
        del rows
        tally = DropTally(kind, fmt, list(seen))
        dedup = _Deduplicator(kind, eval_fraction)
        for batch in itertools.chain(sample, read.batches):
            if not read.columns_seen:
                for _, r in batch.rows:
                    seen.update(dict.fromkeys(r))
            tally.rows_in += len(batch)
            tally.blank_lines += batch.blank_lines
            kept, quarantined, duplicates = _validate_batch(kind, fmt, batch, renames, max_chars, dedup)
            sink.write(kept, quarantined, duplicates)
            tally.add(kept, quarantined, duplicates)
        sample.clear()
    tally.columns_seen = list(seen)
    assert tally.rows_in == tally.rows_kept + tally.rows_quarantined + tally.rows_duplicate, \
        "row accounting is broken: rows in != kept + quarantined + duplicates"
    return tally


def _validate_batch(kind: str, fmt: Format, batch: ReadBatch, renames: dict[str, str], max_chars: int, dedup: _Deduplicator
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, int]]]:
    rejected = [_quarantined(r.source_row, r.reason, None, r.detail, r.raw) for r in batch.rejected]
    rows = [(n, rename_columns(r, renames)) for n, r in batch.rows]
    source_failures = _source_failures(fmt, rows, max_chars)
    candidates, mapping_failures = _canonical_rows(kind, fmt, rows, set(source_failures))
    contract_failures = _contract_failures(kind, candidates)
    candidates = [row for i, row in enumerate(candidates) if i not in contract_failures]
    kept, duplicates = dedup(candidates)
    rejected += [*source_failures.values(), *mapping_failures, *contract_failures.values()]
    return kept, sorted(rejected, key=lambda q: q["source_row"]), duplicates


class _Collect:
    """A sink that keeps every row in memory (small drops, tests)."""

    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []
        self.quarantined: list[dict[str, Any]] = []
        self.duplicates: list[dict[str, int]] = []

    def write(self, kept: list[dict[str, Any]], quarantined: list[dict[str, Any]], duplicates: list[dict[str, int]]) -> None:
        self.kept += kept
        self.quarantined += quarantined
        self.duplicates += duplicates


def validate_drop(
    kind: str,
    name: str,
    data: Source,
    *,
    override: dict[str, Any] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> DropResult:
    """Validate one landed file (bytes, a path or a binary stream) into in-memory tables; ``prepare.prepare_drop``
    writes them to Parquet batch by batch instead. Raises ``UnreadableFile`` / ``FormatError`` for whole-file problems only."""
    out = _Collect()
    tally = stream_drop(kind, name, data, out, override=override, max_chars=max_chars, eval_fraction=eval_fraction,
                        batch_rows=batch_rows)
    columns = ["source_row", "row_hash", "split", "meta", *CANONICAL[kind]]
    dataset = pd.DataFrame(out.kept, columns=columns).astype({"source_row": "int64"})
    quarantine = pd.DataFrame(out.quarantined, columns=QUARANTINE_COLUMNS).astype({"source_row": "int64"})
    dup_table = pd.DataFrame(out.duplicates, columns=DUPLICATE_COLUMNS).astype("int64")
    return DropResult(tally, dataset, quarantine, dup_table)


def contract_violations(kind: str, dataset: pd.DataFrame) -> list[str]:
    """What is wrong with a stored dataset against its contract (empty when it holds)."""
    if dataset.empty:
        return ["the dataset has no rows"]
    try:
        failures = row_failures(dataset_schema(kind), dataset)
    except Exception as e:  # table-level failures (missing column, wrong dtype)
        return [str(e)]
    return [f"source row {dataset.iloc[i]['source_row']}: {col} {text}" for i, probs in failures.items() for _, col, text in probs]


__all__ = ["DropResult", "DropTally", "Rejection", "DUPLICATE_COLUMNS", "stream_drop", "validate_drop", "contract_violations", "split_of",
           "content_hash"]
