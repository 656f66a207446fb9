"""The artifact store: directories of files, committed atomically under a content-addressed version.

Layout under the root (a local directory or ``s3://bucket/prefix``)::

    <key>/versions/<version>/...files...      the artifact
    <key>/versions/<version>/MANIFEST.json    file list with sha256; written last = the commit
    <key>/LATEST                              the version most recently committed for <key>
    <key>/records/<name>.json                 run records (metrics, provenance); not part of any version
    <key>/RECORD                              the name of the most recent record

``version`` is the sha256 of the sorted (path, sha256) list, so the same content always gets
the same version, and it is what assets report as their data version. A version without its
MANIFEST.json (a writer killed half-way) is invisible to readers. Locally a commit is a
rename of a fully written staging directory; on S3 the files are uploaded first and the
manifest PUT last, which is atomic; a failed upload removes what it put there (what it cannot reach, an endpoint gone
mid-commit, is left to ``llm_assets.maintenance.gc``).

Every read is checked against the manifest: the size of each file on each access, and its sha256 when its bytes
enter the download cache, when its stat changed since it was last hashed (``SEAL``), and on request (``verify``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_assets.paths import default_data_dir
from llm_assets.objects import LocalObjects, Objects, open_objects

MANIFEST = "MANIFEST.json"
LATEST = "LATEST"
RECORDS = "records"  # <key>/records/<name>.json: run records beside the versions, not part of any version
CURRENT_RECORD = "RECORD"  # <key>/RECORD: the name of the record of the most recent materialization
# Beside a local copy's files (the local store's version directory, a cache entry): each file's stat identity (size,
# mtime_ns, ctime_ns, inode) when its bytes last matched the manifest. Any write changes the ctime, which no user can
# set back, so a file whose stat still matches needs no hashing; one whose stat changed is hashed again.
SEAL = ".seal.json"

log = logging.getLogger(__name__)


class ArtifactNotFound(LookupError):
    pass


class CorruptArtifact(IOError):
    """Stored bytes that no longer match their manifest: never served."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    key: str
    version: str
    files: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files)

    def to_json(self) -> bytes:
        body = {"key": self.key, "version": self.version, "files": self.files,
                "metadata": self.metadata, "created_at": self.created_at}
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        d = json.loads(data)
        return cls(d["key"], d["version"], d["files"], d.get("metadata", {}), d.get("created_at", 0.0))


def build_manifest(key: str, directory: Path, metadata: dict[str, Any] | None = None) -> Manifest:
    files = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(SEAL):  # a copy's bookkeeping, not content
            files.append({"path": p.relative_to(directory).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)})
    if not files:
        raise ValueError(f"refusing to commit an empty artifact for {key!r} (no files in {directory})")
    version = hashlib.sha256("\n".join(f"{f['path']}\t{f['sha256']}" for f in files).encode()).hexdigest()
    return Manifest(key, version, files, metadata or {}, time.time())


@dataclass(frozen=True)
class Artifact:
    manifest: Manifest
    path: Path  # a local directory holding the files

    @property
    def version(self) -> str:
        return self.manifest.version

    def file(self, name: str) -> Path:
        return self.path / name


def _stat_identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _seal(directory: Path, manifest: Manifest) -> None:
    """Record the stat identity of files whose bytes were just verified; a copy that cannot be written to goes unsealed
    and is hashed on every read instead."""
    body = json.dumps({f["path"]: _stat_identity(directory / f["path"]) for f in manifest.files}).encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{SEAL}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        os.replace(tmp, directory / SEAL)
    except OSError:
        pass


def check_copy(directory: Path, manifest: Manifest, full: bool = False) -> list[tuple[str, str]]:
    """(file, what is wrong) for each file of a local copy whose bytes do not match ``manifest``; [] when sound.
    Sizes are always compared; a file is hashed when its stat changed since it was sealed, or always when ``full``."""
    try:
        sealed = json.loads((directory / SEAL).read_bytes())
    except (OSError, ValueError):
        sealed = {}
    bad, hashed = [], False
    for f in manifest.files:
        path = directory / f["path"]
        try:
            identity = _stat_identity(path)
        except FileNotFoundError:
            bad.append((f["path"], "the file is missing"))
            continue
        if identity[0] != f["size"]:
            bad.append((f["path"], f"{identity[0]:,} bytes where the manifest says {f['size']:,}"))
        elif full or sealed.get(f["path"]) != identity:
            hashed = True
            if sha256_file(path) != f["sha256"]:
                bad.append((f["path"], "its sha256 differs from the manifest's"))
    if hashed and not bad:
        _seal(directory, manifest)
    return bad


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise ValueError(f"artifact key {key!r} must be '/'-separated names with no '.', '..' or empty parts")
    return key


