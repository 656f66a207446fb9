"""Memory one stage of a recipe needs, per accelerator and on the host: the recipe check, the Kubernetes/ECS
worker sizes and the GPU acceptance run all read ``stage_memory(recipe, stage)``.

Each stage is a few phases (train, generate, evaluate, ...) of what the stage module holds at once, every model
on the stage's device in the recipe's dtype; the peak is the largest phase. The formulas and their sources are in
``llm_assets.training.memory``. What each stage holds, following its module and TRL 1.16:

- base / evaluate: the model, and the larger of an evaluation forward (whole logits) and batched generation.
- cpt / sft: the trained model (full, LoRA, or LoRA on a 4-bit NF4 base for QLoRA), its states and activations.
- reward: a sequence-classification model trained like the recipe's SFT method, on chosen+rejected sequences.
- rlhf RLOO/GRPO: the policy; a frozen reference only for a full fine-tune (with LoRA, TRL disables the adapter
  instead, and at beta 0 it keeps none); the frozen reward model; generation of one generation batch
  (per_device_batch_size x gradient_accumulation_steps completions: TRL counts completions, not prompts, so
  num_generations splits that batch rather than growing it). DPO: policy and (full only) reference on chosen and
  rejected sequences. Then the judge: policy, reference and reward model generating on held-out prompts.
- quantize: the merged model (fp32 on the host), its unquantized evaluation and the 4/8-bit model on the device.

Evaluation is assumed to batch at the stage's ``per_device_batch_size``. This module reads a loaded recipe, never
imports ``llm_assets.recipes`` (which calls it to check every recipe it parses).
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from llm_assets.paths import project_root
from llm_assets.training.memory import (
    FRAMEWORK_OVERHEAD_BYTES,
    GB,
    TrainingSetup,
    estimate,
    forward_bytes,
    generation_bytes,
    weights_bytes,
)
from llm_assets.training.memory.shape import Shape, architecture_shape, cached_config_file, config_file_shape

STAGE_NAMES = ("base", "cpt", "sft", "reward", "rlhf", "quantize", "evaluate")
# The release stages hold one model at a time for inference (lm-eval, merging into a card, batch generation): sized as evaluate
INFERENCE_AS = {"evaluation": "evaluate", "release": "evaluate", "predict": "evaluate"}
TRAINING = ("cpt", "sft", "reward", "rlhf")
GROUP_OF = {"base": "sft", "cpt": "cpt", "sft": "sft", "reward": "reward", "rlhf": "rlhf", "quantize": "sft",
            "evaluate": "sft"}
HOST_RUNTIME_GB = {True: 3.0, False: 1.5}  # a worker's Python, torch, transformers (+ the CUDA libraries on a GPU)
EXACT_MATCH_NEW_TOKENS = 24  # evaluate.exact_match's replies


@dataclass(frozen=True)
class StageMemory:
    """Peak memory of one stage: ``device_gb`` per accelerator (0 when the recipe runs on the CPU), ``host_gb`` of RAM
    for the whole worker (all its processes); ``parts`` add up to ``device_gb`` (or, on a CPU, to the host's share
    beside the runtime) in the ``phase`` that peaks."""

    stage: str
    device_gb: float
    host_gb: float
    gpus: int
    parts: dict[str, float] = field(default_factory=dict)
    phase: str = ""
    source: str = ""  # where the parameter count came from

    @property
    def allocated_gb(self) -> float:
        """The device peak without the CUDA context and allocator slack: what ``torch.cuda.max_memory_allocated`` sees."""
        return max(self.device_gb - self.parts.get("overhead", 0.0), 0.0)

    def describe(self) -> str:
        where = f"{self.device_gb:.1f} GB per GPU x {self.gpus}" if self.gpus else "CPU"
        parts = " + ".join(f"{k} {v:.2f}" for k, v in self.parts.items())
        return f"{self.stage}: {where}, host {self.host_gb:.1f} GB; {self.phase} peak = {parts} ({self.source})"


def model_shape(recipe: Any) -> Shape:
    """The base model's shape: its cached ``config.json`` for a hub model the HF cache holds, else the recipe's
    architecture block (a builtin model is built from it)."""
    m = recipe.model
    if not m.base.startswith("builtin:"):
        path = cached_config_file(m.base, m.revision)
        if path is not None:
            return config_file_shape(path)
    return architecture_shape(m.architecture)


def deepspeed_zero_stage(recipe: Any) -> int:
    """``zero_optimization.stage`` of the recipe's DeepSpeed config under torchrun; 0 otherwise. ``parse_recipe``
    reads it first (``recipes.zero_stage``, which refuses a missing or malformed file) and passes it in."""
    d = recipe.distributed
    if d.processes <= 1 or not d.deepspeed:
        return 0
    path = Path(d.deepspeed) if Path(d.deepspeed).is_absolute() else project_root() / d.deepspeed
    return int(json.loads(path.read_text()).get("zero_optimization", {}).get("stage", 0))


def dtype_bytes(recipe: Any) -> int:
    """Bytes of a weight and an activation: ``dtype: auto`` is bf16 on a GPU and fp32 on a CPU, as the hardware choice."""
    dtype = recipe.model.dtype
    return 2 if dtype in ("bfloat16", "float16") or (dtype == "auto" and recipe.resources.gpus > 0) else 4


def training_setup(recipe: Any, stage: str, *, zero: int | None = None, checkpointing: bool = False,
                   shape: Shape | None = None) -> TrainingSetup:
    """The model ``stage`` trains, in the estimator's terms (RLOO/GRPO sequences are prompt + completion)."""
    group = getattr(recipe, GROUP_OF[stage]) or recipe.sft
    processes = recipe.distributed.processes
    zero = deepspeed_zero_stage(recipe) if zero is None else zero
    pairs = stage == "reward" or (stage == "rlhf" and recipe.rlhf.algorithm == "dpo")
    online = stage == "rlhf" and recipe.rlhf.algorithm != "dpo"
    q = recipe.quantization
    return TrainingSetup(
        shape=shape or model_shape(recipe), method="full" if stage == "cpt" else recipe.sft.method,
        sequence_length=recipe.data.max_length + (recipe.rlhf.max_new_tokens if online else 0),
        batch_size=group.per_device_batch_size * (2 if pairs else 1), dtype_bytes=dtype_bytes(recipe),
        checkpointing=checkpointing, on_gpu=recipe.resources.gpus > 0, lora_r=recipe.lora.r,
        lora_target_modules=recipe.lora.target_modules, modules_to_save=tuple(recipe.lora.modules_to_save),
        double_quant=q.double_quant if q else True, processes=processes, zero_stage=zero if processes > 1 else 0,
        deepspeed=processes > 1 and bool(recipe.distributed.deepspeed),
        eager_attention=recipe.model.attn_implementation == "eager", score_head=stage == "reward")


