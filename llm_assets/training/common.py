"""What every training stage shares: trainer arguments from a recipe group, checkpoints, saving."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import TrainOutput

from llm_assets.paths import project_root
from llm_assets.recipes import Recipe, TrainGroup
from llm_assets.training.checkpoints import StoreCheckpoints
from llm_assets.training.hardware import Hardware, Request, decide, machine
from llm_assets.training.spec import StageSpec, beside
from llm_assets.training.tracking import check_environment

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# A checkpoint is complete when the Trainer wrote all of these (trainer_state.json is written last).
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
EVAL_POINTS = 4  # held-out evaluations during training, after the one at step 0: a curve, for little time


def hardware_for(recipe: Recipe, group: TrainGroup | None = None) -> Hardware:
    """Every device decision of the stage that trains ``group`` (None: a stage that trains nothing), from the recipe's
    overrides and this machine; on a GPU, checkpointing follows the stage's memory estimate."""
    from llm_assets.training.memory import parameter_count

    stage = next((name for name in ("cpt", "sft", "reward", "rlhf") if group is not None and getattr(recipe, name) is group), None)
    want = Request(dtype=recipe.model.dtype, attn_implementation=recipe.model.attn_implementation,
                   gradient_checkpointing=group.gradient_checkpointing if group else None,
                   padding_free=group.padding_free if group else None,
                   use_liger_kernel=group.use_liger_kernel if group else None, use_vllm=group.use_vllm if group else None,
                   packing=stage in ("cpt", "sft") and recipe.data.packing,
                   generates=stage == "rlhf" and recipe.rlhf.algorithm in ("rloo", "grpo"),
                   deepspeed=recipe.distributed.processes > 1 and bool(recipe.distributed.deepspeed),
                   parameters=parameter_count(recipe.model.architecture), hidden_size=recipe.model.architecture.hidden_size,
                   group=stage or "model")
    have = machine()
    if have.cuda and stage and want.gradient_checkpointing is None:
        want = replace(want, memory_gb=memory_without_checkpointing(recipe, stage))
    hw = decide(want, have)
    torch.set_num_threads(hw.threads)
    if hw.device == "cpu" and group is not None:  # TRL's loss is computed only where a stage trains
        from llm_assets.training.packing import score_trainable_positions_only  # TRL: 0.8 s of start-up the others skip

        score_trainable_positions_only()
    return hw


def memory_without_checkpointing(recipe: Recipe, stage: str) -> float:
    """The stage's estimated device memory with gradient checkpointing off: checkpointing goes on where it does not fit."""
    from llm_assets.stage_memory import stage_memory

    return stage_memory(recipe, stage, gradient_checkpointing=False).device_gb


def last_complete_checkpoint(directory: str | None) -> str | None:
    """The newest checkpoint a killed run left whole; half-written ones are ignored."""
    if not directory or not Path(directory).is_dir():
        return None
    done = []
    for p in Path(directory).iterdir():
        m = CHECKPOINT.match(p.name)
        if m and all((p / f).exists() for f in CHECKPOINT_FILES) and any(p.glob("rng_state*.pth")):
            done.append((int(m.group(1)), p))
    return str(max(done)[1]) if done else None


def train_resuming(trainer, reporter, spec: StageSpec):
    """``trainer.train()``, from the newest complete checkpoint a killed run of the same training left: in the store when
    the spec names one (a worker on any node resumes it), else in the local checkpoint directory."""
    rng_untouched_by_evaluation(trainer)
    mirror = StoreCheckpoints.from_settings(spec.checkpoint_store)
    resume = label = None
    if mirror is not None:
        newest = mirror.newest()
        if newest:
            resume, label = newest[1], f"checkpoint-{newest[0]} in {mirror.store.root}/{mirror.key}"
        trainer.add_callback(mirror.callback(reporter))
    else:
        resume = label = last_complete_checkpoint(trainer.args.output_dir)
    if resume:
        reporter.log(f"[{spec.stage}] resuming from {label}")
    trainer.add_callback(_StopWhenFinished())
    try:
        return trainer.train(resume_from_checkpoint=resume), label
    except _Finished:
        reporter.log(f"[{spec.stage}] {label} is the final step ({trainer.state.global_step}): nothing left to train")
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
        return TrainOutput(trainer.state.global_step, logged_training_loss(trainer.state.log_history), {}), label


