"""The landing zone: ``<root>/{sft,preference,pretraining,inference}/<file>``, each file one data drop (``inference``:
prompts for batch_predictions).

A drop's partition key is derived from its file name alone, so the same file always maps to
the same partition, and names that could escape the directory or break a UI are refused.

A file's mapping override is the sidecar ``<file>.mapping.yaml``. A name of more than 242 bytes
is valid but leaves no room for that suffix within the 255-byte limit of a file name, so such a
file's sidecar is named after its drop key instead, ``<drop key>.mapping.yaml`` (the key of a
name that long is a short slug plus a hash; the landing sensor logs the sidecar's name when
it registers the drop).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource

from llm_assets.objects import Objects, open_objects

KINDS = ("sft", "preference", "pretraining", "inference")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SIDECAR_SUFFIX = ".mapping.yaml"  # "<file>.mapping.yaml" overrides the detected format of "<file>"
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".uploading", "~")
SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
MAX_NAME_BYTES = 255  # the longest file name ext4 and xfs accept
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a landed file
VERSION_SEPARATOR = "@"  # "<key>@<sha8>": later content of a file name (never in a key drop_key makes)


class DropNameError(ValueError):
    """A landed file whose name cannot become a partition key."""


def drop_key(name: str) -> str:
    """The partition key for a landed file name; refuses traversal and control characters."""
    if "/" in name or "\\" in name:
        raise DropNameError(f"{name!r}: landed file names may not contain path separators; put the file directly in the kind's folder")
    if name in ("", ".", "..") or ".." in name:
        raise DropNameError(f"{name!r}: '..' is not allowed in a landed file name; rename the file")
    bad = [c for c in name if unicodedata.category(c)[0] == "C"]
    if bad:
        raise DropNameError(f"{name!r}: control character {bad[0]!r} in the file name; rename the file")
    if SAFE_KEY.match(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", unicodedata.normalize("NFKD", name)).strip("._-")[:180] or "drop"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def split_key(key: str) -> tuple[str, str | None]:
    """(key of the file name, content-hash prefix or None) of a drop partition key."""
    base, sep, prefix = key.rpartition(VERSION_SEPARATOR)
    return (base, prefix) if sep else (key, None)


@dataclass(frozen=True)
class LandedFile:
    """A file as the sensor sees it. Its identity (size, mtime, etag) changes whenever its content may have: ``etag`` is
    S3's, or for a local file ``<mtime_ns>.<ctime_ns>.<inode>``, so even a rewrite that keeps size and mtime (``os.utime``)
    moves the ctime, which a user cannot set back. A changed identity makes the sensor hash the file again: new content
    is a new drop, the same content (a chmod, a copy over itself) is not."""

    kind: str
    name: str
    key: str
    size: int
    mtime: float
    etag: str

    @property
    def path(self) -> str:
        return f"{self.kind}/{self.name}"


def sidecar_path(f: LandedFile) -> str:
    """``<file>.mapping.yaml``, or ``<drop key>.mapping.yaml`` when the former would be too long a name to exist."""
    if len((f.name + SIDECAR_SUFFIX).encode()) <= MAX_NAME_BYTES:
        return f.path + SIDECAR_SUFFIX
    return f"{f.kind}/{f.key}{SIDECAR_SUFFIX}"


@dataclass(frozen=True)
class Scan:
    files: list[LandedFile]
    refused: list[tuple[str, str]]  # (name, why); why begins with repr(name), so control characters print escaped


class Landing:
    def __init__(self, objects: Objects):
        self.objects = objects

    @property
    def root(self) -> str:
        return self.objects.root

    def scan(self, kind: str) -> Scan:
        if kind not in KINDS:
            raise ValueError(f"unknown data kind {kind!r}; kinds are {', '.join(KINDS)}")
        files, refused = [], []
        for info in self.objects.list(kind):
            name = info.path[len(kind) + 1:]
            base = name.rsplit("/", 1)[-1]
            if base.startswith(".") or base.endswith(IN_PROGRESS_SUFFIXES) or base.endswith(SIDECAR_SUFFIX):
                continue
            if not base.lower().endswith(DATA_SUFFIXES):
                refused.append((name, f"{name!r}: unsupported file type; landed files end in {', '.join(DATA_SUFFIXES)}"))
                continue
            try:
                key = drop_key(name)
            except DropNameError as e:
                refused.append((name, str(e)))
                continue
            files.append(LandedFile(kind, name, key, info.size, info.mtime, info.etag))
        return Scan(files, refused)

    def find(self, kind: str, key: str) -> LandedFile:
        """The landed file of drop ``key`` (``name`` or ``name@sha8`` for later content of the same name)."""
        base, _ = split_key(key)
        scan = self.scan(kind)
        for f in scan.files:
            if f.key == base:
                return f
        names = ", ".join(f.name for f in scan.files[:20]) or "none"
        raise FileNotFoundError(
            f"no file in {self.root}/{kind}/ maps to drop {key!r} (files there: {names}); "
            "it may have been removed from the landing zone after the partition was created"
        )

    def sha256(self, f: LandedFile) -> str:
        """The content hash of a landed file, read in chunks (a drop may be larger than memory)."""
        h = hashlib.sha256()
        with contextlib.closing(self.objects.open(f.path)) as stream:
            while block := stream.read(HASH_CHUNK):
                h.update(block)
        return h.hexdigest()

    def download(self, f: LandedFile, local: Path) -> None:
        """Copy a landed file to a local path, streamed (a copy on disk, an S3 managed download)."""
        self.objects.download(f.path, local)

    def mapping_override(self, f: LandedFile) -> dict[str, Any]:
        """The optional sidecar (see ``sidecar_path``) beside a landed file (keys: format, columns)."""
        path = sidecar_path(f)
        if not self.objects.exists(path):
            return {}
        try:
            data = yaml.safe_load(self.objects.read_bytes(path)) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{self.root}/{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict) or set(data) - {"format", "columns"}:
            raise ValueError(f"{self.root}/{path}: a mapping override has only 'format' and 'columns' keys, got {data!r}")
        return data


class LandingZone(ConfigurableResource):
    """Where data drops land: a directory or ``s3://bucket/prefix`` with one folder per kind."""

    root: str
    s3: S3Resource

    def open(self) -> Landing:
        return Landing(open_objects(self.root, self.s3.get_client))
