"""``python -m llm_assets.training.memory``: every recipe in configs/recipes/ x every stage it runs.

A separate module so that the estimator itself never imports the recipes (which import it).
"""

from llm_assets.recipes import active_stages, load_all_recipes
from llm_assets.stage_memory import stage_memory


def main() -> None:
    print(f"{'recipe':<18} {'stage':<9} {'GPU GB':>7} {'host GB':>8}  peak phase: parts (GB)")
    for name, recipe in load_all_recipes().items():
        for stage in active_stages(recipe):
            m = stage_memory(recipe, stage)
            gpu = f"{m.device_gb:.1f}" if m.gpus else "-"
            parts = ", ".join(f"{k} {v:.2f}" for k, v in m.parts.items())
            print(f"{name:<18} {stage:<9} {gpu:>7} {m.host_gb:>8.1f}  {m.phase}: {parts}")
        limit = recipe.resources.gpu_memory_gb
        print(f"{'':<18} (parameters from {stage_memory(recipe, 'sft').source}" + (f"; fits {limit:g} GB per GPU)" if limit else ")"))


if __name__ == "__main__":
    main()
