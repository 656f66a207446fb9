"""The recipe source asset: editing one recipe changes only that partition's data version."""

from dagster import AssetKey, DagsterInstance

from llm_assets_tests.helpers import write_recipe


def observed_versions(defs, instance) -> dict[str, str]:
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={AssetKey("recipe")})
    result = job.execute_in_process(instance=instance)
    assert result.success
    return {e.event_specific_data.asset_observation.partition: e.event_specific_data.asset_observation.tags["dagster/data_version"]
            for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"}


def test_editing_one_recipe_changes_only_its_data_version(project_env, monkeypatch):
    recipes = project_env / "recipes"
    write_recipe(recipes, "a")
    write_recipe(recipes, "b")
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    from llm_assets.definitions import build_definitions

    defs, instance = build_definitions(), DagsterInstance.get()
    before = observed_versions(defs, instance)
    assert set(before) == {"a", "b"}
    (recipes / "b.yaml").write_text("# a comment only\n" + (recipes / "b.yaml").read_text())
    assert observed_versions(defs, instance) == before  # formatting is not a change
    write_recipe(recipes, "b", sft={"learning_rate": 5e-4})
    after = observed_versions(defs, instance)
    assert after["a"] == before["a"] and after["b"] != before["b"]
    deps = defs.resolve_assets_def(AssetKey("sft_model")).asset_deps[AssetKey("sft_model")]
    assert AssetKey("recipe") in deps


def test_a_broken_recipe_is_not_observed_and_does_not_block_the_others(project_env, monkeypatch):
    recipes = project_env / "recipes"
    write_recipe(recipes, "a")
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    (recipes / "broken.yaml").write_text("sft:\n  learnig_rate: 0.1\n")
    from llm_assets.definitions import build_definitions

    defs, instance = build_definitions(), DagsterInstance.get()
    assert set(observed_versions(defs, instance)) == {"a"}
    job = defs.resolve_job_def("full_pipeline_job").get_subset(asset_selection={AssetKey("recipe")})
    assert job.execute_in_process(partition_key="a", instance=instance).success
    failed = job.execute_in_process(partition_key="broken", instance=instance, raise_on_error=False)
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "unknown key 'sft.learnig_rate'" in failure.step_failure_data.error.message
