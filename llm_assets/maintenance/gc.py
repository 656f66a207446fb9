"""The store's garbage collector: deletes what nobody can read or resume from any more, once it is older than a threshold.

Kept, whatever its age:
- the LATEST version of every key;
- every version a live record names: the current record of each key (its version, the parent versions it was trained
  from, the dataset versions it read, the model versions an evaluation measured), every record under
  ``models/published/`` and every approval under ``approvals/`` (any 64-hex version id in them counts);
- the base that a kept adapter names (``llm-assets://<key>@<version>`` in its adapter_config.json);
- the checkpoint keys of recipes with a run in progress (``in_flight``, from the Dagster instance).

Garbage, once nothing has written it for ``older_than`` (a commit or run still under way is younger than that):
- ``version``: a committed version nothing above references (an older record may name it: the next materialization of
  that identity then trains again instead of reusing it);
- ``uncommitted``: files of a version whose manifest was never written (a commit killed half-way);
- ``upload``: an S3 multipart upload never completed nor aborted (its parts are stored and billed, but no object);
- ``checkpoint``: a checkpoint key nobody writes any more (its training committed, or was killed and not resumed);
- ``result``: a worker's result or error JSON, read once by the step that launched it;
- ``work``: the local store's ``.staging/`` and temporary files, the download cache's ``.partial/`` and copies of
  versions gone from the store, and workers' scratch directories (``llm-assets-<stage>-*``) of killed workers.
With ``verify``, every kept version is hashed too, and a ``corrupt`` one is deleted so it is materialized again.
The GC only deletes what it recognises: any other object in the store is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llm_assets.artifacts import LATEST, MANIFEST, CURRENT_RECORD, RECORDS, Store
from llm_assets.objects import LocalObjects, ObjectInfo

EVERY_RECIPE = "*"  # in ``in_flight``: a run of unknown partitions is in progress, keep every checkpoint
SCRATCH_PREFIX = "llm-assets-"  # worker scratch and launcher work directories (tempfile.mkdtemp prefixes)
VERSION_FILE = re.compile(r"^(?P<key>.+?)/versions/(?P<version>[0-9a-f]{64})/")
VERSION_ID = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
STORE_REF = re.compile(rb"llm-assets://([^\"'@\s]+)@([0-9a-f]{64})")
RESULT = re.compile(r"^.+/results/[^/]+\.json$")
PUBLISHED, APPROVALS, CHECKPOINTS = "models/published/", "approvals/", "checkpoints/"


@dataclass(frozen=True)
class Garbage:
    kind: str  # version | uncommitted | upload | checkpoint | result | work | corrupt
    where: str  # a path in the store, or a local directory
    bytes: int
    why: str
    delete: Callable[[], None] = field(repr=False, compare=False)


@dataclass
class Report:
    garbage: list[Garbage]
    dry_run: bool
    older_than_hours: float
    kept_versions: int
    errors: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(g.bytes for g in self.garbage)

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        return [f"{verb} {g.kind:<11} {g.bytes:>15,} B  {g.where}  ({g.why})" for g in self.garbage] + self.errors

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "older_than_hours": self.older_than_hours, "bytes": self.total_bytes,
                "kept_versions": self.kept_versions, "errors": self.errors,
                "garbage": [{"kind": g.kind, "where": g.where, "bytes": g.bytes, "why": g.why} for g in self.garbage]}

    def summary(self) -> str:
        counts = defaultdict(int)
        for g in self.garbage:
            counts[g.kind] += 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"
        verb = "would free" if self.dry_run else "freed"
        return (f"{kinds} older than {self.older_than_hours:g} h: {verb} {self.total_bytes:,} bytes; "
                f"{self.kept_versions} referenced versions kept" + (f"; {len(self.errors)} errors" if self.errors else ""))


def collect_garbage(store: Store, older_than_hours: float = 24.0, dry_run: bool = False, in_flight: set[str] = frozenset(),
                    scratch: Path | None = None, verify: bool = False, now: float | None = None) -> Report:
    """Find the garbage (see the module docstring) and, unless ``dry_run``, delete it; ``scratch``: where this node's
    workers make their scratch directories (None: none is looked at)."""
    cutoff = (now or time.time()) - older_than_hours * 3600
    listing = store.objects.list()
    versions: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
    others: dict[str, ObjectInfo] = {}
    for o in listing:
        if m := VERSION_FILE.match(o.path):
            versions[(m["key"], m["version"])].append(o)
        else:
            others[o.path] = o
    kept = referenced_versions(store, versions, others)
    garbage = [*old_versions(store, versions, kept, cutoff), *old_checkpoints(store, versions, others, in_flight, cutoff),
               *old_uploads(store, cutoff), *old_work_files(store, others, cutoff)]
    gone = {g.where for g in garbage}
    if verify:
        garbage += corrupt_versions(store, [kv for kv in kept if kv in versions and not kv[0].startswith(CHECKPOINTS)])
    if not isinstance(store.objects, LocalObjects):
        alive = {f"{k}/versions/{v}" for k, v in versions if k not in gone and f"{k}/versions/{v}" not in gone}
        garbage += old_cache_entries(store.cache_dir, alive, cutoff)
    if scratch is not None:
        garbage += old_scratch(scratch, cutoff)
    report = Report(garbage, dry_run, older_than_hours, len([kv for kv in kept if kv in versions]))
    if not dry_run:
        for g in garbage:
            try:
                g.delete()
            except Exception as e:  # one failure must not keep the rest: it is reported and the next run tries again
                report.errors.append(f"could not delete {g.where}: {type(e).__name__}: {e}")
    return report


def referenced_versions(store: Store, versions: dict[tuple[str, str], list[ObjectInfo]],
                        others: dict[str, ObjectInfo]) -> set[tuple[str, str]]:
    """(key, version) pairs that something current reads or publishes."""
    read = store.objects.read_bytes
    latest = {p[:-len(LATEST) - 1]: read(p).decode().strip() for p in others if p.endswith(f"/{LATEST}")}
    live_records = [p for p in others if p.endswith(".json") and (p.startswith(PUBLISHED) or p.startswith(APPROVALS))]
    for p in others:
        if p.endswith(f"/{CURRENT_RECORD}"):
            key = p[:-len(CURRENT_RECORD) - 1]
            live_records.append(f"{key}/{RECORDS}/{read(p).decode().strip()}.json")
    named = set()
    for p in live_records:
        if p in others:
            named |= {m.decode() for m in VERSION_ID.findall(read(p))}
    kept = {(k, v) for k, v in versions if latest.get(k) == v or v in named}
    queue = list(kept)
    while queue:  # an adapter's base is read whenever the adapter is
        key, version = queue.pop()
        config = f"{key}/versions/{version}/adapter_config.json"
        if any(o.path == config for o in versions.get((key, version), [])):
            for base in STORE_REF.findall(read(config)):
                ref = (base[0].decode(), base[1].decode())
                if ref not in kept:
                    kept.add(ref)
                    queue.append(ref)
    return kept


def old_versions(store: Store, versions: dict[tuple[str, str], list[ObjectInfo]], kept: set[tuple[str, str]],
                 cutoff: float) -> list[Garbage]:
    out = []
    for (key, version), objs in sorted(versions.items()):
        if key.startswith(CHECKPOINTS) or max(o.mtime for o in objs) >= cutoff:
            continue
        where, size = f"{key}/versions/{version}", sum(o.size for o in objs)
        delete = _deleter(store.delete_version, key, version)
        if not any(o.path == f"{where}/{MANIFEST}" for o in objs):
            out.append(Garbage("uncommitted", where, size, "its manifest was never written: a commit that did not finish", delete))
        elif (key, version) not in kept:
            out.append(Garbage("version", where, size, "not LATEST, and no current, published or approval record names it", delete))
    return out


def old_checkpoints(store: Store, versions: dict[tuple[str, str], list[ObjectInfo]], others: dict[str, ObjectInfo],
                    in_flight: set[str], cutoff: float) -> list[Garbage]:
    """Checkpoint keys (``checkpoints/<output key>/<fingerprint>``) nobody has written to since the cutoff."""
    keys: dict[str, list[ObjectInfo]] = defaultdict(list)
    for (key, _), objs in versions.items():
        if key.startswith(CHECKPOINTS):
            keys[key] += objs
    for path, o in others.items():  # a lock or lease beside the versions belongs to its key
        owner = next((k for k in keys if path.startswith(f"{k}/")), None)
        if owner:
            keys[owner].append(o)
    out = []
    for key, objs in sorted(keys.items()):
        output_key, _, fingerprint = key[len(CHECKPOINTS):].rpartition("/")
        recipe = output_key.rsplit("/", 1)[-1]
        if EVERY_RECIPE in in_flight or recipe in in_flight or max(o.mtime for o in objs) >= cutoff:
            continue
        committed = f"{output_key}/results/{fingerprint}.json" in others
        why = "its training committed its output" if committed else "not written to since; its run is gone (a new one starts over)"
        out.append(Garbage("checkpoint", key, sum(o.size for o in objs), why, _deleter(store.delete_key, key)))
    return out


def old_uploads(store: Store, cutoff: float) -> list[Garbage]:
    objects = store.objects
    return [Garbage("upload", f"{u.path} (upload {u.upload_id[:16]})", objects.upload_bytes(u),
                    "a multipart upload never completed nor aborted", _deleter(objects.abort_upload, u))
            for u in objects.list_uploads() if u.initiated < cutoff]


def old_work_files(store: Store, others: dict[str, ObjectInfo], cutoff: float) -> list[Garbage]:
    """Worker results, and a local store's staging directories and temporary files of writers that were killed."""
    out, staging = [], defaultdict(list)
    for path, o in sorted(others.items()):
        if path.startswith(".staging/"):
            staging[path.split("/")[1]].append(o)
        elif o.mtime < cutoff and RESULT.match(path):
            out.append(Garbage("result", path, o.size, "a worker's result, already recorded by its step",
                               _deleter(store.objects.delete, path)))
        elif o.mtime < cutoff and path.rsplit("/", 1)[-1].startswith(".") and path.endswith(".tmp"):
            out.append(Garbage("work", path, o.size, "a write that never finished", _deleter(store.objects.delete, path)))
    for name, objs in sorted(staging.items()):
        if max(o.mtime for o in objs) < cutoff:
            out.append(Garbage("work", f".staging/{name}", sum(o.size for o in objs), "a local commit that never finished",
                               _deleter(store.objects.delete_prefix, f".staging/{name}")))
    return out


