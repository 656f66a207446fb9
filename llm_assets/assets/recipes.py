"""recipe: an observable source asset, one partition per recipe file, data version = recipe hash.

Every model asset depends on it, so editing one recipe (any effective value; not comments or key
order) changes exactly that partition's data version and marks only its models stale.
"""

from dagster import AssetsDefinition, DataVersionsByPartition, Failure, StaticPartitionsDefinition, observable_source_asset

from llm_assets.recipes import RecipeError, load_recipe


def build_recipe_asset(partitions: StaticPartitionsDefinition) -> AssetsDefinition:
    @observable_source_asset(name="recipe", partitions_def=partitions, group_name="models",
                             description="configs/recipes/<partition>.yaml; its data version is the recipe hash.")
    def recipe() -> DataVersionsByPartition:
        versions = {}
        for name in partitions.get_partition_keys():
            try:
                versions[name] = load_recipe(name).recipe_hash
            except RecipeError as e:
                raise Failure(description=str(e)) from None
        return DataVersionsByPartition(versions)

    return recipe
