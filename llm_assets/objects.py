"""One small file-system interface over a local directory or an S3 prefix.

The landing zone and the artifact store both speak it, so every behaviour (listing, atomic
writes, downloads) is written and tested once for each backend.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """``etag`` changes whenever the content may have: S3's entity tag, or for a local file its stat identity
    ``<mtime_ns>.<ctime_ns>.<inode>`` (any write, even one that restores size and mtime, moves the ctime, which a user
    cannot set back; an atomic replace changes the inode)."""

    path: str  # relative to the root, '/'-separated
    size: int
    mtime: float  # seconds since the epoch
    etag: str = ""


@dataclass(frozen=True)
class Upload:
    """An S3 multipart upload not completed nor aborted: its parts are stored (and billed) but belong to no object."""

    path: str  # the object it would create, relative to the root
    upload_id: str
    initiated: float  # seconds since the epoch


class Objects(Protocol):
    root: str

    def list(self, prefix: str = "", recursive: bool = True) -> list[ObjectInfo]: ...
    def read_bytes(self, path: str) -> bytes: ...
    def open(self, path: str) -> BinaryIO: ...
    def write_bytes(self, path: str, data: bytes) -> None: ...
    def upload(self, local: Path, path: str) -> None: ...
    def download(self, path: str, local: Path) -> None: ...
    def exists(self, path: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def delete(self, path: str) -> None: ...
    def copy(self, src: str, dst: str) -> None: ...
    def list_uploads(self, prefix: str = "") -> list[Upload]: ...
    def upload_bytes(self, upload: Upload) -> int: ...
    def abort_upload(self, upload: Upload) -> None: ...


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class LocalObjects:
    """A directory. Writes go through a temporary file and ``os.replace``, so they are atomic."""

    def __init__(self, root: str | Path):
        self.root = str(root)
        self._root = Path(root)

    def _p(self, path: str) -> Path:
        return self._root / path if path else self._root

    def list(self, prefix: str = "", recursive: bool = True) -> list[ObjectInfo]:
        base = self._p(prefix)
        if not base.is_dir():
            return []
        entries = base.rglob("*") if recursive else base.iterdir()
        out = []
        for p in entries:
            if p.is_file():
                st = p.stat()
                identity = f"{st.st_mtime_ns}.{st.st_ctime_ns}.{st.st_ino}"
                out.append(ObjectInfo(p.relative_to(self._root).as_posix(), st.st_size, st.st_mtime, identity))
        return sorted(out, key=lambda o: o.path)

    def read_bytes(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    def open(self, path: str) -> BinaryIO:
        """The file as a binary stream, for reading in chunks."""
        return open(self._p(path), "rb")

    def write_bytes(self, path: str, data: bytes) -> None:
        target = self._p(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def upload(self, local: Path, path: str) -> None:
        target = self._p(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)

    def download(self, path: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._p(path), local)

    def exists(self, path: str) -> bool:
        return self._p(path).exists()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._p(prefix), ignore_errors=True)

    def delete(self, path: str) -> None:
        self._p(path).unlink(missing_ok=True)

    def copy(self, src: str, dst: str) -> None:
        target = self._p(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._p(src), target)

    def local_path(self, path: str) -> Path:
        return self._p(path)

    def list_uploads(self, prefix: str = "") -> list[Upload]:
        return []  # a local write is never left half-way as a separate upload

    def upload_bytes(self, upload: Upload) -> int:
        return 0

    def abort_upload(self, upload: Upload) -> None:
        pass


class S3Objects:
    """An ``s3://bucket/prefix`` through a boto3 client (built by dagster-aws's ``S3Resource``)."""

    def __init__(self, root: str, client: Any):
        if not root.startswith("s3://"):
            raise ValueError(f"an S3 root starts with s3://, got {root!r}")
        self.root = root
        bucket, _, prefix = root[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"{root!r} names no bucket; use s3://bucket/prefix")
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client

    def _k(self, path: str) -> str:
        return _join(self.prefix, path)

    def list(self, prefix: str = "", recursive: bool = True) -> list[ObjectInfo]:
        full = self._k(prefix)
        full = full + "/" if full else ""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        if not recursive:
            kwargs["Delimiter"] = "/"
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(self.prefix) + 1:] if self.prefix else obj["Key"]
                out.append(ObjectInfo(rel, obj["Size"], obj["LastModified"].timestamp(), obj.get("ETag", "").strip('"')))
        return sorted(out, key=lambda o: o.path)

    def read_bytes(self, path: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._k(path))["Body"].read()

    def open(self, path: str) -> BinaryIO:
        """The object's body as a stream (botocore's StreamingBody: ``read(n)``, ``close``), for reading in chunks."""
        return self.client.get_object(Bucket=self.bucket, Key=self._k(path))["Body"]

    def write_bytes(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(path), Body=data)  # a PUT is atomic in S3

    def upload(self, local: Path, path: str) -> None:
        self.client.upload_file(str(local), self.bucket, self._k(path))

    def download(self, path: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._k(path), str(local))

    def exists(self, path: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(path))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete_prefix(self, prefix: str) -> None:
        keys = [{"Key": self._k(o.path)} for o in self.list(prefix)]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000]})

    def delete(self, path: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(path))  # no error when absent

    def copy(self, src: str, dst: str) -> None:
        """Server-side: the bytes never pass through this machine (``copy`` is boto3's managed, multipart copy)."""
        self.client.copy({"Bucket": self.bucket, "Key": self._k(src)}, self.bucket, self._k(dst))

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key

    def list_uploads(self, prefix: str = "") -> list[Upload]:
        full = self._k(prefix)
        out = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full + "/" if full else ""):
            out += [Upload(self._rel(u["Key"]), u["UploadId"], u["Initiated"].timestamp()) for u in page.get("Uploads", [])]
        return sorted(out, key=lambda u: (u.path, u.initiated))

    def upload_bytes(self, upload: Upload) -> int:
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=self._k(upload.path), UploadId=upload.upload_id)
        return sum(part["Size"] for page in pages for part in page.get("Parts", []))

    def abort_upload(self, upload: Upload) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._k(upload.path), UploadId=upload.upload_id)


def open_objects(root: str, s3_client_factory: Any = None) -> Objects:
    if root.startswith("s3://"):
        if s3_client_factory is None:
            raise ValueError(f"{root} is an S3 location but no S3 client is configured")
        return S3Objects(root, s3_client_factory())
    return LocalObjects(root)


def put_if(objects: S3Objects, path: str, data: bytes, etag: str | None) -> str | None:
    """Write ``path`` only if it is absent (``etag`` None) or still the version ``etag``: S3's conditional PUT. Returns
    the new entity tag, or None when the condition failed (another writer got there first)."""
    from botocore.exceptions import ClientError

    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": f'"{etag.strip(chr(34))}"'}
    try:
        reply = objects.client.put_object(Bucket=objects.bucket, Key=objects._k(path), Body=data, **condition)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return None
        raise
    return reply["ETag"].strip('"')
