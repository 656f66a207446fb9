"""The release gates on an evaluation's metrics: the released model against its base, against the unquantized policy,
and against the version published now. Each compares one figure per task in the task's own direction
(``higher_is_better``) with an absolute tolerance from the recipe, and says in one line what failed and what to change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_assets.recipes import Recipe

GATES = ("released_not_worse_than_base", "quantized_within_bound", "no_regression_vs_published")


@dataclass(frozen=True)
class Outcome:
    passed: bool
    reason: str  # one line: what failed (task, models, values, recipe key) or why it passed
    compared: dict[str, Any] = field(default_factory=dict)  # task -> {released, reference, worse_by}: what was compared


def shortfall(value: float, reference: float, higher_is_better: bool) -> float:
    """How much worse ``value`` is than ``reference`` (negative: better)."""
    return reference - value if higher_is_better else value - reference


def compare(metrics: dict[str, Any], reference: dict[str, dict[str, Any]], label: str, tolerance: float, key: str,
            advice: str, by_task: dict[str, float] | None = None) -> Outcome:
    """The released model's figure on every task ``reference`` (task -> figure) has, within ``tolerance``, or within
    ``by_task``'s value for the task's name or its data kind (``evaluation.tolerance_by_task``)."""
    compared, failures = {}, []
    for task, figure in sorted(reference.items()):
        released = metrics["results"].get(task, {}).get("released")
        if released is None:
            continue
        info = metrics["tasks"][task]
        allowed, allowed_key = task_tolerance(task, info, tolerance, key, by_task or {})
        worse = shortfall(released["value"], figure["value"], info["higher_is_better"])
        compared[task] = {"released": released["value"], "reference": figure["value"], "worse_by": worse, "tolerance": allowed}
        if worse > allowed + 1e-12:
            failures.append(f"{task}: released {info['metric']} {released['value']:.4g} vs {label} {figure['value']:.4g} "
                            f"({'higher' if info['higher_is_better'] else 'lower'} is better) is {worse:.4g} worse, "
                            f"beyond {allowed_key} {allowed:g}")
    if failures:
        return Outcome(False, f"{'; '.join(failures)}: {advice}", compared)
    if not compared:
        return Outcome(True, f"no task was evaluated on both the released model and {label}", compared)
    worst = max(compared, key=lambda t: compared[t]["worse_by"])
    return Outcome(True, f"{len(compared)} tasks within {key} {tolerance:g} of {label} (closest: {worst}, "
                         f"{compared[worst]['worse_by']:+.4g})", compared)


def task_tolerance(task: str, info: dict[str, Any], tolerance: float, key: str, by_task: dict[str, float]) -> tuple[float, str]:
    """(tolerance, the recipe key it comes from) for one task: its own entry, else its data kind's, else the default."""
    kind = str(info.get("source", "")).partition("/")[0]
    for name in (task, kind):
        if name in by_task:
            return by_task[name], f"evaluation.tolerance_by_task.{name}"
    return tolerance, key


def role_figures(metrics: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    return {task: by_role[role] for task, by_role in metrics["results"].items() if role in by_role}


def released_not_worse_than_base(metrics: dict[str, Any], recipe: Recipe) -> Outcome:
    return compare(metrics, role_figures(metrics, "base"), "base", recipe.evaluation.tolerance, "evaluation.tolerance",
                   "check the training data and steps of the stages that made it worse, or raise the tolerance",
                   recipe.evaluation.tolerance_by_task)


def quantized_within_bound(metrics: dict[str, Any], recipe: Recipe) -> Outcome:
    models = metrics.get("models", {})
    if recipe.quantization is None or models.get("released", {}).get("version") == models.get("policy", {}).get("version"):
        return Outcome(True, f"recipe '{recipe.name}' has no quantization group: the released model is the policy itself")
    return compare(metrics, role_figures(metrics, "policy"), "policy", recipe.evaluation.quantized_tolerance,
                   "evaluation.quantized_tolerance", "use quantization.bits 8, or raise evaluation.quantized_tolerance")


def no_regression_vs_published(metrics: dict[str, Any], recipe: Recipe, published: dict[str, Any] | None) -> Outcome:
    """``published``: the record of the version published now (its ``results`` are its evaluation's), or None."""
    if not published or not published.get("results"):
        return Outcome(True, "nothing published yet")
    reference = {task: by_role["released"] for task, by_role in published["results"].items() if "released" in by_role}
    version = str(published.get("version", ""))[:12]
    return compare(metrics, reference, f"published{' ' + version if version else ''}", recipe.evaluation.published_tolerance,
                   "evaluation.published_tolerance", "do not publish this version, or raise evaluation.published_tolerance")
