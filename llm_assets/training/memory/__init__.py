"""Per-device training memory, estimated before any GPU time is spent.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, section 3.1): with mixed-precision
Adam each parameter costs 2 bytes of weights, 2 of gradients and K = 12 of optimizer state
(fp32 master copy, momentum, variance); ZeRO stage 1/2/3 divides the optimizer states /
+ gradients / + parameters across the N_d data-parallel devices. Activations follow
Korthikanti et al. 2022 (``sbh(34 + 5as/h)`` bytes per layer in 16-bit, ``2sbh`` per layer with
full activation checkpointing), plus the logits, which dominate for large vocabularies.

The estimate takes plain numbers (a ``TrainingSetup``), not a recipe: ``llm_assets.recipes``
resolves a recipe into one and checks the result, so the two modules never import each other.
``python -m llm_assets.training.memory`` (``__main__.py``) prints every recipe's estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Protocol

GB = 1e9
FRAMEWORK_OVERHEAD_BYTES = 1.0 * GB  # CUDA context, kernels, allocator fragmentation


class Architecture(Protocol):
    """The shape of a Llama-style decoder (``recipes.ArchitectureGroup`` is one)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None
    vocab_size: int
    tie_word_embeddings: bool


@dataclass(frozen=True)
class TrainingSetup:
    """What one device holds while training: the model, how it is trained and how it is split."""

    architecture: Architecture
    method: Literal["full", "lora", "qlora"]
    sequence_length: int
    batch_size: int
    low_precision: bool  # 16-bit weights and activations; else fp32
    checkpointing: bool  # full activation checkpointing
    on_gpu: bool  # adds the CUDA context and allocator overhead
    lora_r: int = 16
    lora_target_modules: list[str] | str = "all-linear"
    processes: int = 1
    zero_stage: int = 0


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


def parameter_count(a: Architecture) -> int:
    """Parameters of a Llama-style decoder (no biases)."""
    h, i, L, V = a.hidden_size, a.intermediate_size, a.num_layers, a.vocab_size
    kv = h // a.num_heads * (a.num_kv_heads or a.num_heads)
    attn = h * h * 2 + h * kv * 2  # q, o ; k, v
    mlp = 3 * h * i
    norms = 2 * h
    embed = V * h * (1 if a.tie_word_embeddings else 2)
    return L * (attn + mlp + norms) + embed + h


def lora_parameter_count(a: Architecture, r: int, target_modules: list[str] | str) -> int:
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


def estimate(setup: TrainingSetup) -> MemoryEstimate:
    """Peak per-device memory of one training setup."""
    a = setup.architecture
    n = parameter_count(a)
    act_bytes = 2 if setup.low_precision else 4
    if setup.method == "full":
        trainable = n
        weight_b, grad_b = (2.0, 2.0) if setup.low_precision else (4.0, 4.0)
        optim_b = 12.0 if setup.low_precision else 8.0  # mixed precision keeps an fp32 master copy
    else:
        trainable = lora_parameter_count(a, setup.lora_r, setup.lora_target_modules)
        # 4-bit NF4 with double quantization: 0.5 byte + ~0.127 bit/param of constants; embeddings stay 16-bit
        embed = a.vocab_size * a.hidden_size * (1 if a.tie_word_embeddings else 2)
        body = n - embed
        weight_b = ((body * (0.5 + 0.127 / 8) + embed * act_bytes) / n) if setup.method == "qlora" else float(act_bytes)
        grad_b, optim_b = 4.0, 12.0  # adapters train in fp32
    states = zero_model_states(
        n, zero_stage=setup.zero_stage, n_devices=setup.processes, trainable=trainable,
        weight_bytes=weight_b, grad_bytes=grad_b, optimizer_bytes=optim_b,
    )
    s, b, h, L = setup.sequence_length, setup.batch_size, a.hidden_size, a.num_layers
    per_layer = 2 * s * b * h if setup.checkpointing else s * b * h * (34 + 5 * a.num_heads * s / h)
    activations = L * per_layer * act_bytes / 2 + s * b * a.vocab_size * 4 * 2  # fp32 logits and their gradient
    overhead = FRAMEWORK_OVERHEAD_BYTES if setup.on_gpu else 0.0
    return MemoryEstimate(
        parameters=n, trainable=trainable, zero_stage=setup.zero_stage, devices=setup.processes,
        weights_gb=states.parameters / GB, gradients_gb=states.gradients / GB, optimizer_gb=states.optimizer / GB,
        activations_gb=activations / GB, overhead_gb=overhead / GB,
    )
