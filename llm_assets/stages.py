"""The stage table: for every model stage, the one place that says what it starts from, which data it
reads, which recipe fields decide its result and which gates guard it.

The asset deps, the stage spec, the training identity (fingerprint) and the gate checks are all
generated from this table, so they cannot drift apart. A stage's identity is exactly what it
reads: gate thresholds, tracking and resources never retrain anything, and a field that does not
apply (``lora.*`` under a full fine-tune) does not count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from llm_assets.recipes import BUILTIN_PREFIX, Recipe, deepspeed_config_path

# Fields every trained stage reads through the hardware choice and the launcher.
RUNTIME = ("model.dtype", "model.attn_implementation", "distributed.processes", "distributed.deepspeed")
# Adapter fields: read only when the recipe trains adapters (sft.method lora/qlora).
ADAPTER = ("sft.method", "lora")
# QLoRA's 4-bit base: how SFT quantizes it (not the quantization stage's bits or gate).
QLORA = ("quantization.quant_type", "quantization.double_quant")
# Training-group fields that change only logs and checkpoints, never the result.
RECORD_ONLY = ("logging_steps", "save_steps")
# Training-group speed switches: the same loss by other kernels (Liger, TRL padding-free batches) or the same sampling
# distribution from another engine (vLLM), equal up to rounding; their None default is resolved per machine anyway.
SPEED_ONLY = ("padding_free", "use_liger_kernel", "use_vllm")
# Data kinds a stage reads only for held-out measures (RLHF's SFT replies beside the policy's, quantized vs unquantized loss).
MEASURED_ONLY = {"rlhf": ("sft",), "quantize": ("sft",)}


@dataclass(frozen=True)
class Gate:
    """A blocking check on a stage's stored metrics: ``metric`` compared with a threshold."""

    check: str
    description: str
    metric: str
    # (rlhf.algorithm, metric) pairs: what the gate reads instead for an algorithm that measures itself otherwise
    # (DPO has no sampled replies judged against SFT: its own preference accuracy on held-out pairs)
    metric_by_algorithm: tuple[tuple[str, str], ...] = ()
    threshold: str | None = None  # dotted recipe field holding the threshold; None: compared with ``baseline``
    baseline: str | None = None  # metric of the parent the result must beat
    higher_is_better: bool = True
    advice: str = ""

    def metric_for(self, recipe: Recipe) -> str:
        algorithm = recipe.rlhf.algorithm if recipe.rlhf is not None else None
        return dict(self.metric_by_algorithm).get(algorithm, self.metric)