def corrupt_versions(store: Store, candidates: list[tuple[str, str]]) -> list[Garbage]:
    out = []
    for key, version in sorted(candidates):
        if bad := store.verify(key, version):
            size = store.manifest(key, version).total_bytes
            out.append(Garbage("corrupt", f"{key}/versions/{version}", size, f"{bad[0][0]}: {bad[0][1]}; materialize it again",
                               _deleter(store.delete_version, key, version)))
    return out


def old_cache_entries(cache: Path, alive: set[str], cutoff: float) -> list[Garbage]:
    """Download-cache copies of versions no longer in the store, and downloads that never finished."""
    if not cache.is_dir():
        return []
    out = []
    for manifest in sorted(cache.rglob(MANIFEST)):
        entry = manifest.parent
        rel = entry.relative_to(cache).as_posix()
        if not rel.startswith(".") and VERSION_FILE.match(rel + "/") and rel not in alive:
            out.append(Garbage("work", str(entry), _du(entry), "a cached copy of a version gone from the store", _rmtree(entry)))
    for tmp in sorted([*cache.glob(".partial/*"), *cache.glob(".verify-*")]):
        if _newest(tmp) < cutoff:
            out.append(Garbage("work", str(tmp), _du(tmp), "a download that never finished", _rmtree(tmp)))
    return out


def scratch_root() -> Path:
    """Where workers on this node make their scratch directories (``worker.run_order``, the launcher's work directory)."""
    return Path(os.environ.get("LLM_ASSETS_SCRATCH") or tempfile.gettempdir())


def old_scratch(scratch: Path, cutoff: float) -> list[Garbage]:
    """Scratch directories of workers (and launchers) that were killed before they could remove them."""
    if not scratch.is_dir():
        return []
    return [Garbage("work", str(d), _du(d), "scratch of a worker that did not finish", _rmtree(d))
            for d in sorted(scratch.glob(f"{SCRATCH_PREFIX}*")) if d.is_dir() and _newest(d) < cutoff]


def _deleter(fn: Callable, *args) -> Callable[[], None]:
    return lambda: fn(*args)


def _rmtree(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path)


def _walk(path: Path):
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                yield (Path(root) / name).lstat()
            except FileNotFoundError:
                continue


def _newest(path: Path) -> float:
    """The last time anything under ``path`` was written."""
    return max([path.lstat().st_mtime, *(st.st_mtime for st in _walk(path))])


def _du(path: Path) -> int:
    return sum(st.st_size for st in _walk(path) if stat.S_ISREG(st.st_mode))
