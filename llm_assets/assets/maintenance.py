"""Placeholder wiring, filled in by the store garbage-collection work (issue 16)."""

from dagster import Definitions


def maintenance_definitions() -> Definitions:
    return Definitions()
