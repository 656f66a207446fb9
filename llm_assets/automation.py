"""Declarative automation: what re-materializes by itself, and when.

A target partition runs when, since it was last requested or updated, one of its inputs changed
(a dependency got a new data version with no failed blocking check, or is being requested on this tick), or
its own ``code_version`` changed; and only once every input has data and none is materializing.
A tick when nothing changed requests nothing, and a drop or model whose blocking check failed
propagates nothing. Drops that never validated do not hold the models back: the training assets
leave them out and say so.

Runs, not backfills. The sensor emits one run per partition (a drop's data assets in one run, a
recipe's stale stages in another), so every automation run is on the Runs page and a failed one in
its Failed tab; a backfill's row said "Started" while its runs failed inside it. The price: Dagster
orders assets only inside one run, so a model never starts on the tick its dataset is requested.
It waits for the dataset's run and starts on a later tick, and only if the dataset's data version
changed.

Recipes that cannot run here. Every recipe-partitioned asset (batch predictions too, by its recipe dimension) also
needs ``recipe_runs_here``, a
condition evaluated in the code server (``use_user_code_server``): it is false for a recipe with
``automation: manual``, one that does not load, or one whose stages would fail on this machine
before training (``llm_assets.readiness``: a hub base model neither cached nor downloadable, GPUs
the machine lacks). The change that made the recipe stale stays pending, so it runs on the first
tick after the model arrives or the recipe is fixed; a Materialize from the UI runs it regardless
(and fails with the same one-line reason). The reason is logged once per change, in the sensor's
tick log, by the first asset of each recipe's chain, which keeps the reasons in its cursor.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence

from dagster import (
    AssetKey,
    AssetSelection,
    AssetsDefinition,
    AutomationConditionSensorDefinition,
    AutomationContext,
    AutomationResult,
    BetaWarning,
    DefaultSensorStatus,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)
from dagster import AutomationCondition as AC

from llm_assets.readiness import why_not_here
from llm_assets.recipes import RecipeError, load_recipe
from llm_assets.resources.hub import HubClient
from llm_assets.resources.landing import KINDS
from llm_assets.resources.launcher import TrainingLauncher

RECIPE = "recipe"  # the dimension that names the recipe in a multi-partitioned asset's key
# The assets of another partitions definition that other assets depend on: a run never holds both sides.
DATASETS = AssetSelection.assets(*(f"{kind}_dataset" for kind in KINDS))


def input_changed(elsewhere: AssetSelection = DATASETS) -> AC:
    """A dependency partition whose data version changed in another run with none of its blocking checks failed, or one
    requested now in the same run. Data versions are content hashes, so re-materializing unchanged data (a manual click, a
    model that reused its version) changes nothing downstream."""
    return (
        AC.any_deps_match(
            AC.data_version_changed() & ~AC.executed_with_root_target()
            & ~AC.any_checks_match(AC.check_failed(), blocking_only=True)
        ).with_label("new data version, blocking checks passed")
        | AC.any_deps_match(AC.will_be_requested()).ignore(elsewhere).with_label("requested in the same run")
    ).with_label("an input changed")


def on_change(elsewhere: AssetSelection = DATASETS) -> AC:
    """``elsewhere``: the dependencies of another partitions definition (the datasets, for a model), which never share a
    run with the asset: it waits for their runs instead of starting beside them."""
    return (
        (input_changed(elsewhere) | AC.code_version_changed()).since_last_handled()
        & AC.all_deps_match(~AC.missing() | AC.will_be_requested()).with_label("every input has data")
        & ~AC.any_deps_match(AC.will_be_requested()).allow(elsewhere).with_label("no input from another run requested now (its run goes first)")
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("on_change")


class RecipeReadiness:
    """Why each recipe may not be started by automation now, worked out once per tick for every asset that asks."""

    def __init__(self, launcher: TrainingLauncher, hub: HubClient):
        self.launcher, self.hub = launcher, hub
        self._tick: tuple[object, dict[str, tuple[str, str] | None]] = (None, {})

    def reasons(self, tick: object, recipes: Sequence[str]) -> dict[str, tuple[str, str]]:
        """recipe -> (log level, one-line reason) for each of ``recipes`` automation must not start on ``tick``."""
        if self._tick[0] != tick:
            self._tick = (tick, {})
        known = self._tick[1]
        for name in recipes:
            if name not in known:
                known[name] = self._reason(name)
        return {name: reason for name in recipes if (reason := known[name])}

    def _reason(self, name: str) -> tuple[str, str] | None:
        try:
            recipe = load_recipe(name)
        except RecipeError as e:
            return "warning", f"it does not load, its models keep their versions: {e}"
        if recipe.automation == "manual":
            return "info", "its automation is manual: only a Materialize runs it"
        why = why_not_here(recipe, self.launcher, self.hub)
        return ("warning", why) if why else None


class RecipeRunsHere(AC[AssetKey]):
    """True for the partitions whose recipe automation may start on this machine now (see the module docstring)."""

    def __init__(self, readiness: RecipeReadiness, speaks: bool):
        self.readiness, self.speaks = readiness, speaks

    @property
    def name(self) -> str:
        return "recipe_runs_here"

    @property
    def description(self) -> str:
        return "the recipe's automation is on_change, it loads, and this machine can run it (hub model, GPUs)"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        partitions = context.partitions_def
        multi = isinstance(partitions, MultiPartitionsDefinition)  # e.g. batch_predictions: drop x recipe
        recipes = (partitions.get_partitions_def_for_dimension(RECIPE) if multi else partitions).get_partition_keys()
        blocked = self.readiness.reasons((context.evaluation_id, context.evaluation_time), recipes)
        if multi:
            keys = {k for k in context.candidate_subset.expensively_compute_partition_keys()
                    if partitions.get_partition_key_from_str(k).keys_by_dimension[RECIPE] not in blocked}
        else:
            keys = {k for k in recipes if k not in blocked}
        runnable = context.candidate_subset.compute_intersection_with_partition_keys(keys)
        if not self.speaks:
            return AutomationResult(context, runnable)
        # The sensor's tick logger (what the UI shows under the tick's logs). AutomationContext.log is not it: Dagster 1.13
        # makes it with getChild() on a logger it never registered, so it is a child of the global "dagster" logger and
        # its records reach only the code server's console. test_automation_runs reads the tick log and fails if this moves.
        log = context._root_log
        said = json.loads(context.cursor) if context.cursor else {}
        for name, (level, why) in sorted(blocked.items()):
            if said.get(name) != why:
                getattr(log, level)(f"recipe '{name}' is not started by automation: {why}")
        for name in sorted(set(said) - set(blocked)):
            log.info(f"recipe '{name}' can run here again: automation starts it when it is stale")
        return AutomationResult(context, runnable, cursor=json.dumps({n: why for n, (_, why) in blocked.items()}, sort_keys=True))


def gate_recipe_assets(assets: Sequence[AssetsDefinition], recipes: StaticPartitionsDefinition, launcher: TrainingLauncher,
                       hub: HubClient) -> list[AssetsDefinition]:
    """``assets`` with ``recipe_runs_here`` added to the automation condition of every recipe-partitioned asset, those
    partitioned by recipe and another dimension too (batch predictions: drop x recipe). The assets with no gated
    dependency (the first of each recipe's chain) log the reasons."""
    readiness = RecipeReadiness(launcher, hub)

    def by_recipe(partitions) -> bool:
        return partitions == recipes or (isinstance(partitions, MultiPartitionsDefinition) and RECIPE in partitions.partition_dimension_names
                                         and partitions.get_partitions_def_for_dimension(RECIPE) == recipes)

    gated = {s.key for a in assets if isinstance(a, AssetsDefinition) and by_recipe(a.partitions_def)
             for s in a.specs if s.automation_condition is not None}

    def gate(spec):
        if spec.key not in gated:
            return spec
        speaks = not any(d.asset_key in gated for d in spec.deps)
        condition = (spec.automation_condition & RecipeRunsHere(readiness, speaks)).with_label("on_change, if the recipe runs here")
        return spec.replace_attributes(automation_condition=condition)

    return [a.map_asset_specs(gate) if isinstance(a, AssetsDefinition) else a for a in assets]


with warnings.catch_warnings():  # use_user_code_server is beta in Dagster 1.13; it is what runs recipe_runs_here
    warnings.simplefilter("ignore", BetaWarning)
    automation_sensor = AutomationConditionSensorDefinition(
        "automation", target=AssetSelection.all(), default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
        emit_backfills=False, use_user_code_server=True,
        description="Re-materializes exactly the partitions whose inputs, recipe or code changed, one run per partition, "
                    "and skips recipes that cannot run here (see llm_assets.automation).",
    )
