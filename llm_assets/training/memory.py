"""Per-device training memory, estimated from a recipe before any GPU time is spent.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, section 3.1): with mixed-precision
Adam each parameter costs 2 bytes of weights, 2 of gradients and K = 12 of optimizer state
(fp32 master copy, momentum, variance); ZeRO stage 1/2/3 divides the optimizer states /
+ gradients / + parameters across the N_d data-parallel devices. Activations follow
Korthikanti et al. 2022 (``sbh(34 + 5as/h)`` bytes per layer in 16-bit, ``2sbh`` per layer with
full activation checkpointing), plus the logits, which dominate for large vocabularies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_assets.recipes import ArchitectureGroup, Recipe

GB = 1e9
FRAMEWORK_OVERHEAD_BYTES = 1.0 * GB  # CUDA context, kernels, allocator fragmentation


@dataclass(frozen=True)
class ModelStates:
    parameters: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer


def zero_model_states(
    n_params: float,
    *,
    zero_stage: int,
    n_devices: int,
    trainable: float | None = None,
    weight_bytes: float = 2.0,
    grad_bytes: float = 2.0,
    optimizer_bytes: float = 12.0,
) -> ModelStates:
    """Bytes of model states per device; ``trainable`` defaults to all parameters."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {zero_stage}")
    trainable = n_params if trainable is None else trainable
    n = max(n_devices, 1)
    params = n_params * weight_bytes / (n if zero_stage >= 3 else 1)
    grads = trainable * grad_bytes / (n if zero_stage >= 2 else 1)
    optim = trainable * optimizer_bytes / (n if zero_stage >= 1 else 1)
    return ModelStates(params, grads, optim)


def parameter_count(a: "ArchitectureGroup") -> int:
    """Parameters of a Llama-style decoder (no biases)."""
    h, i, L, V = a.hidden_size, a.intermediate_size, a.num_layers, a.vocab_size
    kv = h // a.num_heads * (a.num_kv_heads or a.num_heads)
    attn = h * h * 2 + h * kv * 2  # q, o ; k, v
    mlp = 3 * h * i
    norms = 2 * h
    embed = V * h * (1 if a.tie_word_embeddings else 2)
    return L * (attn + mlp + norms) + embed + h


def lora_parameter_count(a: "ArchitectureGroup", r: int, target_modules: list[str] | str) -> int:
    h, i = a.hidden_size, a.intermediate_size
    kv = h // a.num_heads * (a.num_kv_heads or a.num_heads)
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    names = list(shapes) if target_modules == "all-linear" else [m for m in target_modules if m in shapes]
    return a.num_layers * sum(r * (shapes[m][0] + shapes[m][1]) for m in names)


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    trainable: int
    zero_stage: int
    devices: int
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.gradients_gb + self.optimizer_gb + self.activations_gb + self.overhead_gb

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_gb": round(self.total_gb, 2)}

    def describe(self) -> str:
        return (
            f"{self.total_gb:.1f} GB per device = weights {self.weights_gb:.1f} + gradients {self.gradients_gb:.1f} "
            f"+ optimizer {self.optimizer_gb:.1f} + activations {self.activations_gb:.1f} + overhead {self.overhead_gb:.1f} "
            f"({self.parameters / 1e9:.2f} B parameters, {self.trainable / 1e6:.1f} M trainable, "
            f"ZeRO-{self.zero_stage} over {self.devices} device(s))"
        )


def deepspeed_stage(config_path: str | None) -> int:
    if not config_path:
        return 0
    import json

    from llm_assets.paths import project_root

    path = Path(config_path)
    path = path if path.is_absolute() else project_root() / path
    return int(json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0))


def estimate_recipe(recipe: "Recipe") -> MemoryEstimate:
    """Peak per-device memory of the SFT stage, the largest of the training stages."""
    a = recipe.model.architecture
    n = parameter_count(a)
    method = recipe.sft.method
    lowp = recipe.model.dtype in ("bfloat16", "float16") or (recipe.model.dtype == "auto" and recipe.resources.gpus > 0)
    act_bytes = 2 if lowp else 4
    if method == "full":
        trainable = n
        weight_b, grad_b = (2.0, 2.0) if lowp else (4.0, 4.0)
        optim_b = 12.0 if lowp else 8.0  # mixed precision keeps an fp32 master copy
    else:
        trainable = lora_parameter_count(a, recipe.lora.r, recipe.lora.target_modules)
        # 4-bit NF4 with double quantization: 0.5 byte + ~0.127 bit/param of constants; embeddings stay 16-bit
        embed = a.vocab_size * a.hidden_size * (1 if a.tie_word_embeddings else 2)
        body = n - embed
        weight_b = ((body * (0.5 + 0.127 / 8) + embed * act_bytes) / n) if method == "qlora" else float(act_bytes)
        grad_b, optim_b = 4.0, 12.0  # adapters train in fp32
    processes = recipe.distributed.processes
    stage = deepspeed_stage(recipe.distributed.deepspeed) if processes > 1 else 0
    states = zero_model_states(
        n, zero_stage=stage, n_devices=processes, trainable=trainable,
        weight_bytes=weight_b, grad_bytes=grad_b, optimizer_bytes=optim_b,
    )
    s, b, h, L = recipe.data.max_length, recipe.sft.per_device_batch_size, a.hidden_size, a.num_layers
    checkpointing = recipe.sft.gradient_checkpointing
    if checkpointing is None:
        checkpointing = recipe.resources.gpus > 0
    per_layer = 2 * s * b * h if checkpointing else s * b * h * (34 + 5 * a.num_heads * s / h)
    activations = L * per_layer * act_bytes / 2 + s * b * a.vocab_size * 4 * 2  # fp32 logits and their gradient
    overhead = FRAMEWORK_OVERHEAD_BYTES if recipe.resources.gpus > 0 else 0.0
    return MemoryEstimate(
        parameters=n, trainable=trainable, zero_stage=stage, devices=processes,
        weights_gb=states.parameters / GB, gradients_gb=states.gradients / GB, optimizer_gb=states.optimizer / GB,
        activations_gb=activations / GB, overhead_gb=overhead / GB,
    )


def check_recipe_fits(recipe: "Recipe", path: Path) -> MemoryEstimate:
    """Reject a recipe whose estimate exceeds the GPU memory it declares, with the numbers."""
    from llm_assets.recipes import RecipeError

    estimate = estimate_recipe(recipe)
    limit = recipe.resources.gpu_memory_gb
    if limit is not None and estimate.total_gb > limit:
        raise RecipeError(
            f"{path}: the estimate does not fit resources.gpu_memory_gb = {limit:g}: {estimate.describe()}. "
            "Lower data.max_length or sft.per_device_batch_size, use sft.method: qlora, "
            "or add processes with a ZeRO config under distributed."
        )
    return estimate


def main() -> None:
    """``python -m llm_assets.training.memory``: the estimate of every recipe in configs/recipes/."""
    from llm_assets.recipes import load_all_recipes

    for name, recipe in load_all_recipes().items():
        limit = recipe.resources.gpu_memory_gb
        print(f"{name}: {estimate_recipe(recipe).describe()}" + (f"; fits {limit:g} GB" if limit else ""))


if __name__ == "__main__":
    main()
