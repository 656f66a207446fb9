"""The recipe source asset: editing one recipe changes only that partition's data version."""

import logging

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


def test_the_recipe_sensor_says_why_a_file_is_not_a_partition(project_env, monkeypatch):
    from dagster import build_sensor_context

    recipes = project_env / "recipes"
    write_recipe(recipes, "a")
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    from llm_assets.definitions import build_definitions

    defs = build_definitions()
    write_recipe(recipes, "b")  # added after the code location loaded
    (recipes / "v2...final.yaml").write_text((recipes / "a.yaml").read_text().replace("name: a", "name: v2...final"))
    sensor = next(s for s in defs.sensors if s.name == "recipe_sensor")
    records = []
    with build_sensor_context(instance=DagsterInstance.get()) as ctx:
        handler = logging.Handler()
        handler.emit = records.append  # what the sensor's tick log in the UI shows
        ctx.log.addHandler(handler)
        sensor(ctx)
    text = "\n".join(r.getMessage() for r in records)
    assert "configs/recipes/b.yaml is new: reload the code location" in text
    assert "Dagster refuses 'v2...final' as a partition key; rename the file" in text
    assert "v2...final.yaml is new" not in text
