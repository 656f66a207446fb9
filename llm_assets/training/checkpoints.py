"""Trainer checkpoints kept in the artifact store, so a worker on another node resumes where a killed one stopped.

Each ``save_steps`` checkpoint is committed as a version of the run's checkpoint key (its manifest is written
last, so a half-uploaded checkpoint is never seen), the older ones are deleted once a newer one is complete, and
the key is removed when the stage's output is committed. Local disk is only the Trainer's scratch.

One worker at a time trains a fingerprint (``checkpoint_lock``): two would write the same checkpoint key, and one
would resume from the other's half-way state. On a local store the lock is a file lock the kernel drops when its
holder dies; on S3 it is a lease object (owner, expiry) renewed while its holder lives and taken over once expired.
Checkpoints keep the Trainer's optimizer, scheduler and RNG states (``.pt``/``.pth``, which the Trainer reads back only
with ``torch.load(weights_only=True)``: tensors and plain containers, no code); its pickled arguments
(``training_args.bin``, never read back) are left out.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from llm_assets.artifacts import Manifest, Store, open_store
from llm_assets.objects import put_if
from llm_assets.paths import worker_cache_dir

KEEP = 2  # complete checkpoints kept in the store (the Trainer's save_total_limit)
RUN_FILES = ("training_args.bin",)  # the Trainer's pickled arguments: a record of the run, never read on resume nor part of a model
LEASE_SECONDS = 60.0  # an S3 lease whose holder died counts this long after its last renewal
WAIT_ENV = "LLM_ASSETS_CHECKPOINT_LOCK_WAIT_S"  # how long a worker waits for another holding its fingerprint
WAIT_SECONDS = LEASE_SECONDS + 30  # default: a killed holder's lease runs out within it
POLL_SECONDS = 0.5
_held: dict[str, "_Lease"] = {}  # this process's S3 leases, by checkpoint key


class CheckpointBusy(RuntimeError):
    pass


class StoreCheckpoints:
    def __init__(self, store: Store, key: str):
        self.store, self.key = store, key

    @classmethod
    def from_settings(cls, settings: dict | None) -> "StoreCheckpoints | None":
        """From a StageSpec's ``checkpoint_store`` ({root, s3_endpoint, region, key}); None when it has none."""
        if not settings:
            return None
        store = open_store(settings["root"], settings.get("s3_endpoint"), settings.get("region"), worker_cache_dir())
        return cls(store, settings["key"])

    def complete(self) -> list[Manifest]:
        """Committed checkpoints, oldest step first."""
        return sorted(self.store.versions(self.key), key=lambda m: m.metadata.get("step", 0))

    def newest(self) -> tuple[int, str] | None:
        """(step, local directory) of the newest complete checkpoint, fetched and verified; None when there is none."""
        done = self.complete()
        if not done:
            return None
        art = self.store.get(self.key, done[-1].version)
        return done[-1].metadata["step"], str(art.path)

    def upload(self, directory: Path, step: int) -> Manifest:
        lease = _held.get(self.key)
        if lease is not None and lease.lost:
            raise CheckpointBusy(f"{self.store.root}/{self.key}: this worker lost its lease on the checkpoints (not renewed "
                                 f"within {lease.lease_s:g} s; another worker may have taken over); stopping rather than "
                                 "writing checkpoints beside it")
        for name in RUN_FILES:
            (directory / name).unlink(missing_ok=True)
        manifest = self.store.commit(self.key, directory, {"step": step}, latest=False)
        for old in self.complete()[:-KEEP]:
            self.store.delete_version(self.key, old.version)
        return manifest

    def clear(self) -> None:
        self.store.delete_key(self.key)

    def callback(self, reporter) -> TrainerCallback:
        return _Upload(self, reporter)


