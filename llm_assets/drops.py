"""Which landed files become new drops: the landing sensor's decisions, free of Dagster.

Rules (each tested):
- A file is a drop once, whatever the number of ticks or daemon restarts: the cursor remembers
  every file's signature (size, mtime, etag) and content hash, and known partitions are never
  requested again.
- A file still being written is not picked up: it must be unchanged for ``settle_seconds``.
- A file re-landed with the same content (same name, or another name) is not a new drop.
- A file whose content changed under the same name becomes a new drop ``<key>@<sha8>``: drops
  are immutable, so the old drop keeps its snapshot and the new content gets its own partition.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

from llm_assets.resources.landing import VERSION_SEPARATOR, LandedFile, drop_key


@dataclass
class NewDrop:
    kind: str
    key: str
    name: str
    sha256: str


@dataclass
class Plan:
    cursor: dict[str, dict[str, dict]]
    new: list[NewDrop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def versioned_key(name: str, sha256: str) -> str:
    return f"{drop_key(name)}{VERSION_SEPARATOR}{sha256[:8]}"


def signature(f: LandedFile) -> str:
    return f"{f.size}:{f.mtime:.6f}:{f.etag}"


def load_cursor(text: str | None) -> dict[str, dict[str, dict]]:
    return json.loads(text) if text else {}


def plan_drops(kind: str, files: list[LandedFile], cursor: dict[str, dict[str, dict]], known: set[str], now: float,
               settle_seconds: float, read: Callable[[LandedFile], bytes]) -> Plan:
    seen = {name: dict(entry) for name, entry in cursor.get(kind, {}).items()}
    shas = {e["sha256"]: e["key"] for e in seen.values() if e.get("sha256")}
    plan = Plan(cursor={**cursor, kind: seen})
    for f in files:
        entry = seen.get(f.name)
        sig = signature(f)
        if entry and entry["sig"] == sig and entry.get("sha256"):
            continue  # nothing changed since it was handled
        if now - f.mtime < settle_seconds:
            seen[f.name] = {**(entry or {}), "sig": sig, "pending": True}
            plan.notes.append(f"{kind}/{f.name}: still changing, waiting {settle_seconds:g} s for it to settle")
            continue
        sha = hashlib.sha256(read(f)).hexdigest()
        if entry and entry.get("sha256") == sha:
            seen[f.name] = {**entry, "sig": sig, "pending": False}  # re-landed, same content
            continue
        if sha in shas:
            seen[f.name] = {"sig": sig, "sha256": sha, "key": shas[sha], "pending": False}
            plan.notes.append(f"{kind}/{f.name}: same content as drop {shas[sha]!r}; not a new drop")
            continue
        key = versioned_key(f.name, sha) if entry and entry.get("sha256") else drop_key(f.name)
        seen[f.name] = {"sig": sig, "sha256": sha, "key": key, "pending": False}
        shas[sha] = key
        if key in known:
            plan.notes.append(f"{kind}/{f.name}: drop {key!r} already exists (registered before this cursor)")
            continue
        if entry and entry.get("sha256"):
            plan.notes.append(f"{kind}/{f.name}: content changed since drop {entry['key']!r}; new drop {key!r}")
        plan.new.append(NewDrop(kind, key, f.name, sha))
    return plan
