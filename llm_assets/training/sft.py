"""Stage ``sft``: supervised fine-tuning, full / LoRA / QLoRA, loss on the completion only.

Checkpoints every ``sft.save_steps`` into the run's checkpoint directory; launched again with the
same spec (same inputs, same recipe) it resumes from the last complete checkpoint with the
optimizer, scheduler, RNG and data position the Trainer saved.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from llm_assets.training.common import (
    hardware_for,
    lora_config,
    model_kwargs,
    quantization_config,
    quiet,
    save_trained,
    train_resuming,
    trainer_args,
    write_metrics,
)
from llm_assets.training.data import load_rows
from llm_assets.training.evaluate import completion_loss, exact_match
from llm_assets.training.models import load_causal_lm, load_tokenizer, parameter_count
from llm_assets.training.packing import use_packing_collator
from llm_assets.training.report import LogCallback, Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.tokens import read_tokens, sft_tokens, write_tokens


def measure(model, tok, rows, recipe) -> dict[str, Any]:
    out = completion_loss(model, tok, rows, recipe.data.chat_template, recipe.data.max_length)
    em = exact_match(model, tok, rows, recipe.data.chat_template)
    return {**out, "exact_match": em["exact_match"], "samples": em["samples"],
            **({"exact_match_by_task": em["exact_match_by_task"]} if "exact_match_by_task" in em else {})}


def load_for_training(parent: str, method: str, recipe, hw, model_class=AutoModelForCausalLM, **kwargs):
    """The model a stage trains, on its device in its dtype; QLoRA quantizes the base to 4 bits as it loads (the reward
    and RLHF stages load theirs here too, ``model_class`` choosing the head)."""
    if method == "qlora":
        q = recipe.quantization
        qc = quantization_config(4, hw.torch_dtype, q.quant_type if q else "nf4", q.double_quant if q else True)
        model = model_class.from_pretrained(parent, quantization_config=qc, **model_kwargs(hw, training=True), **kwargs)
        return release_checkpoint_mapping(model) if hw.device == "cpu" else model
    return model_class.from_pretrained(parent, **model_kwargs(hw, training=True), **kwargs)


def release_checkpoint_mapping(model):
    """Copy the weights QLoRA left unquantized (embeddings, norms) out of the memory-mapped checkpoint.

    They are views into the mapped file, which keeps every page quantization read resident: on a
    104 M parameter model that was 250 MB of RSS, twice the 4-bit model itself.
    """
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.data = t.data.clone()
    gc.collect()
    return model


def tokenized(spec: StageSpec, rows, tok, recipe, reporter: Reporter) -> tuple[Dataset, dict[str, Any]]:
    """The training rows as token ids: from the tokenization cache when the asset found an entry made
    under this recipe's data.truncation, else encoded here and written where the asset commits it to the cache."""
    mode = recipe.data.truncation
    cached = read_tokens(spec.inputs["tokens"], mode) if "tokens" in spec.inputs else None
    if cached:
        tokens, fit = cached
        reporter.log(f"[sft] tokenization cache hit: {len(tokens)} examples ({fit_summary(fit, recipe)})")
        return tokens, {"tokenization": "cache hit", "tokenize_seconds": 0.0, **fit_metrics(fit)}
    if "tokens" in spec.inputs:
        reporter.log(f"[sft] the tokenization cache entry was not made with data.truncation={mode!r}: tokenizing again")
    t0 = time.perf_counter()
    table, fit = sft_tokens(rows, tok, recipe.data.chat_template, recipe.data.max_length, mode)
    reporter.log(f"[sft] {table.num_rows} of {len(rows)} examples trained on ({fit_summary(fit, recipe)})")
    if not table.num_rows:
        raise ValueError(f"no training example fits data.max_length={recipe.data.max_length} with data.truncation={mode!r}: "
                         "raise data.max_length" + (" or set data.truncation: left" if mode == "drop" else ""))
    if "tokens_out" in spec.options:
        write_tokens(table, Path(spec.options["tokens_out"]))
    seconds = time.perf_counter() - t0
    reporter.log(f"[sft] tokenized {table.num_rows} examples in {seconds:.1f} s")
    return Dataset(table.replace_schema_metadata(None)), {"tokenization": "computed", "tokenize_seconds": round(seconds, 2), **fit_metrics(fit)}


def fit_summary(fit: dict[str, int], recipe) -> str:
    """What happened to the rows that do not fit, in the recipe's terms."""
    d = recipe.data
    if d.truncation == "left":
        return (f"{fit['fit']} fit whole in data.max_length ({d.max_length} tokens), {fit['truncated']} with the prompt cut "
                f"from the left, {fit['left_out']} left out: their reply alone fills it")
    return (f"{fit['fit']} fit whole in data.max_length ({d.max_length} tokens), {fit['left_out']} longer ones left out "
            "(data.truncation: left would keep them with the prompt cut from the left)")


