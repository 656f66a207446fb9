"""Placeholder wiring, filled in by the release work (issue 14)."""

from dagster import Definitions, StaticPartitionsDefinition


def release_definitions(recipes: StaticPartitionsDefinition) -> Definitions:
    return Definitions()
