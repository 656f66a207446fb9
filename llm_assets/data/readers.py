"""Read a landed file into rows, one bad row never taking good rows down with it.

Every row keeps its source row number (1-based line for JSONL, data row for CSV after the
header, element for a JSON array, row for Parquet) so a quarantined row can be found in the file.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from llm_assets.data.pii import scrub

RAW_EXCERPT = 300
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which Windows tools put at the start of text files
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class UnreadableFile(ValueError):
    """The file as a whole cannot be read (empty, not JSON at all, corrupt Parquet)."""


@dataclass(frozen=True)
class Rejection:
    source_row: int
    reason: str  # a short code, grouped in the UI
    detail: str  # the sentence a person reads: what is wrong and where
    raw: str = ""


@dataclass
class ReadResult:
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    blank_lines: int = 0
    columns_seen: list[str] = field(default_factory=list)


def excerpt(text: str) -> str:
    """The start of a row for the quarantine table, PII scrubbed before it is cut (so no half address survives)."""
    head = scrub(text[: RAW_EXCERPT * 4])
    if len(text) <= RAW_EXCERPT * 4 and len(head) <= RAW_EXCERPT:
        return head
    return head[:RAW_EXCERPT] + f"... [{len(text):,} characters]"


def _nul_rejection(row: int, where: str, text: str) -> Rejection:
    column = text.index("\x00") + 1
    return Rejection(row, "nul_byte", f"{where} {row}: contains a NUL byte (\\x00) at column {column}; NUL bytes are not text "
                     "(a binary or UTF-16 file?): remove them or re-save the file as UTF-8", excerpt(text.replace("\x00", "\\x00")))


def _decode(raw: bytes, row: int) -> tuple[str | None, Rejection | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        shown = raw.decode("utf-8", errors="replace")
        return None, Rejection(row, "not_utf8", f"row {row}: byte {e.start} is not valid UTF-8 ({raw[e.start:e.start + 1]!r}); re-encode the file as UTF-8", excerpt(shown))


def read_jsonl(data: bytes) -> ReadResult:
    out = ReadResult()
    lines = data.removeprefix(BOM).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for i, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            out.blank_lines += 1
            continue
        text, rej = _decode(raw, i)
        if rej:
            out.rejected.append(rej)
            continue
        if "\x00" in text:
            out.rejected.append(_nul_rejection(i, "line", text))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            out.rejected.append(Rejection(i, "malformed_json", f"line {i}: not valid JSON: {e.msg} at column {e.colno}", excerpt(text)))
            continue
        if not isinstance(obj, dict):
            out.rejected.append(Rejection(i, "not_an_object", f"line {i}: expected a JSON object, got {type(obj).__name__}", excerpt(text)))
            continue
        out.rows.append((i, obj))
    return out


def read_json_array(data: bytes) -> ReadResult:
    try:
        text = data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableFile(f"byte {e.start} is not valid UTF-8; a .json drop must be UTF-8 as a whole (re-encode it, or use .jsonl)") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise UnreadableFile(f"line {line} contains a NUL byte (\\x00); NUL bytes are not text (a binary or UTF-16 file?): "
                             "remove them or re-save the file as UTF-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UnreadableFile(
            f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}. A .json drop is one array of objects; "
            "use .jsonl (one object per line) so that one bad record does not make the whole file unreadable"
        ) from None
    if isinstance(obj, dict):
        obj = next((v for v in obj.values() if isinstance(v, list)), None) if len(obj) == 1 else None
    if not isinstance(obj, list):
        raise UnreadableFile("a .json drop must be an array of objects (or an object with a single array field)")
    out = ReadResult()
    for i, item in enumerate(obj, start=1):
        if isinstance(item, dict):
            out.rows.append((i, item))
        else:
            out.rejected.append(Rejection(i, "not_an_object", f"element {i}: expected a JSON object, got {type(item).__name__}", excerpt(json.dumps(item, ensure_ascii=False))))
    return out


def read_csv(data: bytes) -> ReadResult:
    # The csv module refuses fields over 128 KiB with an exception that would fail the whole drop;
    # lift its limit so an over-long row reaches the contract and is quarantined as too long.
    csv.field_size_limit(2**31 - 1)
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise UnreadableFile("the CSV file has no header row") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header) or any(not h for h in header):
        raise UnreadableFile(f"the CSV header must name every column once, got {header}")
    out = ReadResult(columns_seen=header)
    for i, fields in enumerate(reader, start=1):
        if not fields or all(not f.strip() for f in fields):
            out.blank_lines += 1
            continue
        joined = ",".join(fields)
        if any("\udc80" <= ch <= "\udcff" for ch in joined):
            raw = joined.encode("utf-8", errors="surrogateescape")
            _, rej = _decode(raw, i)
            out.rejected.append(rej or Rejection(i, "not_utf8", f"row {i}: not valid UTF-8"))
            continue
        if "\x00" in joined:
            out.rejected.append(_nul_rejection(i, "row", joined))
            continue
        if len(fields) != len(header):
            out.rejected.append(Rejection(i, "ragged_row", f"row {i}: {len(fields)} fields but the header has {len(header)} ({', '.join(header)})", excerpt(joined)))
            continue
        out.rows.append((i, dict(zip(header, fields))))
    if not out.rows and not out.rejected:
        raise UnreadableFile(f"the CSV has a header ({', '.join(header)}) but no data rows")
    return out


def read_parquet(data: bytes) -> ReadResult:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UnreadableFile(f"not a readable Parquet file: {e}") from None
    out = ReadResult(columns_seen=table.column_names)
    for i, row in enumerate(table.to_pylist(), start=1):
        out.rows.append((i, row))
    return out


def _nothing_readable(suffix: str, result: ReadResult) -> str:
    """No row could be read: say why with the first reason, not 'unknown format, columns found []'."""
    if not result.rejected:
        return f"the file has columns ({', '.join(result.columns_seen)}) but no rows" if result.columns_seen else "the file holds no rows"
    n, first = len(result.rejected), result.rejected[0].detail
    if suffix == ".jsonl":
        return f"none of the {n:,} lines is a JSON object: {first}. A .jsonl drop has one JSON object per line"
    if suffix == ".json":
        return f"none of the {n:,} elements of the array is a JSON object: {first}"
    return f"none of the {n:,} data rows could be read: {first}"


READERS = {".jsonl": read_jsonl, ".json": read_json_array, ".csv": read_csv, ".parquet": read_parquet}


def read_rows(name: str, data: bytes) -> ReadResult:
    suffix = "." + name.lower().rsplit(".", 1)[-1]
    if suffix not in READERS:
        raise UnreadableFile(f"unsupported file type {suffix!r}; use one of {', '.join(READERS)}")
    if not data.removeprefix(BOM).strip():
        raise UnreadableFile("the file is empty: there are no rows to ingest")
    if suffix != ".parquet" and data.startswith(UTF16_BOMS):
        raise UnreadableFile("the file is UTF-16 encoded (it starts with a UTF-16 byte-order mark); re-save it as UTF-8")
    result = READERS[suffix](data)
    if not result.rows:
        raise UnreadableFile(_nothing_readable(suffix, result))
    if not result.columns_seen:
        seen: dict[str, None] = {}
        for _, row in result.rows:
            seen.update(dict.fromkeys(row))
        result.columns_seen = list(seen)
    return result
