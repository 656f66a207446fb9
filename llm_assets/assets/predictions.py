"""Placeholder wiring, filled in by the predictions work (issue 14)."""

from dagster import Definitions, StaticPartitionsDefinition


def predictions_definitions(recipes: StaticPartitionsDefinition) -> Definitions:
    return Definitions()
