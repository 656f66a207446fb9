"""Whether this machine can run a recipe's stages now.

Automation asks before it starts a recipe's run, so that a recipe which would fail before any training
(a hub base model neither in the local cache nor downloadable, GPUs this machine does not have) is
skipped instead of failing on every data event. Only stages that run here as subprocesses are judged:
a Kubernetes pod or an ECS task has its own network, Hub cache and GPUs, which this machine cannot see.
"""

from __future__ import annotations

from llm_assets.launch.sizing import local_gpu_shortfall
from llm_assets.recipes import BUILTIN_PREFIX, Recipe
from llm_assets.resources.hub import HubClient
from llm_assets.resources.launcher import TrainingLauncher


def why_not_here(recipe: Recipe, launcher: TrainingLauncher, hub: HubClient) -> str | None:
    """Why ``recipe`` cannot run on this machine now and what to do, every reason in one line, or None when it can."""
    if (recipe.resources.launcher or launcher.kind) != "subprocess":
        return None
    reasons = [why for why in [local_gpu_shortfall(recipe)] if why]
    if not recipe.model.base.startswith(BUILTIN_PREFIX):
        why = hub.unavailable(recipe.model.base, recipe.model.revision or "")
        if why:
            reasons.append(why)
    return "; and ".join(reasons) or None
