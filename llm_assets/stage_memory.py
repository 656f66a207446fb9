"""Memory one stage of a recipe needs: per accelerator and on the host, for fit checks and pod requests.

``stage_memory(recipe, stage)`` is what the recipe check, the Kubernetes/ECS launchers and the GPU
acceptance run read. The figures come from ``llm_assets.training.memory`` (plain numbers in); this
module turns a recipe into those numbers, one stage at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_assets.recipes import Recipe, estimate_memory

STAGE_NAMES = ("base", "cpt", "sft", "reward", "rlhf", "quantize", "evaluate")
TRAINING = ("cpt", "sft", "reward", "rlhf")
HOST_RUNTIME_GB = 4.0  # Python, torch, transformers and the CUDA libraries resident in a worker process


@dataclass(frozen=True)
class StageMemory:
    """Peak memory of one stage: ``device_gb`` per accelerator (0 when the stage runs on the CPU) and
    ``host_gb`` of RAM for the whole worker (all its processes); ``parts`` add up to the peak."""

    stage: str
    device_gb: float
    host_gb: float
    gpus: int
    parts: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"{self.device_gb:.1f} GB per GPU x {self.gpus}" if self.gpus else "CPU only"
        parts = " + ".join(f"{k} {v:.1f}" for k, v in self.parts.items())
        return f"{self.stage}: {where}, host {self.host_gb:.1f} GB ({parts})"


def stage_memory(recipe: Recipe, stage: str) -> StageMemory:
    """The peak memory of ``stage`` (one of STAGE_NAMES) for ``recipe``."""
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_NAMES)}")
    est = estimate_memory(recipe)
    gpus = recipe.resources.gpus
    if stage in TRAINING:
        parts = {"weights": est.weights_gb, "gradients": est.gradients_gb, "optimizer": est.optimizer_gb,
                 "activations": est.activations_gb, "overhead": est.overhead_gb}
    else:
        parts = {"weights": est.weights_gb, "overhead": est.overhead_gb}
    total = sum(parts.values())
    processes = recipe.distributed.processes if stage in TRAINING else 1
    if gpus:
        return StageMemory(stage, total, HOST_RUNTIME_GB * processes, gpus, parts)
    return StageMemory(stage, 0.0, total + HOST_RUNTIME_GB * processes, 0, parts)