@dataclass(frozen=True)
class Stage:
    name: str  # the training entry point: python -m llm_assets.training NAME
    asset: str
    description: str
    group: str | None  # recipe group whose absence makes the stage a pass-through of its parent
    parents: tuple[str, ...]  # stages whose model this one may start from (asset deps)
    data: tuple[str, ...]  # data kinds it trains or evaluates on
    reads: tuple[str, ...]  # dotted recipe fields (or whole groups) that decide its result
    gates: tuple[Gate, ...] = ()
    adapters: bool = False  # reads the adapter fields when the recipe trains adapters

    def active(self, recipe: Recipe) -> bool:
        return self.group is None or getattr(recipe, self.group) is not None

    def parent(self, recipe: Recipe) -> str | None:
        """The stage whose model this one starts from for ``recipe``."""
        if self.name == "reward" and recipe.reward is not None:
            return recipe.reward.base
        return self.parents[0] if self.parents else None

    def inputs(self, recipe: Recipe) -> dict[str, str]:
        """Model role -> stage: what the training process receives."""
        parent = self.parent(recipe)
        roles = {"model": parent} if parent else {}
        if self.name == "rlhf" and recipe.reward is not None:  # RLOO/GRPO optimise it; DPO is judged by it
            roles["reward"] = "reward"
        return roles

    def data_kinds(self, recipe: Recipe) -> tuple[str, ...]:
        """The data kinds this stage reads for ``recipe``; the builtin base reads what every active later stage reads."""
        if self.name != "base":
            return self.data
        kinds = {k for s in STAGES.values() if s.name != "base" and s.active(recipe) for k in s.data}
        return tuple(k for k in ("pretraining", "sft", "preference") if k in kinds)

    def trains_on(self, recipe: Recipe) -> tuple[str, ...]:
        """The data kinds this stage fits on (their train split); the rest of ``data_kinds`` it only measures on."""
        if self.name == "base":  # a builtin base trains its tokenizer on them; a hub base is only measured
            return self.data_kinds(recipe) if recipe.model.base.startswith(BUILTIN_PREFIX) else ()
        return tuple(k for k in self.data if k not in MEASURED_ONLY.get(self.name, ()))

    def identity(self, recipe: Recipe) -> dict[str, Any]:
        """The recipe values that decide this stage's result (gate thresholds left out)."""
        fields = [*self.reads]
        if self.adapters and recipe.sft.method != "full":
            fields += ADAPTER
        if self.name == "sft" and recipe.sft.method == "qlora":
            fields += QLORA
        dumped = recipe.model_dump(mode="json")
        out = {f: _get(dumped, f) for f in fields}
        for value in out.values():
            if isinstance(value, dict):
                for key in (*RECORD_ONLY, *SPEED_ONLY):
                    value.pop(key, None)
        if "distributed.deepspeed" in out and out["distributed.deepspeed"]:  # its content decides, not its file name
            path = deepspeed_config_path(out["distributed.deepspeed"])
            out["deepspeed_config"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        for gate in self.gates:
            if gate.threshold:
                group, _, key = gate.threshold.partition(".")
                if isinstance(out.get(group), dict):
                    out[group] = {k: v for k, v in out[group].items() if k != key}
        return out

    def fingerprint(self, recipe: Recipe, inputs: dict[str, str], code_version: str, options: dict[str, Any]) -> str:
        """Identity of one training run: the same fingerprint is the same result (reused, or resumed from checkpoints)."""
        body = {"stage": self.name, "recipe": self.identity(recipe), "inputs": inputs, "code_version": code_version,
                "options": options}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("base", "base_model", "builtin:tiny built from the corpora (BPE tokenizer + fresh weights), or a hub snapshot at "
          "the pinned revision.", None, (), ("pretraining", "sft", "preference"),
          ("model.base", "model.revision", "model.architecture", "model.trust_remote_code", "model.seed", "data.max_length")),
    Stage("cpt", "cpt_model", "Continued pre-training on every validated pre-training drop; the base model itself when "
          "the recipe has no cpt group.", "cpt", ("base",), ("pretraining",),
          ("cpt", "data.max_length", "data.packing", *RUNTIME)),
    Stage("sft", "sft_model", "Supervised fine-tuning (full, LoRA or QLoRA per recipe), loss on completions only; resumes "
          "from its last checkpoint.", None, ("cpt",), ("sft",),
          ("sft", "data.max_length", "data.packing", "data.chat_template", "data.truncation", *RUNTIME),
          (Gate("sft_beats_parent", "Held-out completion loss below the parent model's.", "eval_loss",
                baseline="parent_eval_loss", higher_is_better=False,
                advice="SFT did not lower the held-out loss: check the learning rate, steps and data"),),
          adapters=True),
    Stage("reward", "reward_model", "Pairwise reward model (sequence-classification head) on every validated preference "
          "drop, started from the model reward.base names.", "reward", ("sft", "cpt", "base"), ("preference",),
          ("reward", "data.max_length", "data.chat_template", *RUNTIME),
          (Gate("reward_accuracy_above_threshold", "Pairwise accuracy on held-out preference pairs at least "
                "reward.min_accuracy.", "reward_accuracy", threshold="reward.min_accuracy",
                advice="raise reward.max_steps or the learning rate, or check the preference data"),),
          adapters=True),
    Stage("rlhf", "rlhf_policy", "RLOO / GRPO against the reward model with a KL penalty to SFT, or offline DPO; reward, "
          "win rate and KL reported.", "rlhf", ("sft", "reward"), ("preference", "sft"),
          ("rlhf", "data.max_length", "data.chat_template", *RUNTIME),
          (Gate("policy_beats_sft", "Win rate against SFT on held-out prompts, as the reward model judges sampled replies "
                "(DPO: its preference accuracy on held-out pairs), at least rlhf.min_win_rate.", "win_rate_vs_sft",
                metric_by_algorithm=(("dpo", "preference_accuracy"),), threshold="rlhf.min_win_rate",
                advice="the policy does not beat SFT: raise rlhf.max_steps or rlhf.learning_rate, lower rlhf.beta, or "
                       "check the reward model and the preference data"),
           Gate("kl_within_bound", "KL(policy || SFT) per held-out reply at most rlhf.max_kl.", "kl_to_sft",
                threshold="rlhf.max_kl", higher_is_better=False,
                advice="the policy drifted too far from SFT: raise rlhf.beta, lower rlhf.learning_rate or rlhf.max_steps")),
          adapters=True),
    Stage("quantize", "quantized_model", "Adapters merged, then bitsandbytes 4-bit NF4 (or 8-bit); size ratio and "
          "eval-loss delta reported.", "quantization", ("rlhf",), ("sft",),
          ("quantization", "data.max_length", "data.chat_template", "model.dtype"),  # merged and quantized in that dtype
          (Gate("eval_loss_delta_within_bound", "Quantized eval loss minus unquantized at most "
                "quantization.max_eval_loss_delta.", "eval_loss_delta", threshold="quantization.max_eval_loss_delta",
                higher_is_better=False, advice="use 8-bit, or raise quantization.max_eval_loss_delta if the loss is acceptable"),)),
)}

MODEL_ASSETS = [s.asset for s in STAGES.values()]


def gate_outcome(gate: Gate, recipe: Recipe, metrics: dict[str, Any]) -> tuple[bool, dict[str, Any], str]:
    """(passed, metadata, one-line reason when failed) of ``gate`` on a stage's stored ``metrics``."""
    metric = gate.metric_for(recipe)
    value = metrics.get(metric)
    if gate.threshold:
        bound = _get(recipe.model_dump(mode="json"), gate.threshold)
        label = gate.threshold
    else:
        bound, label = metrics.get(gate.baseline), gate.baseline
    if value is None or bound is None:
        return False, {}, f"the stored metrics have no {metric!r} or {label!r}: materialize the stage again"
    # a threshold may be met exactly; a parent's figure must be beaten
    relation = ">=" if gate.higher_is_better else ("<=" if gate.threshold else "<")
    passed = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[relation]
    meta = {metric: round(float(value), 6), label: round(float(bound), 6)}
    reason = "" if passed else f"{metric} {value:.4g} is not {relation} {label} {bound:.4g}: {gate.advice}"
    return passed, meta, reason
