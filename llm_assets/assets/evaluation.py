"""Placeholder wiring, filled in by the evaluation work (issue 14)."""

from dagster import Definitions, StaticPartitionsDefinition


def evaluation_definitions(recipes: StaticPartitionsDefinition) -> Definitions:
    return Definitions()
