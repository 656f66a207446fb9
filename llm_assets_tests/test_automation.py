"""Declarative automation with evaluate_automation_conditions: exactly the stale partitions, nothing else.

The instance holds the history a daemon would see (drops validated, models trained, recipes
observed); events are reported to it directly so each tick is evaluated in milliseconds.
"""

import pytest
from dagster import AssetKey, AssetMaterialization, AssetsDefinition, DagsterInstance, Definitions, build_sensor_context, evaluate_automation_conditions

from llm_assets.jobs import MODEL_ASSETS
from llm_assets_tests.helpers import write_recipe
from llm_assets_tests.runless import DATA_VERSION, land

RELEASE = ["evaluation", "released_model"]  # published_model waits for a person's approval: never automated
MODELS = [*MODEL_ASSETS, *RELEASE, "model_report"]
DROPS = {"pretraining": "p1", "sft": "s1", "preference": "r1"}


class World:
    """Definitions over two recipes, an instance with history, and the automation cursor carried across ticks."""

    def __init__(self, recipes_dir):
        from llm_assets.definitions import build_definitions

        self.recipes_dir = recipes_dir
        self.defs = build_definitions()
        self.instance = DagsterInstance.get()
        self.cursor = None
        self.recipe_cursor = None
        self.generation = {}
        self.landed = set()

    def land(self, kind, drop, checks_pass=True, content=None):
        """What the landing sensor's run leaves behind (see llm_assets_tests.runless)."""
        land(self.instance, kind, drop, checks_pass, content, check=(kind, drop) not in self.landed)
        self.landed.add((kind, drop))

    def trained(self, recipes=("a", "b"), assets=MODELS, same_versions=False):
        """Models materialized; ``same_versions``: each reused its committed version (same data version as before)."""
        for recipe in recipes:
            for asset in assets:
                if not same_versions:
                    self.generation[(asset, recipe)] = self.generation.get((asset, recipe), 0) + 1
                self.instance.report_runless_asset_event(AssetMaterialization(
                    asset, partition=recipe, tags={DATA_VERSION: f"{asset}:{self.generation[(asset, recipe)]}"}))

    def observe_recipes(self):
        from llm_assets.sensors import build_recipe_sensor

        sensor = build_recipe_sensor(self.defs.resolve_assets_def("recipe").partitions_def)
        with build_sensor_context(instance=self.instance, cursor=self.recipe_cursor) as ctx:
            result = sensor(ctx)
        for event in result.asset_events:
            self.instance.report_runless_asset_event(event)
        self.recipe_cursor = result.cursor
        return {e.partition for e in result.asset_events}

    def tick(self, defs=None):
        result = evaluate_automation_conditions(defs=defs or self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {(k.path[-1], p) for k in (defs or self.defs).resolve_asset_graph().get_all_asset_keys()
                for p in result.get_requested_partitions(k)}


@pytest.fixture
def world(project_env, monkeypatch):
    recipes = project_env / "recipes"
    write_recipe(recipes, "a")
    write_recipe(recipes, "b", sft={"method": "lora"})
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    w = World(recipes)
    for kind, drop in DROPS.items():
        w.land(kind, drop)
    assert w.observe_recipes() == {"a", "b"}
    w.trained()
    w.tick()  # the daemon's first look: everything is handled
    return w


def models_of(*recipes, assets=MODELS):
    return {(a, r) for a in assets for r in recipes}


def test_nothing_changed_requests_nothing(world):
    assert world.observe_recipes() == set()
    assert world.tick() == set()
    assert world.tick() == set()


def test_a_new_drop_retrains_every_recipe_once(world):
    world.land("sft", "s2")
    assert world.tick() == models_of("a", "b")  # base_model reads every corpus (its tokenizer), so the whole chain
    world.trained()
    assert world.tick() == set()


def test_a_new_preference_drop_retrains_from_the_reward_model_down(world):
    world.land("preference", "r2")
    stale = ["base_model", "cpt_model", "sft_model", "reward_model", "rlhf_policy", "quantized_model", *RELEASE, "model_report"]
    assert world.tick() == models_of("a", "b", assets=stale)


def test_rematerializing_an_unchanged_drop_starts_no_model_run(world):
    world.land("sft", "s1")  # a manual Materialize of the same drop: same content, same data version
    assert world.tick() == set()


def test_a_model_that_reused_its_version_retrains_nothing_downstream(world):
    world.trained(["a"], assets=["sft_model"], same_versions=True)
    assert world.tick() == set()
    world.trained(["a"], assets=["sft_model"])  # a new version: everything downstream of it, for that recipe only
    assert world.tick() == models_of("a", assets=["reward_model", "rlhf_policy", "quantized_model", *RELEASE, "model_report"])


def test_a_drop_failing_its_blocking_check_propagates_nothing(world):
    world.land("sft", "bad", checks_pass=False)
    assert world.tick() == set()


def test_editing_one_recipe_retrains_only_that_partition(world):
    (world.recipes_dir / "b.yaml").write_text("# a comment\n" + (world.recipes_dir / "b.yaml").read_text())
    assert world.observe_recipes() == set()  # formatting is not a change
    write_recipe(world.recipes_dir, "b", sft={"method": "lora", "learning_rate": 5e-4})
    assert world.observe_recipes() == {"b"}
    assert world.tick() == models_of("b")
    world.trained(["b"])
    assert world.tick() == set()


def test_a_code_version_bump_reruns_that_asset_and_its_downstream_only(world):
    def bump(spec):
        return spec.replace_attributes(code_version="bumped") if spec.key == AssetKey("sft_model") else spec

    assets = [a.map_asset_specs(bump) if isinstance(a, AssetsDefinition) else a for a in world.defs.assets]
    bumped = Definitions(assets=assets, resources=world.defs.resources)
    assert world.tick(bumped) == models_of("a", "b", assets=["sft_model", "reward_model", "rlhf_policy", "quantized_model", *RELEASE, "model_report"])
    assert world.tick(bumped) == set()


def test_models_wait_until_every_input_has_data(project_env, monkeypatch):
    recipes = project_env / "recipes"
    write_recipe(recipes, "a")
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    w = World(recipes)
    w.observe_recipes()
    w.land("sft", "s1")
    assert w.tick() == set()  # no pre-training or preference data yet: base_model cannot be built
    w.land("pretraining", "p1")
    w.land("preference", "r1")
    assert w.tick() == models_of("a")
    # the blocking checks of the data it depends on are all there: no dataset partition is requested
    assert not any(a.endswith("_dataset") for a, _ in w.tick())


def test_the_automation_landing_and_release_sensors_are_on_by_default(world):
    from dagster import DefaultSensorStatus

    status = {s.name: s.default_status for s in world.defs.sensors}
    assert status == {"landing_sensor": DefaultSensorStatus.RUNNING, "recipe_sensor": DefaultSensorStatus.RUNNING,
                      "automation": DefaultSensorStatus.RUNNING,
                      "release_sensor": DefaultSensorStatus.RUNNING}  # it publishes only what a person approved


def test_a_dataset_requested_now_holds_its_models_until_its_run_brings_a_new_version(world):
    """Automation emits one run per partition, and Dagster orders assets only inside one run: a model must not start beside
    the dataset run it reads."""
    def bump(spec):
        return spec.replace_attributes(code_version="bumped") if spec.key == AssetKey("sft_dataset") else spec

    assets = [a.map_asset_specs(bump) if isinstance(a, AssetsDefinition) else a for a in world.defs.assets]
    bumped = Definitions(assets=assets, resources=world.defs.resources)
    assert world.tick(bumped) == {("sft_dataset", "s1")}
    assert world.tick(bumped) == set()  # not yet materialized: nothing new
    world.land("sft", "s1", content="s1 validated by the new code")
    assert world.tick(bumped) == models_of("a", "b", assets=MODELS)


def test_switching_a_recipe_to_manual_stops_its_automation_and_changes_no_version(world):
    from llm_assets.recipes import load_recipe
    from llm_assets.stages import STAGES

    before = load_recipe("b")
    write_recipe(world.recipes_dir, "b", sft={"method": "lora"}, automation="manual")
    after = load_recipe("b")
    assert after.recipe_hash == before.recipe_hash and world.observe_recipes() == set()
    assert all(s.identity(after) == s.identity(before) for s in STAGES.values())
    world.land("sft", "s2")
    assert world.tick() == models_of("a")
    write_recipe(world.recipes_dir, "b", sft={"method": "lora"})  # back to on_change: the drop it missed retrains it
    assert world.tick() == models_of("b")


def test_batch_predictions_wait_for_recipes_that_run_here(world):
    """batch_predictions is partitioned by drop x recipe: a landed prompt file requests the predictions of the recipes
    automation may start, never of a manual one (its model may never be trained: the run would fail at launch)."""
    write_recipe(world.recipes_dir, "b", sft={"method": "lora"}, automation="manual")
    world.land("inference", "i1")
    assert world.tick() == {("batch_predictions", "i1|a")}
    write_recipe(world.recipes_dir, "b", sft={"method": "lora"})  # on_change again: its predictions catch up
    assert world.tick() == {("batch_predictions", "i1|b")}
