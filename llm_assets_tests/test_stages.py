"""The stage table: each stage's identity is exactly the recipe fields it reads, and the graph is built from it."""

import pytest
from dagster import AssetKey, DagsterInstance

from llm_assets.recipes import parse_recipe
from llm_assets.stages import STAGES
from llm_assets_tests.helpers import write_recipe

INPUTS = {"model": "v1", "reward": "v2", "data/sft": "d1"}


def fingerprints(tmp_path, **changes) -> dict[str, str]:
    recipe = parse_recipe(write_recipe(tmp_path / "recipes", "r", **changes))
    return {name: stage.fingerprint(recipe, INPUTS, "1", {}) for name, stage in STAGES.items() if stage.active(recipe)}


@pytest.mark.parametrize("edit", [
    {"quantization": {"max_eval_loss_delta": 0.5}},  # gate thresholds
    {"reward": {"min_accuracy": 0.9}},
    {"data": {"max_reject_rate": 0.3}},  # decides which drops: counted by the rows' content, not here
    {"lora": {"r": 4}},  # a full fine-tune trains no adapter
    {"tracking": {"run_name": "x"}},
    {"resources": {"gpus": 1}},
    {"description": "other words"},
    {"sft": {"logging_steps": 3, "save_steps": 7}},  # logs and checkpoints only
])
def test_fields_no_stage_reads_change_no_identity(tmp_path, edit):
    assert fingerprints(tmp_path / "a") == fingerprints(tmp_path / "b", **edit)


@pytest.mark.parametrize("edit, changed", [
    ({"quantization": {"bits": 8}}, {"quantize"}),
    ({"sft": {"learning_rate": 5e-4}}, {"sft"}),  # downstream follows through its inputs' versions, not the recipe
    ({"reward": {"max_steps": 9}}, {"reward"}),
    ({"rlhf": {"beta": 0.2}}, {"rlhf"}),
    ({"cpt": {"max_steps": 9}}, {"cpt"}),
    ({"model": {"seed": 7}}, {"base"}),  # the builtin base's weights come from it
    ({"data": {"truncation": "left"}}, {"sft"}),
    ({"data": {"max_length": 96}}, {"base", "cpt", "sft", "reward", "rlhf", "quantize"}),
    ({"data": {"chat_template": "plain"}}, {"sft", "reward", "rlhf", "quantize"}),
    ({"model": {"dtype": "float32"}}, {"cpt", "sft", "reward", "rlhf", "quantize"}),
])
def test_a_field_changes_exactly_the_stages_that_read_it(tmp_path, edit, changed):
    before, after = fingerprints(tmp_path / "a"), fingerprints(tmp_path / "b", **edit)
    assert {s for s in before if before[s] != after[s]} == changed


def test_qlora_reads_how_its_base_is_quantized(tmp_path):
    before = fingerprints(tmp_path / "a", sft={"method": "qlora"})
    after = fingerprints(tmp_path / "b", sft={"method": "qlora"}, quantization={"quant_type": "fp4", "double_quant": False})
    assert {s for s in before if before[s] != after[s]} == {"sft", "quantize"}


def test_adapter_fields_count_only_when_the_recipe_trains_adapters(tmp_path):
    before = fingerprints(tmp_path / "a", sft={"method": "lora"})
    after = fingerprints(tmp_path / "b", sft={"method": "lora"}, lora={"r": 4})
    assert {s for s in before if before[s] != after[s]} == {"sft", "reward", "rlhf"}


def test_a_deepspeed_config_edit_retrains_what_runs_under_it(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text('{"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}')
    distributed = {"processes": 2, "deepspeed": str(config)}
    before = fingerprints(tmp_path / "a", distributed=distributed)
    config.write_text('{"zero_optimization": {"stage": 2, "overlap_comm": true}, "train_micro_batch_size_per_gpu": "auto"}')
    after = fingerprints(tmp_path / "b", distributed=distributed)
    assert {s for s in before if before[s] != after[s]} == {"cpt", "sft", "reward", "rlhf"}


def test_the_reward_model_starts_from_the_model_its_recipe_names(tmp_path):
    recipe = parse_recipe(write_recipe(tmp_path, "r", reward={"base": "cpt"}))
    assert STAGES["reward"].inputs(recipe) == {"model": "cpt"}
    assert STAGES["rlhf"].inputs(recipe) == {"model": "sft", "reward": "reward"}


def test_asset_deps_come_from_the_stage_table(project_env, monkeypatch):
    write_recipe(project_env / "recipes", "r")
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(project_env / "recipes"))
    from llm_assets.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    for stage in STAGES.values():
        parents = {k.path[-1] for k in graph.get(AssetKey(stage.asset)).parent_keys}
        assert parents == {"recipe", *(STAGES[p].asset for p in stage.parents), *(f"{k}_dataset" for k in stage.data)}
    assert {"base_model", "cpt_model", "sft_model"} <= {k.path[-1] for k in graph.get(AssetKey("reward_model")).parent_keys}


def test_base_model_needs_only_the_data_its_recipe_reads(project_env, monkeypatch):
    """A recipe with SFT only (no CPT, reward, RLHF) builds its base with no pre-training or preference drop."""
    from llm_assets.demo import register_drops
    from llm_assets.demo_data import write_demo_drops
    from llm_assets.resources import default_resources

    recipes = project_env / "recipes"
    recipe = parse_recipe(write_recipe(recipes, "sftonly", cpt=None, reward=None, rlhf=None, quantization=None))
    assert STAGES["base"].data_kinds(recipe) == ("sft",)
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    landing = project_env / "data" / "landing"
    for f in write_demo_drops(landing, scale=0.1):
        if f.parent.name != "sft":
            f.unlink()
    from llm_assets.definitions import build_definitions

    instance = DagsterInstance.get()
    defs = build_definitions()
    for key in register_drops(instance, default_resources()["landing"].open())["sft"]:
        assert defs.resolve_job_def("sft_data_prep_job").execute_in_process(partition_key=key, instance=instance).success
    job = defs.resolve_job_def("training_job").get_subset(asset_selection={AssetKey("base_model")})
    result = job.execute_in_process(partition_key="sftonly", instance=instance, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    fit = {c.check_name: c for c in result.get_asset_check_evaluations()}["rows_fit_max_length"]
    assert set(fit.metadata["fit"].value.split("\n")[2].split("|")[1:2]) == {" sft "}  # the one kind it reads
