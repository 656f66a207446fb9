"""Which landed files become new drops: the landing sensor's decisions, free of Dagster.

Rules (each tested):
- A file is a drop once, whatever the number of ticks or daemon restarts: the cursor remembers
  every file's signature (size, mtime, etag) and content hash, and known partitions are never
  requested again.
- A file still being written is not picked up: it must be unchanged for ``settle_seconds``.
- A file re-landed with the same content (same name, or another name) is not a new drop.
- A file whose content changed under the same name becomes a new drop ``<key>@<sha8>``: drops
  are immutable, so the old drop keeps its snapshot and the new content gets its own partition.
  That holds when the change is seen while the file settles: a pending entry keeps the hash of
  the last drop (to name the next one) but is hashed again once the file has settled.
- A refused name is reported once while it stays in the landing zone, not on every tick: the
  cursor keeps the refused names of each kind (``REFUSED``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from llm_assets.resources.landing import SIDECAR_SUFFIX, VERSION_SEPARATOR, LandedFile, drop_key, sidecar_path

REFUSED = "refused"  # cursor key of {kind: [names reported as refused]}; no kind has this name


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
    warnings: list[str] = field(default_factory=list)


def versioned_key(name: str, sha256: str) -> str:
    return f"{drop_key(name)}{VERSION_SEPARATOR}{sha256[:8]}"


def signature(f: LandedFile) -> str:
    return f"{f.size}:{f.mtime:.6f}:{f.etag}"


def load_cursor(text: str | None) -> dict[str, dict[str, dict]]:
    return json.loads(text) if text else {}


def plan_drops(kind: str, files: list[LandedFile], cursor: dict[str, dict[str, dict]], known: set[str], now: float,
               settle_seconds: float, sha256: Callable[[LandedFile], str], refused: list[tuple[str, str]] = ()) -> Plan:
    """``sha256`` hashes a landed file's content (``Landing.sha256`` streams it in chunks)."""
    seen = {name: dict(entry) for name, entry in cursor.get(kind, {}).items()}
    shas = {e["sha256"]: e["key"] for e in seen.values() if e.get("sha256")}
    plan = Plan(cursor={**cursor, kind: seen})
    report_refusals(kind, refused, plan)
    for f in files:
        entry = seen.get(f.name)
        sig = signature(f)
        if entry and entry["sig"] == sig and entry.get("sha256") and not entry.get("pending"):
            continue  # nothing changed since it was handled
        if now - f.mtime < settle_seconds:
            seen[f.name] = {**(entry or {}), "sig": sig, "pending": True}
            plan.notes.append(f"{kind}/{f.name}: still changing, waiting {settle_seconds:g} s for it to settle")
            continue
        sha = sha256(f)
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
        if sidecar_path(f) != f.path + SIDECAR_SUFFIX:
            plan.notes.append(f"{kind}/{f.name}: the name is too long for a '{SIDECAR_SUFFIX}' beside it; "
                              f"a mapping override for drop {key!r} goes in {sidecar_path(f)}")
        plan.new.append(NewDrop(kind, key, f.name, sha))
    return plan


def report_refusals(kind: str, refused: list[tuple[str, str]], plan: Plan) -> None:
    """Warn about each refused name once; a name that leaves the landing zone is forgotten, so it warns again if it returns."""
    reported = {**plan.cursor.get(REFUSED, {})}
    before = set(reported.get(kind, []))
    plan.warnings += [f"landing {kind}/: ignored {why}" for name, why in refused if name not in before]
    reported[kind] = sorted(name for name, _ in refused)
    plan.cursor[REFUSED] = reported
