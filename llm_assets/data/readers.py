"""Read a landed file as batches of rows, one bad row never taking good rows down with it.

A file is read from a path, bytes or a binary stream (an S3 object body) in batches of ``batch_rows``
rows, so memory is bounded by the batch, not the file; a Parquet file by one row group at a time, and a
``.json`` array, which is parsed whole, is refused above ``JSON_ARRAY_MAX_BYTES`` (use ``.jsonl`` for big drops).
Every row keeps its source row number (1-based line for JSONL, data row for CSV after the
header, element for a JSON array, row for Parquet) so a quarantined row can be found in the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Union

from llm_assets.data.pii import scrub

RAW_EXCERPT = 300
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which Windows tools put at the start of text files
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
HEAD_BYTES = 1 << 16  # how much of a file is looked at before reading it (empty? UTF-16?)
JSON_ARRAY_MAX_BYTES = 256 << 20  # a .json array is parsed whole: bigger drops belong in .jsonl
DEFAULT_BATCH_ROWS = 10_000

Source = Union[bytes, str, os.PathLike, BinaryIO]


class UnreadableFile(ValueError):
    """The file as a whole cannot be read (empty, not JSON at all, corrupt Parquet)."""


@dataclass(frozen=True)
class Rejection:
    source_row: int
    reason: str  # a short code, grouped in the UI
    detail: str  # the sentence a person reads: what is wrong and where
    raw: str = ""


@dataclass
class ReadBatch:
    """Consecutive source rows: the readable ones and the rejected ones, in no particular order between them."""

    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    blank_lines: int = 0

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejected)


@dataclass
class RowStream:
    """A file being read: its batches, and the columns its header or schema names (empty for JSON, whose rows say)."""

    batches: Iterator[ReadBatch]
    columns_seen: list[str]


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


def _jsonl_batches(stream: BinaryIO, batch_rows: int) -> Iterator[ReadBatch]:
    out = ReadBatch()
    for i, raw in enumerate(stream, start=1):
        if i == 1:
            raw = raw.removeprefix(BOM)
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        if not raw.strip():
            out.blank_lines += 1
            continue
        text, rej = _decode(raw, i)
        if rej:
            out.rejected.append(rej)
        elif "\x00" in text:
            out.rejected.append(_nul_rejection(i, "line", text))
        else:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                out.rejected.append(Rejection(i, "malformed_json", f"line {i}: not valid JSON: {e.msg} at column {e.colno}", excerpt(text)))
            else:
                if isinstance(obj, dict):
                    out.rows.append((i, obj))
                else:
                    out.rejected.append(Rejection(i, "not_an_object", f"line {i}: expected a JSON object, got {type(obj).__name__}", excerpt(text)))
        if len(out) >= batch_rows:
            yield out
            out = ReadBatch()
    yield out


def read_jsonl(stream: BinaryIO, batch_rows: int) -> RowStream:
    return RowStream(_jsonl_batches(stream, batch_rows), [])


def read_json_array(stream: BinaryIO, batch_rows: int) -> RowStream:
    data = stream.read(JSON_ARRAY_MAX_BYTES + 1)
    if len(data) > JSON_ARRAY_MAX_BYTES:
        raise UnreadableFile(f"a .json drop is parsed whole, and this one is over {JSON_ARRAY_MAX_BYTES >> 20} MiB: "
                             "land it as .jsonl (one object per line), which is read in batches at any size")
    try:
        text = data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableFile(f"byte {e.start} is not valid UTF-8; a .json drop must be UTF-8 as a whole (re-encode it, or use .jsonl)") from None
    del data
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
    del text
    if isinstance(obj, dict):
        obj = next((v for v in obj.values() if isinstance(v, list)), None) if len(obj) == 1 else None
    if not isinstance(obj, list):
        raise UnreadableFile("a .json drop must be an array of objects (or an object with a single array field)")

    def batches() -> Iterator[ReadBatch]:
        for start in range(0, max(len(obj), 1), batch_rows):
            out = ReadBatch()
            for i, item in enumerate(obj[start:start + batch_rows], start=start + 1):
                if isinstance(item, dict):
                    out.rows.append((i, item))
                else:
                    out.rejected.append(Rejection(i, "not_an_object", f"element {i}: expected a JSON object, got {type(item).__name__}",
                                                  excerpt(json.dumps(item, ensure_ascii=False))))
            yield out

    return RowStream(batches(), [])


def read_csv(stream: BinaryIO, batch_rows: int) -> RowStream:
    # The csv module refuses fields over 128 KiB with an exception that would fail the whole drop;
    # lift its limit so an over-long row reaches the contract and is quarantined as too long.
    csv.field_size_limit(2**31 - 1)
    lines = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    first = next(lines, "").removeprefix("\ufeff")
    reader = csv.reader(itertools.chain([first], lines))
    try:
        header = next(reader)
    except StopIteration:
        raise UnreadableFile("the CSV file has no header row") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header) or any(not h for h in header):
        raise UnreadableFile(f"the CSV header must name every column once, got {header}")

    def batches() -> Iterator[ReadBatch]:
        out, any_row = ReadBatch(), False
        for i, fields in enumerate(reader, start=1):
            if not fields or all(not f.strip() for f in fields):
                out.blank_lines += 1
                continue
            any_row = True
            joined = ",".join(fields)
            if any("\udc80" <= ch <= "\udcff" for ch in joined):
                raw = joined.encode("utf-8", errors="surrogateescape")
                _, rej = _decode(raw, i)
                out.rejected.append(rej or Rejection(i, "not_utf8", f"row {i}: not valid UTF-8"))
            elif "\x00" in joined:
                out.rejected.append(_nul_rejection(i, "row", joined))
            elif len(fields) != len(header):
                out.rejected.append(Rejection(i, "ragged_row", f"row {i}: {len(fields)} fields but the header has {len(header)} ({', '.join(header)})", excerpt(joined)))
            else:
                out.rows.append((i, dict(zip(header, fields))))
            if len(out) >= batch_rows:
                yield out
                out = ReadBatch()
        if not any_row:
            raise UnreadableFile(f"the CSV has a header ({', '.join(header)}) but no data rows")
        yield out

    return RowStream(batches(), header)


def read_parquet(stream: BinaryIO, batch_rows: int) -> RowStream:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(stream)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UnreadableFile(f"not a readable Parquet file: {e}") from None

    def batches() -> Iterator[ReadBatch]:
        n = 0
        for group in row_groups(parquet):
            for batch in group.to_batches(max_chunksize=batch_rows):
                yield ReadBatch(rows=list(enumerate(batch.to_pylist(), start=n + 1)))
                n += batch.num_rows
        yield ReadBatch()

    return RowStream(batches(), parquet.schema_arrow.names)


def row_groups(parquet: Any) -> Iterator[Any]:
    """A Parquet file's row groups one at a time, as tables: memory holds one (``iter_batches`` kept every batch it had
    read alive, 190 MB of a 200 MB file)."""
    for i in range(parquet.metadata.num_row_groups):
        try:
            yield parquet.read_row_group(i)
        except OSError as e:  # a corrupt row group further in
            raise UnreadableFile(f"not a readable Parquet file: {e}") from None


def nothing_readable(suffix: str, rejected: list[Rejection], columns_seen: list[str]) -> str:
    """No row could be read: say why with the first reason, not 'unknown format, columns found []'."""
    if not rejected:
        return f"the file has columns ({', '.join(columns_seen)}) but no rows" if columns_seen else "the file holds no rows"
    n, first = len(rejected), rejected[0].detail
    if suffix == ".jsonl":
        return f"none of the {n:,} lines is a JSON object: {first}. A .jsonl drop has one JSON object per line"
    if suffix == ".json":
        return f"none of the {n:,} elements of the array is a JSON object: {first}"
    return f"none of the {n:,} data rows could be read: {first}"


READERS = {".jsonl": read_jsonl, ".json": read_json_array, ".csv": read_csv, ".parquet": read_parquet}


class _Replay(io.RawIOBase):
    """A stream whose first bytes were already read (to look at them) and are handed out again first."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        data = self.rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def suffix_of(name: str) -> str:
    suffix = "." + name.lower().rsplit(".", 1)[-1]
    if suffix not in READERS:
        raise UnreadableFile(f"unsupported file type {suffix!r}; use one of {', '.join(READERS)}")
    return suffix


