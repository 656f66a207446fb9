"""landing_sensor: every settled new file (or new content) in the landing zone becomes a drop
partition and a run of its kind's data job, exactly once (see ``llm_assets.drops``).

recipe_sensor: records an observation of the ``recipe`` source asset whenever a recipe's hash
changes, so the automation sensor retrains exactly that recipe's partition (no observation runs).
"""

import json
import os
import time

from dagster import (
    AddDynamicPartitionsRequest,
    AssetObservation,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    StaticPartitionsDefinition,
    sensor,
)

from llm_assets.assets.data import SHA_TAG
from llm_assets.drops import load_cursor, plan_drops
from llm_assets.jobs import data_jobs
from llm_assets.partitions import DROP_PARTITIONS, is_partition_key
from llm_assets.recipes import RecipeError, load_recipe, recipe_names
from llm_assets.resources.landing import KINDS, LandingZone


# The tag that carries an observation's data version. Dagster 1.13 has no public way to set one
# from a sensor (AssetObservation takes no data_version=, ObserveResult is only returned by the
# source asset's own function); this is the tag its public AssetObservation.data_version reads,
# and test_sensors.py fails if Dagster ever reads another.
DATA_VERSION_TAG = "dagster/data_version"


def settle_seconds() -> float:
    return float(os.environ.get("LLM_ASSETS_SETTLE_SECONDS", "10"))


@sensor(
    name="landing_sensor", jobs=list(data_jobs.values()), minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING, description="Turns each settled landed file into a drop partition and validates it.",
)
def landing_sensor(context: SensorEvaluationContext, landing: LandingZone) -> SensorResult:
    zone = landing.open()
    cursor = load_cursor(context.cursor)
    run_requests, partition_requests = [], []
    for kind in KINDS:
        scan = zone.scan(kind)
        known = set(context.instance.get_dynamic_partitions(DROP_PARTITIONS[kind].name))
        plan = plan_drops(kind, scan.files, cursor, known, time.time(), settle_seconds(), zone.sha256, scan.refused)
        cursor = plan.cursor
        for warning in plan.warnings:
            context.log.warning(warning)
        for note in plan.notes:
            context.log.info(note)
        if plan.new:
            partition_requests.append(AddDynamicPartitionsRequest(DROP_PARTITIONS[kind].name, [d.key for d in plan.new]))
            run_requests += [RunRequest(job_name=data_jobs[kind].name, partition_key=d.key, run_key=f"{kind}/{d.key}",
                                        tags={SHA_TAG: d.sha256}) for d in plan.new]
    return SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests,
                        cursor=json.dumps(cursor, sort_keys=True))


def build_recipe_sensor(partitions: StaticPartitionsDefinition) -> SensorDefinition:
    @sensor(name="recipe_sensor", minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING,
            description="Observes the recipe asset when a recipe file's effective content changes.")
    def recipe_sensor(context: SensorEvaluationContext) -> SensorResult:
        seen = json.loads(context.cursor) if context.cursor else {}
        known = set(partitions.get_partition_keys())
        events = []
        for name in sorted(known):
            try:
                digest = load_recipe(name).recipe_hash
            except RecipeError as e:
                context.log.error(f"recipe {name!r} not observed, its models keep their last version: {e}")
                continue
            if seen.get(name) != digest:
                events.append(recipe_observation(name, digest))
                seen[name] = digest
        for name in sorted(set(recipe_names()) - known):
            if is_partition_key(name):
                context.log.warning(f"configs/recipes/{name}.yaml is new: reload the code location to add its partition")
            else:
                context.log.error(f"configs/recipes/{name!r}.yaml is not used: Dagster refuses {name!r} as a partition key; "
                                  "rename the file (lower-case letters, digits, '-' and '_')")
        return SensorResult(asset_events=events, cursor=json.dumps(seen, sort_keys=True))

    return recipe_sensor


def recipe_observation(name: str, digest: str) -> AssetObservation:
    """An observation of partition ``name`` of the ``recipe`` asset whose data version is the recipe hash."""
    return AssetObservation(asset_key="recipe", partition=name, tags={DATA_VERSION_TAG: digest})
