"""``make gpu-check``: every stage of a recipe (``gpu-1b`` by default) on this machine's GPU, measured against the estimates.

    python -m benchmarks.gpu_check [--recipe gpu-1b] [--device cuda|cpu] [--max-steps N] [--out figures.json]

The demo data is generated into a temporary directory and validated by the project's own pipeline
(``llm_assets.data.pipeline``, no Dagster); then each stage module's ``run(spec, reporter)`` runs in this
process on a local ``StageSpec``, in the stage table's order and wired as it says (a stage the recipe
leaves out passes its parent through), and ``evaluate`` runs on the last trained model. Per stage:

* it ran where asked: the ``device`` of the stage's own ``hardware`` report;
* on CUDA, ``torch.cuda.max_memory_allocated`` (reset before the stage) within ±30 % of
  ``stage_memory(recipe, stage).allocated_gb`` (the device figure less the CUDA context, which the allocator never sees);
* tokens/s of its logged training steps, and its wall time.

It prints one table, writes the figures as JSON (``--out``, else ``$OUT/gpu_check.json`` when ``OUT`` is
set) and exits 1 when any check fails. ``--device cpu --recipe tiny --max-steps 2`` runs the harness on
a CPU (CUDA hidden), which is how its test covers it without a GPU.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOLERANCE = 0.30  # the target: estimate within ±30 % of the measured peak
TRAINING_GROUPS = ("cpt", "sft", "reward", "rlhf")


def capped(recipe, max_steps: int | None):
    """The recipe with every training stage's max_steps at most ``max_steps`` (a smoke run; the figures say so)."""
    from llm_assets.recipes import Recipe

    if not max_steps:
        return recipe
    raw = recipe.model_dump(mode="json")
    for group in TRAINING_GROUPS:
        if raw.get(group):
            raw[group]["max_steps"] = min(raw[group]["max_steps"], max_steps)
    return Recipe.model_validate(raw)


def validated_datasets(work: Path, recipe, scale: float) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """The demo drops, validated and written as the dataset assets write them; a drop over the recipe's reject rate stops the run."""
    from llm_assets.data.io import write_dataset
    from llm_assets.data.pipeline import validate_drop
    from llm_assets.demo_data import write_demo_drops

    paths: dict[str, list[str]] = {}
    rows: dict[str, dict[str, int]] = {}
    for landed in write_demo_drops(work / "landing", scale=scale):
        kind = landed.parent.name
        result = validate_drop(kind, landed.name, landed.read_bytes())
        if result.reject_rate > recipe.data.max_reject_rate:
            raise SystemExit(f"{landed}: {result.reject_rate:.1%} of its rows were quarantined, over the recipe's "
                             f"data.max_reject_rate {recipe.data.max_reject_rate:.0%}")
        path = work / "datasets" / f"{landed.stem}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(result.dataset, path, kind)
        paths.setdefault(kind, []).append(str(path))
        rows[landed.name] = {"rows_in": result.rows_in, "kept": result.rows_kept, "quarantined": result.rows_quarantined,
                             "duplicates": result.rows_duplicate}
    return paths, rows


def stage_plan(recipe) -> list[tuple[str, dict[str, str], tuple[str, ...]]]:
    """(stage, model role -> stage whose output it reads, data kinds) in training order; pass-throughs left out."""
    from llm_assets.stages import STAGES

    plan, produced_by = [], {}  # stage name -> the stage whose directory holds its model
    for stage in STAGES.values():
        if not stage.active(recipe):
            produced_by[stage.name] = produced_by[stage.parent(recipe)]
            continue
        roles = {role: produced_by[parent] for role, parent in stage.inputs(recipe).items()}
        plan.append((stage.name, roles, stage.data_kinds(recipe)))
        produced_by[stage.name] = stage.name
    last_trained = produced_by["rlhf"]
    plan.append(("evaluate", {"model": last_trained}, ("sft", "pretraining")))
    return plan


def steady_tokens_per_s(metrics: dict[str, Any]) -> float | None:
    """Mean tokens/s of the logged steps after the first (which carries the start-up), or of all when only one was logged."""
    rates = [h["tokens_per_s"] for h in metrics.get("log_history", []) if "tokens_per_s" in h]
    steady = rates[1:] or rates
    return sum(steady) / len(steady) if steady else None


def within(measured_gb: float, estimate_gb: float, tolerance: float = TOLERANCE) -> bool:
    """Whether an estimate is within ``tolerance`` of the measured figure (relative to the measured one)."""
    return measured_gb > 0 and abs(estimate_gb - measured_gb) <= tolerance * measured_gb


def run_stage(name: str, spec, device: str) -> dict[str, Any]:
    """One stage in this process: its metrics, wall time and, on CUDA, its peak memory from a clean allocator."""
    import torch

    from llm_assets.training.report import Reporter

    module = importlib.import_module(f"llm_assets.training.{'evaluate_stage' if name == 'evaluate' else name}")
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start_gb = torch.cuda.memory_allocated() / 1e9
    t0 = time.perf_counter()
    metrics = module.run(spec, Reporter())
    if device == "cuda":
        torch.cuda.synchronize()
    out = {"wall_s": time.perf_counter() - t0, "metrics": metrics}
    if device == "cuda":
        out.update(start_allocated_gb=start_gb, peak_allocated_gb=torch.cuda.max_memory_allocated() / 1e9,
                   peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9)
    return out