def fit_metrics(fit: dict[str, int]) -> dict[str, int]:
    """``too_long_examples`` kept under its old name (rows left out for length) beside the new counts."""
    return {"too_long_examples": fit["left_out"], "examples_fit": fit["fit"], "examples_truncated": fit["truncated"]}


def held_out_tokens(rows, tok, recipe) -> Dataset | None:
    """The held-out rows encoded as training encodes them, for the eval loss curve; None when none fits."""
    table, _ = sft_tokens(rows, tok, recipe.data.chat_template, recipe.data.max_length, recipe.data.truncation)
    return Dataset(table.replace_schema_metadata(None)) if table.num_rows else None


def make_trainer(spec: StageSpec, hw, tokens: Dataset, tok, callbacks: list, held_out: Dataset | None = None) -> SFTTrainer:
    """The SFT trainer exactly as the sft_model asset runs it (the benchmarks time this one); ``held_out`` token rows are
    evaluated during training."""
    recipe, group = spec.parsed_recipe, spec.parsed_recipe.sft
    model = load_for_training(spec.inputs["model"], group.method, recipe, hw)
    # Padding-free without packing: the token table is already cut to data.max_length, and TRL refuses a max_length there.
    unpacked_padding_free = hw.padding_free and not recipe.data.packing
    args = SFTConfig(**trainer_args(group, spec, hw, evaluates=held_out is not None),
                     max_length=None if unpacked_padding_free else recipe.data.max_length,
                     completion_only_loss=True, packing=recipe.data.packing, padding_free=hw.padding_free)
    trainer = SFTTrainer(model=model, args=args, train_dataset=tokens, eval_dataset=held_out, processing_class=tok,
                         peft_config=lora_config(recipe) if group.method != "full" else None, callbacks=callbacks)
    return quiet(use_packing_collator(trainer, tok, hw) if recipe.data.packing else trainer)


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    group = recipe.sft
    hw = hardware_for(recipe, group)
    parent = spec.inputs["model"]
    train = load_rows(spec.datasets["sft"], "train")
    held_out = load_rows(spec.datasets["sft"], "eval", spec.options.get("eval_limit"))
    tok = load_tokenizer(parent)
    before = measure(load_causal_lm(parent, **model_kwargs(hw)), tok, held_out, recipe)
    reporter.log(f"[sft] {group.method} on {len(train)} examples, {hw.why}; parent eval loss {before['eval_loss']:.4f}, "
                 f"exact match {before['exact_match']:.1%}")

    tokens, tokenization = tokenized(spec, train, tok, recipe, reporter)
    callback = LogCallback(reporter, "sft")
    trainer = make_trainer(spec, hw, tokens, tok, [callback], held_out_tokens(held_out, tok, recipe))
    result, resume = train_resuming(trainer, reporter, spec)
    trainable = parameter_count(trainer.model, trainable_only=True)
    if not save_trained(trainer, tok, spec.output_dir):
        return {}
    if group.method != "full":  # an adapter: point it at the parent artifact it was trained on
        cfg_path = Path(spec.output_dir) / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(Path(parent).resolve())
        cfg_path.write_text(json.dumps(cfg, indent=1))

    after = measure(load_causal_lm(spec.output_dir, **model_kwargs(hw)), tok, held_out, recipe)
    metrics = {
        "method": group.method, "parent_eval_loss": before["eval_loss"], "eval_loss": after["eval_loss"],
        "perplexity": after["perplexity"], "parent_exact_match": before["exact_match"], "exact_match": after["exact_match"],
        **({"parent_exact_match_by_task": before.get("exact_match_by_task", {}), "exact_match_by_task": after["exact_match_by_task"]}
           if "exact_match_by_task" in after else {}),
        "train_loss": result.training_loss, "steps": trainer.state.global_step, "train_examples": len(train),
        "eval_examples": len(held_out), "trainable_parameters": trainable,
        "resumed_from": resume or "", "tokens_seen": trainer.state.num_input_tokens_seen, "samples": after["samples"],
        "hardware": hw.as_dict(), **tokenization, "log_history": callback.history, "tracking": callback.tracking,
    }
    write_metrics(spec.output_dir, metrics)
    reporter.log(f"[sft] eval loss {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}, "
                 f"exact match {before['exact_match']:.1%} -> {after['exact_match']:.1%}")
    return metrics
