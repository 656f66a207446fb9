"""The evaluation as one Markdown table: a row per task, a column per model, each figure with lm-eval's standard error."""

from __future__ import annotations

from typing import Any

from llm_assets.markdown import markdown_table

ROLES = ("base", "sft", "policy", "released")


def figure(f: dict[str, Any] | None) -> str:
    if f is None:
        return ""
    return f"{f['value']:.4g} ± {f['stderr']:.2g}" if f.get("stderr") is not None else f"{f['value']:.4g}"


def results_markdown(metrics: dict[str, Any]) -> str:
    """Task × model; a model that is another's version (a stage the recipe leaves out) is named under the table."""
    models = metrics.get("models", {})
    roles = [r for r in ROLES if r in models]
    rows = [[task, f"{info['metric']} ({'↑' if info['higher_is_better'] else '↓'})", info["source"],
             *(figure(metrics["results"].get(task, {}).get(r)) for r in roles)]
            for task, info in metrics.get("tasks", {}).items()]
    table = markdown_table(["task", "metric", "rows from", *roles], rows)
    seen: dict[str, str] = {}
    names = []
    for r in roles:
        version = str(models[r].get("version", ""))
        names.append(f"{r} {version[:12]}" + (f" (= {seen[version]})" if version in seen else ""))
        seen.setdefault(version, r)
    n = {task: max((f.get("n", 0) for f in by_role.values()), default=0) for task, by_role in metrics.get("results", {}).items()}
    return (f"{table}\n\nModels: {', '.join(names)}. Rows per task: {', '.join(f'{t} {k}' for t, k in n.items())}. "
            f"lm-evaluation-harness {metrics.get('lm_eval_version', '?')}; ± is its standard error.")
