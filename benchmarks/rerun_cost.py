"""Re-run cost: wall and CPU seconds to re-materialize sft_model through Dagster when nothing
changed, when only the learning rate changed (tokens from the cache), and when one new drop lands."""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path

import yaml

from llm_assets.markdown import markdown_table

RECIPE = {
    "description": "re-run cost benchmark", "data": {"max_length": 128, "max_reject_rate": 0.05},
    "model": {"base": "builtin:tiny", "architecture": {"hidden_size": 128, "intermediate_size": 384, "num_layers": 4,
                                                        "num_heads": 4, "vocab_size": 1024}},
    "cpt": {"max_steps": 10, "per_device_batch_size": 16, "save_steps": 50},
    "sft": {"max_steps": 200, "learning_rate": 2e-3, "per_device_batch_size": 16, "save_steps": 100},
}


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # the tables are the output, not every Dagster event


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rerun_cost(work: Path, quick: bool = False) -> dict:
    home, recipes = work / "dagster_home", work / "recipes"
    for d in (home, recipes):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).resolve().parent.parent / "configs" / "dagster.yaml", home / "dagster.yaml")
    recipe = {**RECIPE, "sft": {**RECIPE["sft"], "max_steps": 20 if quick else 200}}
    (recipes / "bench.yaml").write_text(yaml.safe_dump(recipe))
    os.environ.update(DAGSTER_HOME=str(home), LLM_ASSETS_DATA_DIR=str(work / "data"), LLM_ASSETS_RECIPES_DIR=str(recipes))

    from dagster import AssetKey, DagsterInstance

    from llm_assets.definitions import build_definitions
    from llm_assets.demo import register_drops
    from llm_assets.demo_data import write_demo_drops
    from llm_assets.resources import default_resources

    instance = DagsterInstance.get()
    landing = work / "data" / "landing"
    write_demo_drops(landing, scale=0.5)

    prepared: set[tuple[str, str]] = set()

    def prepare(defs):
        """Validate every drop not validated yet (the landing sensor's runs, in process)."""
        for kind, keys in register_drops(instance, default_resources()["landing"].open()).items():
            for key in sorted(set(keys) - {k for c, k in prepared if c == kind}):
                assert defs.resolve_job_def(f"{kind}_data_prep_job").execute_in_process(partition_key=key, instance=instance, run_config=QUIET).success
                prepared.add((kind, key))

    def sft(label: str, before=None) -> list:
        defs = build_definitions()
        t, c = time.perf_counter(), cpu_seconds()
        if before:
            before(defs)
        result = defs.resolve_job_def("training_job").get_subset(asset_selection={AssetKey("sft_model")}).execute_in_process(
            partition_key="bench", instance=instance, run_config=QUIET)
        wall, cpu = time.perf_counter() - t, cpu_seconds() - c
        assert result.success
        ev = instance.get_latest_materialization_event(AssetKey("sft_model")).asset_materialization.metadata
        what = "reused, no training" if ev.get("reused") else f"trained, tokens: {ev['tokenization'].value}"
        return [label, f"{wall:.1f}", f"{cpu:.1f}", what]

    defs = build_definitions()
    prepare(defs)
    defs.resolve_job_def("training_job").get_subset(asset_selection={AssetKey(a) for a in ("base_model", "cpt_model")}).execute_in_process(
        partition_key="bench", instance=instance, run_config=QUIET)
    rows = [sft("first materialization")]
    rows.append(sft("nothing changed"))
    recipe["sft"]["learning_rate"] = 1e-3
    (recipes / "bench.yaml").write_text(yaml.safe_dump(recipe))
    rows.append(sft("learning rate changed"))
    src = next((landing / "sft").glob("demo_word_tasks.jsonl")).read_text().splitlines()
    (landing / "sft" / "new_drop.jsonl").write_text("\n".join(src[-(len(src) // 10):]).replace("first", "First") + "\n")
    rows.append(sft("one new drop landed (data prep + SFT)", prepare))
    print("\nRe-run cost of sft_model (tiny model, demo data)")
    print(markdown_table(["scenario", "wall s", "CPU s", "what happened"], rows))
    from llm_assets.training.data import load_rows

    store = default_resources()["store"].open()
    datasets = [str(store.get(f"datasets/sft/{d}").file("dataset.parquet")) for d in instance.get_dynamic_partitions("sft_drops")]
    return {"scenarios": {r[0]: {"wall_s": float(r[1]), "cpu_s": float(r[2]), "what": r[3]} for r in rows},
            "sft_dir": str(store.get("models/sft/bench").path), "eval_rows": load_rows(datasets, "eval", 200)}