def check_stage(name: str, ran: dict[str, Any], recipe, device: str) -> dict[str, Any]:
    """The figures and verdicts of one stage; ``failures`` says in words what did not hold."""
    from llm_assets.stage_memory import stage_memory

    hardware = ran["metrics"].get("hardware") or {}
    row: dict[str, Any] = {"stage": name, "device": hardware.get("device"), "hardware": hardware, "wall_s": ran["wall_s"],
                           "tokens_per_s": steady_tokens_per_s(ran["metrics"]), "failures": []}
    if not hardware:
        row["failures"].append(f"{name}: its metrics carry no 'hardware' report, so where it ran is unknown")
    elif hardware.get("device") != device:
        row["failures"].append(f"{name}: ran on {hardware.get('device')!r}, not {device!r} ({hardware.get('why', '')})")
    estimate = stage_memory(recipe, name)
    # like for like: max_memory_allocated never sees the CUDA context and allocator slack the device figure includes
    row["estimate_gb"], row["estimate_device_gb"] = estimate.allocated_gb, estimate.device_gb
    if device == "cuda":
        peak = ran["peak_allocated_gb"]
        row.update(peak_gb=peak, reserved_gb=ran["peak_reserved_gb"], start_gb=ran["start_allocated_gb"],
                   ratio=estimate.allocated_gb / peak if peak else None)
        if not within(peak, estimate.allocated_gb):
            row["failures"].append(f"{name}: peak {peak:.2f} GB allocated, estimate {estimate.allocated_gb:.2f} GB without "
                                   f"the CUDA context ({estimate.describe()}): outside ±{TOLERANCE:.0%}")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    from llm_assets.markdown import markdown_table

    def gb(v):
        return "-" if v is None else f"{v:.2f}"

    return markdown_table(
        ["stage", "device", "wall s", "tokens/s", "peak GB allocated", "estimate GB", "estimate / peak", "checks"],
        [[r["stage"], r["device"] or "?", f"{r['wall_s']:.1f}", "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}",
          gb(r.get("peak_gb")), gb(r["estimate_gb"]), "-" if r.get("ratio") is None else f"{r['ratio']:.2f}",
          "ok" if not r["failures"] else "FAIL"] for r in rows])


def machine(device: str) -> dict[str, Any]:
    import torch

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=torch.cuda.get_device_properties(0).total_memory / 1e9)
    return info


def default_out() -> Path | None:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="gpu-1b", help="A recipe name in configs/recipes (default gpu-1b) or a recipe file's path.")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu hides CUDA (tests the harness anywhere).")
    p.add_argument("--max-steps", type=int, default=None, help="Cap every training stage's max_steps (a smoke run).")
    p.add_argument("--scale", type=float, default=1.0, help="Demo data size (llm_assets.demo_data.write_demo_drops).")
    p.add_argument("--eval-limit", type=int, default=64, help="Held-out rows each stage measures on.")
    p.add_argument("--out", type=Path, default=default_out(), help="Figures JSON (default $OUT/gpu_check.json when OUT is set).")
    p.add_argument("--workdir", type=Path, default=None, help="Keep the models here (default: a temporary directory, removed).")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: every stage's hardware choice then sees no GPU
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible to torch here: run this on a GPU machine, or pass --device cpu")
    from llm_assets.recipes import load_recipe, parse_recipe
    from llm_assets.training.spec import StageSpec

    named = args.recipe.endswith((".yaml", ".yml"))
    recipe = capped(parse_recipe(Path(args.recipe)) if named else load_recipe(args.recipe), args.max_steps)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    t0 = time.perf_counter()
    try:
        datasets, drops = validated_datasets(work, recipe, args.scale)
        rows, dirs = [], {}
        for name, roles, kinds in stage_plan(recipe):
            spec = StageSpec(stage=name, recipe=recipe.model_dump(mode="json"), output_dir=str(work / name),
                             inputs={role: dirs[parent] for role, parent in roles.items()},
                             datasets={k: datasets[k] for k in kinds if k in datasets},
                             checkpoint_dir=str(work / f"checkpoints-{name}"), options={"eval_limit": args.eval_limit})
            print(f"[gpu-check] {name} ...", flush=True)
            rows.append(check_stage(name, run_stage(name, spec, args.device), recipe, args.device))
            dirs[name] = spec.output_dir
            shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)  # finished, as the asset does: a 1 B checkpoint is ~6 GB
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    failures = [f for r in rows for f in r["failures"]]
    figures = {"recipe": recipe.name, "max_steps_cap": args.max_steps, "machine": machine(args.device), "drops": drops,
               "stages": rows, "total_wall_s": total, "tolerance": TOLERANCE, "failures": failures}
    print(f"\ngpu-check: recipe {recipe.name} on {figures['machine'].get('gpu', args.device)}, "
          f"{'max_steps capped at %d' % args.max_steps if args.max_steps else 'steps as the recipe says'}")
    print(table(rows))
    print(f"total wall time {total:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1, default=str))
        print(f"figures written to {args.out}")
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
