"""``python -m llm_assets.training.memory``: the estimate of every recipe in configs/recipes/.

A separate module so that the estimator itself never imports the recipes (which import it).
"""

from llm_assets.recipes import estimate_memory, load_all_recipes


def main() -> None:
    for name, recipe in load_all_recipes().items():
        limit = recipe.resources.gpu_memory_gb
        print(f"{name}: {estimate_memory(recipe).describe()}" + (f"; fits {limit:g} GB" if limit else ""))


if __name__ == "__main__":
    main()
