"""Declarative automation: what re-materializes by itself, and when.

A target partition runs when, since it was last requested or updated, one of its inputs changed
(a dependency got a new data version with no failed blocking check, or is being requested on this tick), or
its own ``code_version`` changed; and only once every input has data and none is materializing.
A tick when nothing changed requests nothing, and a drop or model whose blocking check failed
propagates nothing. Drops that never validated do not hold the models back: the training assets
leave them out and say so.
"""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus
from dagster import AutomationCondition as AC


def input_changed() -> AC:
    """A dependency partition whose data version changed in another run with none of its blocking checks failed, or one
    requested now. Data versions are content hashes, so re-materializing unchanged data (a manual click, a model
    that reused its version) changes nothing downstream."""
    return AC.any_deps_match(
        (AC.data_version_changed() & ~AC.executed_with_root_target()
         & ~AC.any_checks_match(AC.check_failed(), blocking_only=True)).with_label("new data version, blocking checks passed")
        | AC.will_be_requested()
    ).with_label("an input changed")


def on_change() -> AC:
    return (
        (input_changed() | AC.code_version_changed()).since_last_handled()
        & AC.all_deps_match(~AC.missing() | AC.will_be_requested()).with_label("every input has data")
        & ~AC.any_deps_in_progress()
        & ~AC.in_progress()
    ).with_label("on_change")


automation_sensor = AutomationConditionSensorDefinition(
    "automation", target=AssetSelection.all(), default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    description="Re-materializes exactly the partitions whose inputs, recipe or code changed (see llm_assets.automation).",
)
