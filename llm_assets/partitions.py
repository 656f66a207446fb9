"""Partitions: data assets by drop (one dynamic partition per landed file), models by recipe."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition, StaticPartitionsDefinition

from llm_assets.recipes import recipe_names
from llm_assets.resources.landing import KINDS

DROP_PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    kind: DynamicPartitionsDefinition(name=f"{kind}_drops") for kind in KINDS
}


def recipe_partitions() -> StaticPartitionsDefinition:
    """One partition per file in configs/recipes/ (a new file appears on the next code-location reload)."""
    return StaticPartitionsDefinition(recipe_names())
