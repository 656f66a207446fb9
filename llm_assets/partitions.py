"""Partitions: data assets by drop (one dynamic partition per landed file), models by recipe."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from dagster import DagsterInvalidDefinitionError, DynamicPartitionsDefinition, PreviewWarning, StaticPartitionsDefinition

from llm_assets.recipes import recipe_names
from llm_assets.resources.landing import KINDS

DROP_PARTITIONS: dict[str, DynamicPartitionsDefinition] = {
    kind: DynamicPartitionsDefinition(name=f"{kind}_drops") for kind in KINDS
}


def recipe_partitions() -> StaticPartitionsDefinition:
    """One partition per file in configs/recipes/ (a new file appears on the next code-location reload).

    A file name Dagster refuses as a partition key (``...``, control characters) is left out instead of
    failing the whole code location, data assets included; `dagster definitions validate` still names it
    (a recipe name must be a valid partition key).
    """
    return StaticPartitionsDefinition([name for name in recipe_names() if is_partition_key(name)])


def is_partition_key(name: str) -> bool:
    """Whether Dagster accepts ``name`` as a partition key (a recipe file's stem must be one)."""
    try:
        StaticPartitionsDefinition([name])
    except DagsterInvalidDefinitionError:
        return False
    return True


@contextmanager
def partitioned_checks():
    """Partitioned asset checks are a Dagster preview; they are what records a check's result per drop or recipe
    (and lets one recipe's gate run alone)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        yield
