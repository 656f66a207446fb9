"""Per-device memory of every stage, estimated before any GPU time is spent.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, section 3.1): ZeRO stage 1/2/3 divides
the optimizer states / + gradients / + parameters across the N_d data-parallel devices. Under
DeepSpeed, mixed-precision Adam costs 2 bytes of weights, 2 of gradients and K = 12 of optimizer
state (fp32 master copy, momentum, variance) per parameter. Without DeepSpeed, the Trainer's torch
AdamW keeps its two moments in the weights' own dtype (``zeros_like``): 2 + 2 + 4 bytes for bf16
weights, 4 + 4 + 8 for fp32. LoRA adapters train in fp32 (PEFT's ``autocast_adapter_dtype``) beside
frozen base weights; QLoRA's base is bitsandbytes NF4 (Dettmers et al. 2023: 0.5 byte per weight
plus 0.127 bit of double-quantized constants, 0.5 bit without double quantization).

Activations follow Korthikanti et al. 2022 (section 4.1) worked out for a Llama layer (RMSNorm,
grouped-query attention, SwiGLU MLP, no dropout): ``sb(22h + 8 kv + 8i)`` bytes in 16-bit, plus
``5as^2b`` for eager attention, which stores the score matrices (SDPA and FlashAttention recompute
them). With activation checkpointing each layer keeps its 16-bit input (``2sbh``) and one layer is
recomputed at a time. TRL 1.16's trainers project the LM head in tiles (``add_fused_lm_head``: 4,096
tokens x 32,768 vocabulary entries of fp32 at a time), never the whole logits; evaluation losses are
assumed to go through the same head (``Trainer.evaluate`` of those trainers): whole logits of a
32-row batch at 2,048 tokens and a 128 k vocabulary would be 84 GB. Generation keeps only the last
position's logits.
Generation keeps a KV cache of ``2 L kv`` values per token (Pope et al. 2022).

The formulas take plain numbers (a ``Shape`` counted from the model's config, ``TrainingSetup``),
not a recipe: ``llm_assets.stage_memory`` turns a recipe's stage into them, and
``python -m llm_assets.training.memory`` prints every recipe x stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from llm_assets.training.memory.shape import (
    Architecture,
    Shape,
    architecture_shape,
    lora_parameters,
    modules_to_save_parameters,
)

GB = 1e9
FRAMEWORK_OVERHEAD_BYTES = 1.0 * GB  # CUDA context, kernels, allocator fragmentation (not in max_memory_allocated)
HEAD_TILE_TOKENS, HEAD_TILE_VOCAB = 4096, 32768  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE x its vocabulary chunk
NF4_BYTES = {True: 0.5 + 0.127 / 8, False: 0.5 + 0.5 / 8}  # per quantized weight, by double quantization
INT8_BYTES = 1.0  # LLM.int8(): one byte per weight (the per-row fp32 scales are negligible)


@dataclass(frozen=True)
class TrainingSetup:
    """What one device holds while training one model: its shape, how it is trained and split, and the batch."""

    shape: Shape
    method: Literal["full", "lora", "qlora"]
    sequence_length: int
    batch_size: int  # sequences in one micro-batch (a reward or DPO pair is two)
    dtype_bytes: int  # weights and activations: 2 (bf16/fp16) or 4 (fp32)
    checkpointing: bool  # activation checkpointing per decoder layer
    on_gpu: bool  # adds the CUDA context and allocator overhead
    lora_r: int = 16
    lora_target_modules: list[str] | str = "all-linear"
    modules_to_save: tuple[str, ...] = ()
    double_quant: bool = True
    processes: int = 1
    zero_stage: int = 0
    deepspeed: bool = False  # DeepSpeed's mixed-precision optimizer (fp32 master weights and moments)
    eager_attention: bool = False  # attention scores stored (no SDPA / FlashAttention)
    score_head: bool = False  # a sequence-classification model (reward): a one-output head instead of the LM head


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
    """Parameters of the Llama decoder ``a`` describes, counted on the meta device."""
    return architecture_shape(a).parameters


def weights_bytes(shape: Shape, dtype_bytes: int, bits: int | None = None, double_quant: bool = True,
                  score_head: bool = False) -> float:
    """Bytes of one model's weights: 16/32-bit, or the decoder's linear layers in 4/8 bits (bitsandbytes keeps the
    embeddings, norms, biases and heads in ``dtype_bytes``)."""
    total = shape.reward_parameters if score_head else shape.parameters
    if bits is None:
        return total * dtype_bytes
    per_weight = NF4_BYTES[double_quant] if bits == 4 else INT8_BYTES
    return shape.decoder_linear * per_weight + (total - shape.decoder_linear) * dtype_bytes


def layer_activation_bytes(shape: Shape, tokens: int, sequence_length: int, dtype_bytes: int, eager: bool) -> float:
    """Activations one decoder layer keeps for backward over ``tokens`` tokens (Korthikanti et al., Llama layer)."""
    h, kv, i = shape.hidden, shape.kv_dim, shape.intermediate
    per_token = (22 * h + 8 * kv + 8 * i) * dtype_bytes / 2
    scores = 5 * shape.heads * sequence_length * tokens * dtype_bytes / 2 if eager else 0.0
    return tokens * per_token + scores


def training_activation_bytes(shape: Shape, tokens: int, sequence_length: int, dtype_bytes: int, checkpointing: bool,
                              eager: bool = False, score_head: bool = False) -> float:
    """Every layer's activations (or, checkpointed, every layer's input plus one layer recomputed) and the head's."""
    one = layer_activation_bytes(shape, tokens, sequence_length, dtype_bytes, eager)
    layers = shape.layers * 2 * tokens * shape.hidden * dtype_bytes / 2 + one if checkpointing else shape.layers * one
    if score_head:
        return layers + tokens * shape.hidden * dtype_bytes
    return layers + 2 * head_tile_bytes(shape, tokens) + tokens * shape.hidden * 4  # fwd/bwd tiles, fp32 hidden states