class _Finished(Exception):
    pass


class _StopWhenFinished(TrainerCallback):
    """A run killed after its final checkpoint resumes at ``max_steps``: the Trainer would still take one more step
    (its loop checks for the end only after a step), so training stops here, with the checkpoint's weights and state
    loaded by the Trainer itself (plain, PEFT or DeepSpeed)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            raise _Finished


def logged_training_loss(log_history: list[dict[str, Any]]) -> float:
    """The run's mean training loss from its logged losses (each the mean since the previous log), as the Trainer
    reports it at the end of an uninterrupted run."""
    total = steps = last = 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps, last = steps + entry["step"] - last, entry["step"]
    return total / steps if steps else float("nan")


def rng_untouched_by_evaluation(trainer):
    """Evaluating draws from the global RNGs (a DataLoader's base seed, for one) that training then reads for dropout
    and sampling: restored after each evaluation, a run with evaluations trains exactly as one without them."""
    import random

    import numpy as np

    evaluate = trainer.evaluate

    def evaluate_leaving_rng(*args, **kwargs):
        state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                 torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        try:
            return evaluate(*args, **kwargs)
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
            torch.set_rng_state(state[2])
            if state[3] is not None:
                torch.cuda.set_rng_state_all(state[3])

    trainer.evaluate = evaluate_leaving_rng
    return trainer


def trainer_args(group: TrainGroup, spec: StageSpec, hw: Hardware, evaluates: bool = False, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for a TRL config (they all extend ``TrainingArguments``). ``evaluates``: the trainer has an
    eval_dataset, measured at step 0 and ``EVAL_POINTS`` times during training (the held-out curve)."""
    recipe = spec.parsed_recipe
    check_environment(recipe.tracking.report_to)
    output = spec.checkpoint_dir or str(Path(spec.output_dir).parent / f".{Path(spec.output_dir).name}-checkpoints")
    kw: dict[str, Any] = dict(
        output_dir=output,
        max_steps=group.max_steps,
        learning_rate=group.learning_rate,
        per_device_train_batch_size=group.per_device_batch_size,
        gradient_accumulation_steps=group.gradient_accumulation_steps,
        warmup_steps=int(group.warmup_ratio * group.max_steps),
        weight_decay=group.weight_decay,
        lr_scheduler_type=group.lr_scheduler,
        logging_steps=group.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=group.save_steps,
        save_total_limit=2,
        seed=group.seed,
        data_seed=group.seed,
        report_to=list(recipe.tracking.report_to) or "none",
        run_name=recipe.tracking.run_name or f"{recipe.name}-{spec.stage}",
        bf16=hw.autocast == "bfloat16",
        fp16=hw.autocast == "float16",
        use_cpu=hw.device == "cpu",
        gradient_checkpointing=hw.gradient_checkpointing,
        use_liger_kernel=hw.liger_kernel,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        eval_strategy="no",
    )
    if evaluates:
        kw.update(eval_strategy="steps", eval_steps=max(1, -(-group.max_steps // EVAL_POINTS)), eval_on_start=True,
                  per_device_eval_batch_size=group.per_device_batch_size, prediction_loss_only=True)
    if recipe.distributed.processes > 1:
        if recipe.distributed.deepspeed:
            path = Path(recipe.distributed.deepspeed)
            kw["deepspeed"] = str(path if path.is_absolute() else project_root() / path)
        if hw.device == "cpu":
            kw["ddp_backend"] = "gloo"
    kw.update(extra)
    return kw


def quiet(trainer):
    """Our LogCallback reports each logging step; the Trainer's own printer would repeat it as raw dicts."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def model_kwargs(hw: Hardware, training: bool = False) -> dict[str, Any]:
    """``from_pretrained`` arguments that load a model straight onto this process's device in the stage's dtype. A model
    DeepSpeed will train is loaded unplaced: DeepSpeed moves (under ZeRO-3, partitions) it itself."""
    kw: dict[str, Any] = {"dtype": hw.torch_dtype, "attn_implementation": hw.attn_implementation}
    if hw.device == "cuda" and not (training and hw.deepspeed):
        kw["device_map"] = {"": hw.torch_device}
    return kw


def trainable_in_compute_dtype(trainer, hw: Hardware):
    """TRL's reward and RLOO/GRPO trainers cast a quantized model's trainable weights to bf16 (QLoRA's recipe), which
    only works under bf16 autocast: without it (a CPU in fp32) a trained head such as the reward model's score layer
    gets fp32 inputs and fails. There they go back to the stage's dtype; the optimizer is built later, at train()."""
    if hw.autocast == "none":
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != hw.torch_dtype:
                p.data = p.data.to(hw.torch_dtype)
    return trainer


def lora_config(recipe: Recipe, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    lo = recipe.lora
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
                      modules_to_save=lo.modules_to_save or None, task_type=task_type)


def quantization_config(bits: int, compute_dtype: torch.dtype, quant_type: str = "nf4", double_quant: bool = True):
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def save_trained(trainer, tokenizer, output_dir: str | Path, merge_adapter: bool = False, full_base: str | Path | None = None) -> bool:
    """Save what ``trainer`` trained (all ranks take part: ZeRO-3 gathers the shards); True on the main process.

    ``merge_adapter`` saves a whole model with the adapter merged in: under ZeRO-3 every rank gathers the partitioned
    weights first (rank 0 alone would merge empty shards); on a 4-bit (QLoRA) base the adapter is merged into
    ``full_base``, the unquantized model that base was quantized from, never into 4-bit weights, whose rounding would
    swallow the update. Evaluation then reloads the saved directory on the main process only, so it measures exactly
    what was committed, whatever the parallelism was.
    """
    out = Path(output_dir)
    model = trainer.model
    if merge_adapter and hasattr(model, "merge_and_unload"):
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            if full_base is None:
                raise ValueError("save_trained: an adapter on a quantized base needs full_base, the unquantized model, to merge into")
            if trainer.is_world_process_zero():
                _merge_into(model, full_base, out)
        elif is_deepspeed_zero3_enabled():
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
                if trainer.is_world_process_zero():
                    merged = model.merge_and_unload()
                    merged.save_pretrained(out, state_dict={k: v.detach().cpu().clone() for k, v in merged.state_dict().items()})
        elif trainer.is_world_process_zero():
            model.merge_and_unload().save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # encoding calls leave truncation/padding state that would be saved into tokenizer.json,
            backend.no_truncation()  # so a cache hit and a miss would give the same weights two versions
            backend.no_padding()
        tokenizer.save_pretrained(out)
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # models loaded from here on are whole, not ZeRO-3 partitions
        return True
    return False


def _merge_into(peft_model, full_base: str | Path, out: Path) -> None:
    """The trained adapter (with its modules_to_save, e.g. a reward head) applied to the unquantized base and merged."""
    from peft import PeftModel

    quantized = peft_model.get_base_model()
    config = quantized.config
    with tempfile.TemporaryDirectory() as adapter:
        peft_model.save_pretrained(adapter)
        whole = type(quantized).from_pretrained(full_base, dtype=quantized.dtype, num_labels=config.num_labels,
                                                pad_token_id=config.pad_token_id)
        PeftModel.from_pretrained(whole, adapter).merge_and_unload().save_pretrained(out)


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Beside the output, not in it: two trainings that produce the same weights get the same version."""
    beside(output_dir, "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))


def copy_model_dir(src: str | Path, dst: str | Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("MANIFEST.json", "metrics.json"))