@contextlib.contextmanager
def open_rows(name: str, source: Source, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[RowStream]:
    """Open ``source`` (bytes, a local path or a binary stream, read once from its current position) as a stream of
    row batches; the file's type comes from ``name``."""
    suffix = suffix_of(name)
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray)):
            stream: BinaryIO = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            stream = stack.enter_context(open(source, "rb"))
        else:
            stream = source
        head = stream.read(HEAD_BYTES)
        if len(head) < HEAD_BYTES and not head.removeprefix(BOM).strip():
            raise UnreadableFile("the file is empty: there are no rows to ingest")
        if suffix != ".parquet" and head.startswith(UTF16_BOMS):
            raise UnreadableFile("the file is UTF-16 encoded (it starts with a UTF-16 byte-order mark); re-save it as UTF-8")
        if stream.seekable():
            stream.seek(-len(head), io.SEEK_CUR)
        elif suffix == ".parquet":  # its footer is at the end: it needs a seekable file
            spool = stack.enter_context(tempfile.TemporaryFile())
            spool.write(head)
            shutil.copyfileobj(stream, spool, 1 << 20)
            spool.seek(0)
            stream = spool
        else:
            stream = io.BufferedReader(_Replay(head, stream), 1 << 20)
        yield READERS[suffix](stream, batch_rows)