def stage_memory(recipe: Any, stage: str, *, zero: int | None = None,
                 gradient_checkpointing: bool | None = None) -> StageMemory:
    """Peak memory of ``stage`` (one of STAGE_NAMES) of a loaded ``recipes.Recipe``.

    ``gradient_checkpointing`` overrides the stage's choice (the hardware choice asks for the estimate without it);
    None resolves as the stage does: the recipe's value, else on a GPU only when the estimate without it does not
    fit ``resources.gpu_memory_gb``.
    """
    stage = INFERENCE_AS.get(stage, stage)
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_NAMES)}")
    on_gpu = recipe.resources.gpus > 0
    group = getattr(recipe, GROUP_OF[stage]) or recipe.sft
    zero = deepspeed_zero_stage(recipe) if zero is None else zero
    ckpt = gradient_checkpointing if gradient_checkpointing is not None else group.gradient_checkpointing
    if ckpt is None:
        ckpt = False
        if on_gpu and stage in TRAINING and recipe.resources.gpu_memory_gb:
            unchecked = _stage(recipe, stage, group, zero, False)
            ckpt = unchecked.device_gb > recipe.resources.gpu_memory_gb
    return _stage(recipe, stage, group, zero, ckpt)


def _stage(recipe: Any, stage: str, group: Any, zero: int, ckpt: bool) -> StageMemory:
    on_gpu = recipe.resources.gpus > 0
    shape = model_shape(recipe)
    w = dtype_bytes(recipe)
    s, b = recipe.data.max_length, group.per_device_batch_size
    processes = recipe.distributed.processes if stage in TRAINING else 1
    split = processes if zero >= 3 and stage in TRAINING else 1  # ZeRO-3 partitions frozen models too
    method = recipe.sft.method
    q = recipe.quantization
    double_quant = q.double_quant if q else True

    def train() -> dict[str, float]:
        return estimate(training_setup(recipe, stage, zero=zero, checkpointing=ckpt, shape=shape)).parts()

    def weights(bits: int | None = None, score_head: bool = False) -> float:
        return weights_bytes(shape, w, bits, double_quant, score_head) / GB / split

    def evaluation(batch: int) -> float:
        return forward_bytes(shape, batch * s, w) / GB

    def generation(batch: int, new: int) -> float:
        return generation_bytes(shape, batch, s, new, w) / GB

    host_extra = 0.0  # host memory beside the runtime: models built or merged on the host
    if stage in ("base", "evaluate"):
        phases = {"evaluate": {"weights": weights(), "evaluation": max(evaluation(b), generation(b, EXACT_MATCH_NEW_TOKENS))}}
        if stage == "base" and recipe.model.base.startswith("builtin:"):
            host_extra = shape.parameters * (4 + w) / GB  # built in fp32 on the CPU, saved in the recipe's dtype
    elif stage in ("cpt", "sft"):
        phases = {"train": train(), "evaluate": {"weights": weights(), "evaluation": evaluation(b)}}
    elif stage == "reward":
        phases = {"train": train(),
                  "evaluate": {"weights": weights(score_head=True), "evaluation": evaluation(b)}}
        host_extra = shape.parameters * w / GB if method != "full" else 0.0  # the LoRA SFT model merged on the host
    elif stage == "rlhf":
        phases = _rlhf(recipe, train(), weights, generation, b)
        host_extra = shape.parameters * w / GB if method != "full" else 0.0
    else:  # quantize
        phases = {"quantize": {"unquantized": weights(), "quantized": weights(q.bits if q else 4),
                               "evaluation": evaluation(b)}}
        host_extra = shape.parameters * 4 / GB  # the adapter merged into fp32 weights on the host
    phase, parts = max(phases.items(), key=lambda kv: sum(kv[1].values()))
    gpus = (recipe.resources.gpus if stage in TRAINING else min(recipe.resources.gpus, 1)) if on_gpu else 0
    runtime = HOST_RUNTIME_GB[on_gpu] * processes
    if on_gpu:
        parts = {**parts, "overhead": FRAMEWORK_OVERHEAD_BYTES / GB}
        return StageMemory(stage, sum(parts.values()), runtime + host_extra, gpus, parts, phase, shape.source)
    return StageMemory(stage, 0.0, runtime + max(host_extra, sum(parts.values()) * processes), 0, parts, phase,
                       shape.source)


