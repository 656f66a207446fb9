"""A broken recipe fails `dagster definitions validate` (CI) and never blocks the data assets (`dagster dev`)."""

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

from llm_assets.partitions import DROP_PARTITIONS
from llm_assets_tests.conftest import PROJECT
from llm_assets_tests.helpers import write_recipe

DAGSTER = Path(sys.executable).parent / "dagster"  # the virtualenv's, beside its python


def broken_recipes(directory: Path) -> dict[str, Path]:
    """Recipes broken in the ways CI must catch: a mistyped key, a DeepSpeed file that does not exist, and a file
    name Dagster refuses as a partition key."""
    typo = directory / "typo.yaml"
    typo.write_text("sft:\n  learnig_rate: 0.1\n")
    ds = directory / "ds.yaml"
    ds.write_text("distributed:\n  processes: 2\n  deepspeed: configs/deepspeed/zero-2.json\n")
    dots = directory / "v2...final.yaml"
    dots.write_text("{}\n")
    return {"typo": typo, "ds": ds, "dots": dots}


def validate(recipes: Path) -> subprocess.CompletedProcess:
    """What CI runs (`make validate`), against a recipes directory."""
    env = {**os.environ, "LLM_ASSETS_RECIPES_DIR": str(recipes)}
    env.pop("DAGSTER_IS_DEFS_VALIDATION_CLI", None)
    return subprocess.run([str(DAGSTER), "definitions", "validate", "-w", "workspace.yaml"], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_definitions_validate_fails_on_a_broken_recipe_and_passes_without(project_env):
    recipes = project_env / "recipes"
    write_recipe(recipes, "good")
    broken = broken_recipes(recipes)
    failed = validate(recipes)
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1, out
    assert f"{broken['typo']}: unknown key 'sft.learnig_rate'. Did you mean 'learning_rate'? Allowed keys here: " in out
    assert f"{broken['ds']}: key 'distributed.deepspeed': " in out and "configs/deepspeed/zero2.json" in out
    assert f"{broken['dots']}: key 'name': " in out
    for path in broken.values():
        path.unlink()
    passed = validate(recipes)
    assert passed.returncode == 0, passed.stdout + passed.stderr


def test_a_broken_recipe_does_not_block_loading_or_the_data_assets(project_env, monkeypatch):
    """Under `dagster dev` the location loads, a drop is prepared, and only the broken recipe's models fail, in one line."""
    recipes = project_env / "recipes"
    write_recipe(recipes, "good")
    broken = broken_recipes(recipes)
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    monkeypatch.delenv("DAGSTER_IS_DEFS_VALIDATION_CLI", raising=False)
    from llm_assets.definitions import build_definitions

    defs, instance = build_definitions(), DagsterInstance.get()
    # the recipe whose name Dagster refuses as a partition key is left out instead of failing the location
    assert set(defs.resolve_assets_def(AssetKey("sft_model")).partitions_def.get_partition_keys()) == {"good", "typo", "ds"}

    landing = project_env / "data" / "landing" / "pretraining"
    landing.mkdir(parents=True)
    (landing / "c.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    instance.add_dynamic_partitions(DROP_PARTITIONS["pretraining"].name, ["c.jsonl"])
    data = [defs.resolve_assets_def(AssetKey(k)) for k in ("raw_pretraining_corpus", "pretraining_dataset")]
    prepared = materialize(data, partition_key="c.jsonl", instance=instance, raise_on_error=False)
    assert prepared.success

    model = materialize([defs.resolve_assets_def(AssetKey("base_model"))], partition_key="typo", instance=instance, raise_on_error=False)
    (failure,) = [e for e in model.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith(f"{broken['typo']}: unknown key 'sft.learnig_rate'") and "\n" not in message