class _Upload(TrainerCallback):
    """After every save: rank 0 commits the checkpoint once every rank has written its part."""

    def __init__(self, mirror: StoreCheckpoints, reporter):
        self.mirror, self.reporter = mirror, reporter

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if int(os.environ.get("RANK", "0")) == 0:
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            manifest = self.mirror.upload(directory, state.global_step)
            self.reporter.log(f"checkpoint at step {state.global_step} stored ({manifest.total_bytes:,} bytes, "
                              f"{self.mirror.store.root}/{self.mirror.key})")
        _barrier()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def checkpoint_lock(store: Store, key: str, wait_s: float | None = None, lease_s: float = LEASE_SECONDS) -> Iterator[None]:
    """Hold ``key`` (a fingerprint's checkpoints) for this worker: waits up to ``wait_s`` (``LLM_ASSETS_CHECKPOINT_LOCK_WAIT_S``,
    default WAIT_SECONDS) for another holder, then fails with a line that names it."""
    wait_s = float(os.environ.get(WAIT_ENV, WAIT_SECONDS)) if wait_s is None else wait_s
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    path = f"locks/{key}.lock"
    local = getattr(store.objects, "local_path", None)
    if local is not None:
        fd = _lock_file(local(path), owner, wait_s, f"{store.root}/{key}")
        try:
            yield
        finally:
            os.unlink(local(path))  # while still holding it: a waiter that opened this file sees it is gone and retries
            os.close(fd)
        return
    lease = _Lease(store.objects, path, owner, lease_s)
    lease.acquire(wait_s, f"{store.root}/{key}")
    _held[key] = lease
    try:
        yield
    finally:
        _held.pop(key, None)
        lease.release()


def _lock_file(path: Path, owner: dict, wait_s: float, where: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            if time.monotonic() >= deadline:
                raise CheckpointBusy(_busy(where, holder, wait_s)) from None
            time.sleep(POLL_SECONDS)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its previous holder removed it as we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        return fd


class _Lease:
    """An S3 lease: created only where there is none (If-None-Match), renewed and taken over only from the version
    read (If-Match), so two workers never both believe they hold it."""

    def __init__(self, objects, path: str, owner: dict, lease_s: float):
        self.objects, self.path, self.owner, self.lease_s = objects, path, owner, lease_s
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True)

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "expires": time.time() + self.lease_s}).encode()

    def acquire(self, wait_s: float, where: str) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            self.etag = put_if(self.objects, self.path, self._body(), None)
            if self.etag is None:
                current = self._current()
                if current is not None and current[1].get("expires", 0) < time.time():  # its holder stopped renewing
                    self.etag = put_if(self.objects, self.path, self._body(), current[0])
            if self.etag is not None:
                self._renewer.start()
                return
            if time.monotonic() >= deadline:
                raise CheckpointBusy(_busy(where, current[1] if current else {}, wait_s))
            time.sleep(POLL_SECONDS)

    def _current(self) -> tuple[str, dict] | None:
        folder, _, name = self.path.rpartition("/")
        found = [o for o in self.objects.list(folder, recursive=False) if o.path == self.path]
        if not found:
            return None
        try:
            return found[0].etag, _parse(self.objects.read_bytes(self.path))
        except Exception:  # deleted in between: look again
            return None

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            etag = put_if(self.objects, self.path, self._body(), self.etag)
            if etag is None:
                self.lost = True
                return
            self.etag = etag

    def release(self) -> None:
        self._stop.set()
        self._renewer.join()
        if not self.lost:
            self.objects.delete(self.path)


def _parse(data: bytes) -> dict:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def _busy(where: str, holder: dict, wait_s: float) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if "since" in holder:
        who += f", since {time.strftime('%H:%M:%S UTC', time.gmtime(holder['since']))}"
    return (f"{where}: another worker ({who}) is training this same fingerprint and holds its checkpoints; waited "
            f"{wait_s:g} s. Let it finish or stop it, then materialize again (a killed worker's hold ends with it, "
            f"or on S3 {LEASE_SECONDS:g} s after its last renewal)")