def _rlhf(recipe: Any, policy: dict[str, float], weights, generation, b: int) -> dict[str, dict[str, float]]:
    """Policy training, TRL's rollout (RLOO/GRPO) and the judge, each with the frozen models beside it."""
    g = recipe.rlhf
    frozen = {"reference": weights()} if recipe.sft.method == "full" and g.beta > 0 else {}
    phases = {"train": {**policy, **frozen}}
    if recipe.reward is not None:  # QLoRA recipes hold frozen and judged models in 4 bits, like their base
        bits = 4 if recipe.sft.method == "qlora" else None
        rm = weights(bits, score_head=True)
        # the judge needs one causal LM at a time beside the reward model (policy, then reference: same prompts)
        phases["judge"] = {"model": weights(bits), "reward model": rm, "generation": generation(b, g.max_new_tokens)}
        if g.algorithm != "dpo":  # DPO reads no reward model while it trains
            frozen["reward model"] = rm
            states = {k: v for k, v in policy.items() if k in ("weights", "optimizer")}  # gradients freed between steps
            rollout = b * g.gradient_accumulation_steps  # TRL's generation batch per device
            phases["train"] = {**policy, **frozen}
            phases["generate"] = {**states, **frozen, "generation": generation(rollout, g.max_new_tokens)}
    return phases