class Store:
    """The artifact store itself, free of Dagster so the training side and tests can use it."""

    def __init__(self, objects: Objects, cache_dir: Path | None = None):
        self.objects = objects
        self.cache_dir = cache_dir or default_data_dir() / "cache" / "artifacts"

    @property
    def root(self) -> str:
        return self.objects.root

    def commit(self, key: str, directory: Path, metadata: dict[str, Any] | None = None, latest: bool = True) -> Manifest:
        """Commit every file under ``directory`` as a new version of ``key``, then point LATEST at it (unless not
        ``latest``: a worker commits, the orchestrator decides what is current once it has recorded the run)."""
        _check_key(key)
        manifest = build_manifest(key, Path(directory), metadata)
        vdir = f"{key}/versions/{manifest.version}"
        if not self.objects.exists(f"{vdir}/{MANIFEST}"):
            if isinstance(self.objects, LocalObjects):
                self._commit_local(Path(directory), vdir, manifest)
            else:
                try:
                    for f in manifest.files:
                        self.objects.upload(Path(directory) / f["path"], f"{vdir}/{f['path']}")
                    self.objects.write_bytes(f"{vdir}/{MANIFEST}", manifest.to_json())
                except BaseException:
                    self._discard_uncommitted(vdir, manifest)
                    raise
        if latest:
            self.objects.write_bytes(f"{key}/{LATEST}", manifest.version.encode())
        return manifest

    def _discard_uncommitted(self, vdir: str, manifest: Manifest) -> None:
        """After a failed upload: abort its open multipart uploads and delete the files it put, unless a racing commit
        of the same content finished. Best effort: with the endpoint gone this fails too, and the GC finds the rest."""
        try:
            if self.objects.exists(f"{vdir}/{MANIFEST}"):
                return
            ours = {f"{vdir}/{f['path']}" for f in manifest.files}
            for upload in self.objects.list_uploads(vdir):
                if upload.path in ours:
                    self.objects.abort_upload(upload)
            for f in manifest.files:
                self.objects.delete(f"{vdir}/{f['path']}")
        except Exception as e:  # the commit's own error is the one to raise
            log.warning(f"could not clean up the failed commit of {self.root}/{vdir} ({type(e).__name__}: {e}); "
                        "python -m llm_assets.gc removes what is left")

    def _commit_local(self, directory: Path, vdir: str, manifest: Manifest) -> None:
        objects: LocalObjects = self.objects  # type: ignore[assignment]
        staging = objects.local_path(f".staging/{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        try:
            for f in manifest.files:
                dst = staging / f["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(directory / f["path"], dst)
            (staging / MANIFEST).write_bytes(manifest.to_json())
            _seal(staging, manifest)  # a rename keeps the files' stat identity
            target = objects.local_path(vdir)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / MANIFEST).exists():  # not a racing commit of the same content
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def commit_copy(self, key: str, source: str, version: str, metadata: dict[str, Any] | None = None) -> Manifest:
        """Commit ``source``'s ``version`` as the same version of ``key`` by copying inside the store (server-side on
        S3): a stage passed through moves no bytes through the orchestrator. Same content, same version."""
        src = self.manifest(source, version)
        manifest = Manifest(_check_key(key), src.version, src.files, metadata or {}, time.time())
        vdir = f"{key}/versions/{manifest.version}"
        if not self.objects.exists(f"{vdir}/{MANIFEST}"):
            for f in manifest.files:
                self.objects.copy(f"{source}/versions/{version}/{f['path']}", f"{vdir}/{f['path']}")
            self.objects.write_bytes(f"{vdir}/{MANIFEST}", manifest.to_json())  # last: the commit
        self.objects.write_bytes(f"{key}/{LATEST}", manifest.version.encode())
        return manifest

    def commit_bytes(self, key: str, name: str, data: bytes, metadata: dict[str, Any] | None = None) -> Manifest:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / name).write_bytes(data)
            return self.commit(key, Path(tmp), metadata)

    def put_record(self, key: str, name: str, record: dict[str, Any]) -> None:
        """Keep a run record (metrics, provenance, timings) beside ``key``'s versions, outside their content hash:
        two runs that produce the same files get the same version, whatever their logs said. The newest record
        becomes ``key``'s current one."""
        _check_key(f"{key}/{RECORDS}/{name}")
        self.objects.write_bytes(f"{key}/{RECORDS}/{name}.json", json.dumps(record, indent=1, sort_keys=True, default=float).encode())
        self.objects.write_bytes(f"{key}/{CURRENT_RECORD}", name.encode())

    def record(self, key: str, name: str | None = None) -> dict[str, Any] | None:
        """The record ``name`` of ``key`` (its current one when None), or None when there is none."""
        _check_key(key)
        if name is None:
            if not self.objects.exists(f"{key}/{CURRENT_RECORD}"):
                return None
            name = self.objects.read_bytes(f"{key}/{CURRENT_RECORD}").decode().strip()
        path = f"{key}/{RECORDS}/{name}.json"
        return json.loads(self.objects.read_bytes(path)) if self.objects.exists(path) else None

    def put_json(self, path: str, body: dict[str, Any]) -> None:
        """A small JSON object at ``path`` (a worker's result or error for the orchestrator); one atomic write."""
        self.objects.write_bytes(_check_key(path), json.dumps(body, indent=1, sort_keys=True, default=float).encode())

    def read_json(self, path: str) -> dict[str, Any] | None:
        return json.loads(self.objects.read_bytes(path)) if self.objects.exists(_check_key(path)) else None

    def delete(self, path: str) -> None:
        self.objects.delete(_check_key(path))

    def versions(self, key: str) -> list[Manifest]:
        """Every committed version of ``key``, oldest first; a version whose manifest is missing was never committed."""
        found = [o.path for o in self.objects.list(f"{_check_key(key)}/versions") if o.path.endswith(f"/{MANIFEST}")]
        manifests = [Manifest.from_json(self.objects.read_bytes(p)) for p in found
                     if p.count("/") == key.count("/") + 3]  # <key>/versions/<v>/MANIFEST.json, not a file inside one
        return sorted(manifests, key=lambda m: m.created_at)

    def delete_version(self, key: str, version: str) -> None:
        """Manifest first, so the version is invisible before any of its files goes."""
        self.objects.delete(f"{_check_key(key)}/versions/{version}/{MANIFEST}")
        self.objects.delete_prefix(f"{key}/versions/{version}")

    def delete_key(self, key: str) -> None:
        self.objects.delete_prefix(_check_key(key))

    def has_version(self, key: str, version: str) -> bool:
        return self.objects.exists(f"{_check_key(key)}/versions/{version}/{MANIFEST}")

    def set_latest(self, key: str, version: str) -> None:
        """Point ``key`` at an already committed version (a reused result)."""
        if not self.has_version(key, version):
            raise ArtifactNotFound(f"version {version} of {key!r} was never committed (no {MANIFEST})")
        self.objects.write_bytes(f"{key}/{LATEST}", version.encode())

    def latest_version(self, key: str) -> str | None:
        _check_key(key)
        if not self.objects.exists(f"{key}/{LATEST}"):
            return None
        return self.objects.read_bytes(f"{key}/{LATEST}").decode().strip()

    def manifest(self, key: str, version: str | None = None) -> Manifest:
        version = version or self.latest_version(key)
        if version is None:
            raise ArtifactNotFound(f"nothing has been committed to the artifact store for {key!r} (root {self.root})")
        path = f"{key}/versions/{version}/{MANIFEST}"
        if not self.objects.exists(path):
            raise ArtifactNotFound(f"version {version} of {key!r} was never committed (no {MANIFEST})")
        return Manifest.from_json(self.objects.read_bytes(path))

    def read_file(self, key: str, name: str, version: str | None = None) -> bytes | None:
        """One file of a committed version, checked against its manifest, without fetching the rest
        (reading a model's metrics must not download its weights); None when the version has no such file."""
        manifest = self.manifest(key, version)
        entry = next((f for f in manifest.files if f["path"] == name), None)
        if entry is None:
            return None
        data = self.objects.read_bytes(f"{key}/versions/{manifest.version}/{name}")
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise self._corrupt(manifest, [(name, "its bytes differ from the manifest's")])
        return data

    def get(self, key: str, version: str | None = None, verify: bool = False) -> Artifact:
        """A local directory with the files of a committed version, checked against its manifest (see ``check_copy``;
        ``verify`` hashes every file). Corrupt bytes in the store raise ``CorruptArtifact``; a damaged copy in the S3
        download cache is only a cache: it is fetched again (and verified) instead."""
        manifest = self.manifest(key, version)
        vdir = f"{key}/versions/{manifest.version}"
        if isinstance(self.objects, LocalObjects):
            path = self.objects.local_path(vdir)
            if bad := check_copy(path, manifest, verify):
                raise self._corrupt(manifest, bad)
            return Artifact(manifest, path)
        local = self.cache_dir / vdir
        if (local / MANIFEST).exists() and (bad := check_copy(local, manifest, verify)):
            log.warning(f"the cached copy {local} of {key} version {manifest.version[:12]} is damaged "
                        f"({bad[0][0]}: {bad[0][1]}); fetching it again from {self.root}")
            shutil.rmtree(local, ignore_errors=True)
        if not (local / MANIFEST).exists():
            self._download(manifest, vdir, local)
        return Artifact(manifest, local)

    def _download(self, manifest: Manifest, vdir: str, local: Path) -> None:
        """Fetch into a private directory, hash every file, then rename it into the cache: a reader never sees a partial
        or unverified copy."""
        tmp = self.cache_dir / ".partial" / uuid.uuid4().hex
        try:
            for f in manifest.files:
                self.objects.download(f"{vdir}/{f['path']}", tmp / f["path"])
            (tmp / MANIFEST).write_bytes(manifest.to_json())
            if bad := check_copy(tmp, manifest, full=True):
                raise self._corrupt(manifest, bad)
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, local)
            except OSError:
                pass  # a concurrent reader put it there first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def verify(self, key: str, version: str) -> list[tuple[str, str]]:
        """Hash every stored file of a version (for the GC's ``--verify``, or a doubt): (file, what is wrong) for each
        bad one, [] when sound. On S3 this reads all of the version's bytes."""
        manifest = self.manifest(key, version)
        vdir = f"{key}/versions/{manifest.version}"
        if isinstance(self.objects, LocalObjects):
            return check_copy(self.objects.local_path(vdir), manifest, full=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".verify-") as tmp:
            for f in manifest.files:
                self.objects.download(f"{vdir}/{f['path']}", Path(tmp) / f["path"])
            return check_copy(Path(tmp), manifest, full=True)

    def _corrupt(self, manifest: Manifest, bad: list[tuple[str, str]]) -> CorruptArtifact:
        vdir = f"{self.root}/{manifest.key}/versions/{manifest.version}"
        name, why = bad[0]
        more = f" (and {len(bad) - 1} more files)" if len(bad) > 1 else ""
        return CorruptArtifact(
            f"{vdir}/{name} does not match its manifest: {why}{more}. Version {manifest.version[:12]} of {manifest.key!r} "
            f"is corrupt and is not served: delete it (python -m llm_assets.gc --verify, or remove {vdir}) and "
            f"materialize {manifest.key} again")


def open_store(root: str, s3_endpoint: str | None = None, region: str | None = None, cache_dir: Path | None = None) -> Store:
    """A store opened from plain settings (a training worker has no Dagster resources); S3 credentials come from the
    environment or the node's role, as boto3 finds them."""

    def s3_client():
        import boto3

        return boto3.client("s3", endpoint_url=s3_endpoint or None, region_name=region or None)

    return Store(open_objects(root, s3_client), cache_dir)
