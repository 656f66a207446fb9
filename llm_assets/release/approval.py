"""Who approved which released version, and whether a released version may be published now.

An approval names one exact version of ``models/release/<recipe>``: approving version A never publishes B (a
retrained or re-carded model is a new version and needs its own approval). Approvals live in the store at
``approvals/<recipe>/<version>.json``, beside the models, so the sensor, the publishing step and a person
reading the store all see the same thing.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llm_assets.artifacts import Store


def release_key(recipe: str) -> str:
    return f"models/release/{recipe}"


def evaluation_key(recipe: str) -> str:
    return f"models/evaluation/{recipe}"


def published_key(recipe: str) -> str:
    return f"models/published/{recipe}"


def approval_path(recipe: str, version: str) -> str:
    return f"approvals/{recipe}/{version}.json"


def approve_command(recipe: str, version: str) -> str:
    """The exact CLI command that approves ``version`` (the UI's Launchpad takes the same config)."""
    config = {"ops": {"approve_release": {"config": {"recipe": recipe, "version": version[:12], "approver": "<your name>",
                                                     "reason": "<why this version may be published>"}}}}
    return f"dagster job launch -w workspace.yaml -j approve_release_job --config-json '{json.dumps(config)}'"


def resolve_version(st: Store, recipe: str, version: str) -> str:
    """The released version that ``version`` (whole, or an unambiguous prefix) names; ValueError saying why not."""
    key = release_key(recipe)
    known = [m.version for m in st.versions(key)]
    matches = [v for v in known if v.startswith(version.strip().lower())] if version.strip() else []
    if len(matches) == 1:
        return matches[0]
    current = st.latest_version(key)
    if not known:
        raise ValueError(f"recipe '{recipe}' has no released model ({key} in {st.root}): materialize released_model first")
    if not matches:
        raise ValueError(f"{key} has no version {version!r}; the current one is {current}")
    raise ValueError(f"version prefix {version!r} of {key} matches {len(matches)} versions: give more characters of {current}")


def record_approval(st: Store, recipe: str, version: str, approver: str, reason: str, run_id: str) -> dict[str, Any]:
    approval = {"recipe": recipe, "version": version, "approver": approver, "reason": reason,
                "approved_at": time.time(), "run_id": run_id}
    st.put_json(approval_path(recipe, version), approval)
    return approval


def approval_of(st: Store, recipe: str, version: str) -> dict[str, Any] | None:
    return st.read_json(approval_path(recipe, version))


def failed_gates(evaluation: dict[str, Any] | None) -> dict[str, str]:
    """check -> reason for each release gate the evaluation record shows failed."""
    gates = (evaluation or {}).get("gates") or {}
    return {name: g.get("reason") or "no reason given" for name, g in sorted(gates.items()) if not g.get("passed")}


def gate_refusal(recipe: str, evaluation: dict[str, Any] | None, quantized_version: str) -> str | None:
    """Why the evaluation does not allow releasing (or publishing) the model made from ``quantized_version``, or None."""
    if evaluation is None:
        return f"recipe '{recipe}' has no evaluation record ({evaluation_key(recipe)}): materialize evaluation[{recipe}] first"
    evaluated = (((evaluation.get("metrics") or {}).get("models") or {}).get("released") or {}).get("version")
    if evaluated != quantized_version:
        return (f"evaluation[{recipe}] evaluated quantized version {str(evaluated)[:12]}, not the current "
                f"{quantized_version[:12]}: materialize evaluation[{recipe}] again")
    if not evaluation.get("gates"):
        return f"evaluation[{recipe}] has no gate results yet: run its checks (materialize evaluation[{recipe}])"
    failed = failed_gates(evaluation)
    if failed:
        return f"evaluation[{recipe}] failed its gate " + "; ".join(f"{name} ({why})" for name, why in failed.items())
    return None


def publish_refusal(st: Store, recipe: str) -> tuple[str | None, str | None]:
    """(released version, why it may not be published now) for ``recipe``; the reason is None when it may be."""
    version = st.latest_version(release_key(recipe))
    if version is None:
        return None, f"recipe '{recipe}' has no released model yet: materialize released_model[{recipe}]"
    released = st.record(release_key(recipe))
    if released is None or released.get("version") != version:
        return version, f"released_model[{recipe}] has no run record for its current version {version[:12]}: materialize it again"
    why = gate_refusal(recipe, st.record(evaluation_key(recipe)), released["quantized_version"])
    if why:
        return version, why
    if approval_of(st, recipe, version) is None:
        return version, f"awaiting approval of released_model[{recipe}] version {version[:12]}: {approve_command(recipe, version)}"
    return version, None


def is_published(st: Store, recipe: str, version: str) -> bool:
    return (st.record(published_key(recipe)) or {}).get("version") == version
