"""recipe: an observable source asset, one partition per recipe file, data version = recipe hash.

Every model asset depends on it, so editing one recipe (any effective value; not comments or key
order) changes exactly that partition's data version and marks only its models stale.
"""

from dagster import AssetExecutionContext, AssetsDefinition, DataVersionsByPartition, Failure, StaticPartitionsDefinition, observable_source_asset

from llm_assets.recipes import RecipeError, load_recipe


def build_recipe_asset(partitions: StaticPartitionsDefinition) -> AssetsDefinition:
    @observable_source_asset(name="recipe", partitions_def=partitions, group_name="models",
                             description="configs/recipes/<partition>.yaml; its data version is the recipe hash.")
    def recipe(context: AssetExecutionContext) -> DataVersionsByPartition:
        """Every loadable recipe is observed; a broken one is reported and left out, so it never blocks the others
        (its own models fail with its RecipeError). Observing a broken recipe's own partition fails with that error."""
        versions, broken = {}, {}
        for name in partitions.get_partition_keys():
            try:
                versions[name] = load_recipe(name).recipe_hash
            except RecipeError as e:
                broken[name] = str(e)
                context.log.error(f"recipe {name!r} not observed: {e}")
        own = context.partition_key if context.has_partition_key else None
        if own in broken or not versions:
            raise Failure(description=broken.get(own) or "; ".join(broken.values()))
        return DataVersionsByPartition(versions)

    return recipe