def head_tile_bytes(shape: Shape, tokens: int) -> float:
    """One fp32 tile of TRL's fused LM head (its logits are never whole)."""
    return min(tokens, HEAD_TILE_TOKENS) * min(shape.vocab, HEAD_TILE_VOCAB) * 4


def forward_bytes(shape: Shape, tokens: int, dtype_bytes: int, logits_tokens: int = 0) -> float:
    """Transient memory of an inference forward over ``tokens``: one layer's working set, the loss through the fused
    head's tiles, and whole logits for ``logits_tokens`` positions (generation's last position, in fp32)."""
    layer = tokens * (4 * shape.hidden + 3 * shape.intermediate) * dtype_bytes
    return layer + head_tile_bytes(shape, tokens) + logits_tokens * shape.vocab * 4


def kv_cache_bytes(shape: Shape, sequences: int, length: int, dtype_bytes: int) -> float:
    """Keys and values of every layer for ``sequences`` x ``length`` tokens."""
    return 2 * shape.layers * sequences * length * shape.kv_dim * dtype_bytes


def generation_bytes(shape: Shape, sequences: int, prompt_length: int, new_tokens: int, dtype_bytes: int) -> float:
    """Batched generation: the KV cache of whole sequences plus the prompt's prefill forward (last-position logits)."""
    return (kv_cache_bytes(shape, sequences, prompt_length + new_tokens, dtype_bytes)
            + forward_bytes(shape, sequences * prompt_length, dtype_bytes, logits_tokens=sequences))


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak per-device memory of training one model."""

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

    def parts(self) -> dict[str, float]:
        return {"weights": self.weights_gb, "gradients": self.gradients_gb, "optimizer": self.optimizer_gb,
                "activations": self.activations_gb}

    def describe(self) -> str:
        return (
            f"{self.total_gb:.1f} GB per device = weights {self.weights_gb:.1f} + gradients {self.gradients_gb:.1f} "
            f"+ optimizer {self.optimizer_gb:.1f} + activations {self.activations_gb:.1f} + overhead {self.overhead_gb:.1f} "
            f"({self.parameters / 1e9:.2f} B parameters, {self.trainable / 1e6:.1f} M trainable, "
            f"ZeRO-{self.zero_stage} over {self.devices} device(s))"
        )


def estimate(setup: TrainingSetup) -> MemoryEstimate:
    """Peak per-device memory of training one model as ``setup`` says."""
    shape, w = setup.shape, setup.dtype_bytes
    n = shape.reward_parameters if setup.score_head else shape.parameters
    if setup.method == "full":
        trainable = n
        weights = float(n * w)
        grad_b, optim_b = (2.0, 12.0) if setup.deepspeed and w == 2 else (float(w), 2.0 * w)
        adapters = 0.0
    else:
        adapters = lora_parameters(shape, setup.lora_r, setup.lora_target_modules)
        saved = modules_to_save_parameters(shape, list(setup.modules_to_save))
        trainable = adapters + saved + (shape.hidden if setup.score_head else 0)
        bits = 4 if setup.method == "qlora" else None
        weights = weights_bytes(shape, w, bits, setup.double_quant, setup.score_head) + saved * w + adapters * 4
        grad_b, optim_b = 4.0, 8.0  # fp32 adapters: their gradients and two Adam moments
    # weights are whole here (frozen bases included); ZeRO-3 partitions them like the trainable states
    states = zero_model_states(trainable, zero_stage=setup.zero_stage, n_devices=setup.processes,
                               weight_bytes=0.0, grad_bytes=grad_b, optimizer_bytes=optim_b)
    weights /= setup.processes if setup.zero_stage >= 3 else 1
    tokens = setup.sequence_length * setup.batch_size
    activations = training_activation_bytes(shape, tokens, setup.sequence_length, w, setup.checkpointing,
                                            setup.eager_attention, setup.score_head)
    overhead = FRAMEWORK_OVERHEAD_BYTES if setup.on_gpu else 0.0
    return MemoryEstimate(
        parameters=n, trainable=int(trainable), zero_stage=setup.zero_stage, devices=setup.processes,
        weights_gb=weights / GB, gradients_gb=states.gradients / GB, optimizer_gb=states.optimizer / GB,
        activations_gb=activations / GB, overhead_gb=overhead / GB,
    )
