"""The model card (README.md) written into every released model, through huggingface_hub's ``ModelCard``.

Its YAML header is what the Hub indexes: license, base model and revision, datasets (the drops trained on),
and the evaluation results as ``model-index`` (one ``EvalResult`` per task for the released model). Its text
is what a person reads before using the model: the recipe (hash and the file itself), each training stage
with its key figures, every model evaluated side by side, intended use and limitations.

Built only from the run records in the store, never from clocks or paths, so the same model, data and
recipe give the same card, byte for byte (the card is part of the released version).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from llm_assets.markdown import markdown_table
from llm_assets.recipes import BUILTIN_PREFIX, Recipe

# Figures each stage's card row shows, in reading order (those a stage's run record has).
KEY_FIGURES = ("parameters", "steps", "train_loss", "parent_eval_loss", "eval_loss", "parent_exact_match", "exact_match",
               "reward_accuracy", "mean_reward", "win_rate_vs_sft", "kl_to_sft", "algorithm", "bits", "quant_type",
               "unquantized_eval_loss", "eval_loss_delta", "size_ratio")
ROLES = ("base", "sft", "policy", "released")  # the evaluation's models, in the order the card compares them


def drops_used(stage_records: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """"kind/drop" -> dataset content version, for every drop any stage trained on."""
    out: dict[str, str] = {}
    for record in stage_records.values():
        out.update((record or {}).get("drops_used") or {})
    return dict(sorted(out.items()))


def eval_results(evaluation: dict[str, Any]) -> list[EvalResult]:
    """The released model's score on every task (model-index). Tasks are this recipe's generated held-out tasks or
    standard lm-eval ones; the dataset names the task, as lm-eval names it."""
    out = []
    for task, by_role in sorted((evaluation.get("results") or {}).items()):
        r = by_role.get("released")
        if r is None or r.get("value") is None:
            continue
        info = (evaluation.get("tasks") or {}).get(task) or {}
        out.append(EvalResult(task_type=info.get("task_type", "text-generation"), task_name=task,
                              dataset_type=info.get("dataset", task), dataset_name=info.get("dataset", task),
                              dataset_split=info.get("split"), metric_type=r["metric"], metric_name=r["metric"],
                              metric_value=r["value"]))
    return out


def build_card(recipe: Recipe, recipe_text: str, stage_records: dict[str, dict[str, Any] | None],
               evaluation: dict[str, Any], gates: dict[str, dict[str, Any]], quantized_version: str) -> ModelCard:
    """The card of ``recipe``'s released model: ``stage_records`` are each stage's current run record (stage -> record),
    ``evaluation`` the evaluation record's metrics ({"models", "results", "tasks"}) and ``gates`` its checks."""
    m, rel = recipe.model, recipe.release
    hub_base = not m.base.startswith(BUILTIN_PREFIX)
    drops = drops_used(stage_records)
    results = eval_results(evaluation)
    data = ModelCardData(
        license=rel.license, base_model=m.base if hub_base else None, datasets=list(drops) or None,
        tags=["llm-assets", f"recipe-{recipe.name}"], library_name="transformers", pipeline_tag="text-generation",
        model_name=recipe.name if results else None, eval_results=results or None,
        base_model_revision=m.revision, recipe_hash=recipe.recipe_hash,
        dataset_versions=drops or None, quantized_from=quantized_version)
    body = "\n\n".join([
        f"# {recipe.name}", recipe.description or "Fine-tuned with llm_assets.",
        "## Base model", base_text(recipe),
        "## Training data", data_text(drops),
        "## Training stages", stages_text(stage_records),
        "## Evaluation", evaluation_text(evaluation, gates),
        "## Intended use", rel.intended_use or "Not stated in the recipe (release.intended_use).",
        "## Limitations", rel.limitations or "Not stated in the recipe (release.limitations).",
        "## License", f"`{rel.license}` (release.license of the recipe).",
        "## Recipe", f"Recipe hash `{recipe.recipe_hash}`, file `configs/recipes/{recipe.name}.yaml`:",
        f"```yaml\n{recipe_text.rstrip()}\n```",
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def base_text(recipe: Recipe) -> str:
    m = recipe.model
    if m.base.startswith(BUILTIN_PREFIX):
        arch = m.architecture
        return (f"`{m.base}`: built by llm_assets from the training corpora (its own BPE tokenizer, fresh weights, seed "
                f"{m.seed}; {arch.num_layers} layers, hidden size {arch.hidden_size}, vocabulary {arch.vocab_size}).")
    return f"[`{m.base}`](https://huggingface.co/{m.base}) at revision `{m.revision}`."


def data_text(drops: dict[str, str]) -> str:
    if not drops:
        return "No drop was recorded as trained on."
    rows = [[key.partition("/")[2], key.partition("/")[0], f"`{version[:16]}`"] for key, version in drops.items()]
    return "Validated drops trained on, with their content versions:\n\n" + markdown_table(["drop", "kind", "content version"], rows)


def stages_text(stage_records: dict[str, dict[str, Any] | None]) -> str:
    rows = []
    for stage, record in stage_records.items():
        if record is None:
            continue
        if "passthrough_of" in record:
            rows.append([stage, f"`{record['version'][:16]}`", f"passes {record['passthrough_of']} through ({record.get('why', '')})"])
            continue
        metrics = record.get("metrics") or {}
        shown = [f"{k} {figure(metrics[k])}" for k in KEY_FIGURES if isinstance(metrics.get(k), (int, float, str))]
        rows.append([stage, f"`{record['version'][:16]}`", ", ".join(shown) or "-"])
    return markdown_table(["stage", "version", "key figures"], rows)


def evaluation_text(evaluation: dict[str, Any], gates: dict[str, dict[str, Any]]) -> str:
    results = evaluation.get("results") or {}
    roles = [r for r in ROLES if r in (evaluation.get("models") or {}) or any(r in v for v in results.values())]
    rows = []
    for task, by_role in sorted(results.items()):
        metric = next((r["metric"] for r in by_role.values() if r.get("metric")), "")
        rows.append([task, metric, *(score(by_role.get(role)) for role in roles)])
    table = markdown_table(["task", "metric", *roles], rows) if rows else "No evaluation results were recorded."
    checks = "\n".join(f"- {name}: {'passed' if g.get('passed') else 'FAILED'}" + (f" ({g['reason']})" if g.get("reason") else "")
                       for name, g in sorted(gates.items()))
    return ("lm-evaluation-harness on the held-out splits (value ± standard error, documents):\n\n" + table
            + ("\n\nRelease gates:\n\n" + checks if checks else ""))


def score(r: dict[str, Any] | None) -> str:
    if not r or r.get("value") is None:
        return "-"
    text = figure(r["value"])
    if r.get("stderr") is not None:
        text += f" ± {figure(r['stderr'])}"
    return text + (f" (n={r['n']})" if r.get("n") is not None else "")


def figure(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
