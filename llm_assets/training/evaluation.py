"""Stage ``evaluation``: the base, SFT, RLHF policy and released (quantized) models side by side through
lm-evaluation-harness, on tasks generated from the held-out splits plus the recipe's standard tasks.

Setup: tasks written into the output directory (``llm_assets.evaluation.tasks``), standard tasks checked offline before
any model is loaded. Evaluate: each distinct model version once (a stage the recipe leaves out has its parent's
version), loaded as its stage left it, on the stage's device. Save: ``results.json`` (lm-eval's results and samples per
role) beside the task YAMLs and data files. Report: the metrics contract the evaluation asset and its gates read.
"""

from __future__ import annotations

import json
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from llm_assets.evaluation import harness
from llm_assets.evaluation.tasks import generate_tasks
from llm_assets.training.common import hardware_for, model_kwargs
from llm_assets.training.models import load_causal_lm, load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec

ROLES = ("base", "sft", "policy", "released")  # the order of the results table's columns
RESULTS_FILE = "results.json"


def is_quantized(directory: str | Path) -> bool:
    """A bitsandbytes checkpoint; a LoRA adapter (no config.json: its base has one) never is."""
    config = Path(directory) / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


def load_for_evaluation(directory: str, hw) -> Any:
    """The model as its stage left it, on the stage's device: a bitsandbytes checkpoint loads quantized (its own
    config carries the quantization), placed as the quantize stage places it."""
    placed = model_kwargs(hw)
    return load_causal_lm(directory, **({"device_map": "cpu", **placed} if is_quantized(directory) else placed))


def distinct_models(spec: StageSpec) -> dict[str, list[str]]:
    """version -> the roles that are that version (``options.models``; without it, each directory is its own)."""
    models = spec.options.get("models") or {}
    out: dict[str, list[str]] = {}
    for role in (r for r in ROLES if r in spec.inputs):
        out.setdefault(models.get(role, {}).get("version") or spec.inputs[role], []).append(role)
    return out


def drop_names(spec: StageSpec) -> dict[str, list[str]]:
    """kind -> the drops' names, in the order of ``spec.datasets`` (a --spec run without them: the files' names)."""
    given = spec.options.get("drops") or {}
    return {kind: given.get(kind) or [Path(p).stem for p in paths] for kind, paths in spec.datasets.items()}


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    ev = recipe.evaluation
    harness.offline()
    hw = hardware_for(recipe)
    out = Path(spec.output_dir)
    groups = distinct_models(spec)
    tok = load_tokenizer(spec.inputs[groups[next(iter(groups))][0]])
    tasks = generate_tasks(tok, spec.datasets, drop_names(spec), recipe.data.chat_template, ev.max_new_tokens, ev.limit, out)
    manager = harness.task_manager(out, ev.tasks)
    tasks.update(harness.check_standard_tasks(manager, ev.tasks))  # before any model is loaded: a missing dataset fails now
    if not tasks:
        raise ValueError(f"recipe '{recipe.name}': nothing to evaluate: no held-out rows in the validated drops and no "
                         "evaluation.tasks")
    reporter.log(f"[evaluation] {len(tasks)} tasks ({', '.join(tasks)}), {len(groups)} distinct models on {hw.why}")
    raw: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    for version, roles in groups.items():
        model = load_for_evaluation(spec.inputs[roles[0]], hw)
        figures = harness.evaluate(model, load_tokenizer(spec.inputs[roles[0]]), manager, [*tasks], out, ev.batch_size, ev.limit)
        del model
        summary = harness.summary(figures, tasks)
        for role in roles:
            raw[role] = figures
            for task, figure in summary.items():
                results.setdefault(task, {})[role] = figure
        reporter.log(f"[evaluation] {'/'.join(roles)} ({str(version)[:12]}): " +
                     ", ".join(f"{t} {f['metric']}={f['value']:.4g}" for t, f in summary.items()))
    (out / RESULTS_FILE).write_text(json.dumps(raw, indent=1, sort_keys=True, default=str))
    return {"models": spec.options.get("models") or {role: {"key": "", "version": path} for role, path in spec.inputs.items()},
            "results": results, "tasks": {name: info.as_dict() for name, info in tasks.items()},
            "lm_eval_version": package_version("lm_eval"), "hardware": hw.as_dict()}
