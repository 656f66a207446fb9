"""Running lm-evaluation-harness offline on a loaded model, and reading its figures back.

lm-eval scores the model object a stage loaded (``HFLM(pretrained=model)``), so the model sits on the stage's device in
its dtype (or quantized, as the quantize stage left it) and nothing is loaded twice. Nothing is downloaded: a standard
task whose data is not in the local Hugging Face cache fails with one line naming it, never a network wait.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path
from typing import Any

from llm_assets.evaluation.tasks import DATASETS_CACHE, TASKS_DIR, TaskInfo

BOOTSTRAP_ITERS = 1000  # standard errors of non-mean metrics (perplexity) by bootstrap: enough for a second digit


def offline() -> None:
    """No network for this process: ``datasets`` and ``huggingface_hub`` read their offline switch when imported (the
    worker imported them already), so their module constants are set beside the environment."""
    import datasets
    import huggingface_hub.constants

    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def task_manager(directory: Path, standard: list[str]):
    """Tasks from ``directory/tasks``; lm-eval's own catalogue (about 10 s to index) only when the recipe names some."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(directory / TASKS_DIR), include_defaults=bool(standard))


def check_standard_tasks(manager, standard: list[str]) -> dict[str, TaskInfo]:
    """Each of the recipe's standard tasks exists and its data is here; else one line saying which and what to do."""
    out = {}
    for name in standard:
        if name not in manager.all_tasks:
            raise ValueError(f"evaluation.tasks: lm-eval has no task {name!r} (lm_eval --tasks list shows them); "
                             "fix or remove it in the recipe")
        try:
            loaded = manager.load([name])
        except Exception as e:  # noqa: BLE001 - datasets raises many types for "not here"; every one means the same
            entry = manager.task_index[name]
            dataset = (entry.cfg or {}).get("dataset_path")
            raise ValueError(f"evaluation.tasks: lm-eval task {name!r} needs the dataset {dataset or '(its dataset)'}, which is "
                             f"not in the local Hugging Face datasets cache (offline: nothing is downloaded): load it once "
                             f"where the hub is reachable, or remove the task from the recipe ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
        for task_name, task in loaded["tasks"].items():
            out[task_name] = TaskInfo(task.get_config("output_type"), f"lm-eval:{name}", *_main_metric(task))
    return out


def _main_metric(task) -> tuple[str, bool]:
    """The task's first metric, and its direction, as lm-eval declares them."""
    metric = next(iter(task.aggregation()))
    return metric, bool(task.higher_is_better().get(metric, True))


def evaluate(model, tok, manager, tasks: list[str], directory: Path, batch_size: int, limit: int) -> dict[str, Any]:
    """lm-eval's results and per-document samples for ``tasks`` on ``model``, run from ``directory`` (the generated tasks'
    data paths are relative to it), without the run's timings and dates: the same model and tasks give the same record."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    # the contexts are already rendered as the project renders them: no BOS or chat template added on top
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, add_bos_token=False)
    with contextlib.chdir(directory):
        try:
            raw = simple_evaluate(lm, tasks=tasks, task_manager=manager, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS,
                                  log_samples=True, apply_chat_template=False)
        finally:
            shutil.rmtree(DATASETS_CACHE, ignore_errors=True)  # a cache, not part of what is committed
    return {k: raw[k] for k in ("results", "n-samples", "higher_is_better", "versions", "n-shot", "samples") if k in raw}


def summary(raw: dict[str, Any], tasks: dict[str, TaskInfo]) -> dict[str, dict[str, Any]]:
    """task -> {metric, value, stderr, n}: the figure each task is compared on, from lm-eval's raw results."""
    out = {}
    for name, info in tasks.items():
        figures = raw["results"].get(name)
        if figures is None:
            continue
        key = next(k for k in figures if k.split(",")[0] == info.metric)
        stderr = figures.get(key.replace(info.metric, f"{info.metric}_stderr", 1))
        samples = raw.get("n-samples", {}).get(name, {})
        out[name] = {"metric": info.metric, "value": float(figures[key]),
                     "stderr": float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
                     "n": int(samples.get("effective", samples.get("original", 0)))}
    return out
