"""The code location: one Definitions object merging the domain modules."""

import os

from dagster import Definitions

from llm_assets.assets.data import data_assets
from llm_assets.assets.evaluation import evaluation_definitions
from llm_assets.assets.maintenance import maintenance_definitions
from llm_assets.assets.models import build_fit_check, build_gate_checks, build_model_assets
from llm_assets.assets.predictions import predictions_definitions
from llm_assets.assets.recipes import build_recipe_asset
from llm_assets.assets.release import release_definitions
from llm_assets.assets.reports import build_report_assets
from llm_assets.automation import automation_sensor, gate_recipe_assets
from llm_assets.jobs import build_jobs
from llm_assets.partitions import recipe_partitions
from llm_assets.recipes import load_all_recipes
from llm_assets.resources import default_resources
from llm_assets.sensors import build_recipe_sensor, landing_sensor


def build_definitions(resources: dict[str, object] | None = None) -> Definitions:
    """Built from configs/recipes/ (or LLM_ASSETS_RECIPES_DIR) as it is now: one partition per recipe file.

    `dagster definitions validate` (what CI runs) sets DAGSTER_IS_DEFS_VALIDATION_CLI: there every recipe
    must load, so a broken one fails the command naming its file and key. Anywhere else (`dagster dev`)
    a broken recipe must not take the data assets down with it: it stays a partition whose model
    assets fail at run time with the same message. ``resources`` replace the environment's defaults by key.
    """
    if os.environ.get("DAGSTER_IS_DEFS_VALIDATION_CLI"):
        load_all_recipes()
    recipes = recipe_partitions()
    resources = {**default_resources(), **(resources or {})}
    # the release half of the graph: evaluation -> released (carded) model -> approved publishing, and batch inference
    evaluation, release, predictions = evaluation_definitions(recipes), release_definitions(recipes), predictions_definitions(recipes)
    # one call, so every recipe-partitioned asset with an automation condition also needs the recipe to run here
    recipe_assets = gate_recipe_assets([build_recipe_asset(recipes), *build_model_assets(recipes), *(evaluation.assets or ()),
                                        *(release.assets or ()), *build_report_assets(recipes), *(predictions.assets or ())],
                                       recipes, resources["launcher"], resources["hub"])
    core = Definitions(
        assets=[*data_assets, *recipe_assets],
        asset_checks=[*build_gate_checks(recipes), build_fit_check(recipes), *(evaluation.asset_checks or ()), *(release.asset_checks or ())],
        jobs=[*build_jobs(recipes), *(evaluation.jobs or ()), *(release.jobs or ()), *(predictions.jobs or ())],
        sensors=[landing_sensor, build_recipe_sensor(recipes), automation_sensor, *(evaluation.sensors or ()), *(release.sensors or ())],
        resources=resources,
    )
    return Definitions.merge(core, maintenance_definitions())

defs = build_definitions()
