"""Stage ``reward``: a pairwise (Bradley-Terry) reward model, a sequence-classification head on
the SFT model (or the model ``reward.base`` names), trained with TRL's RewardTrainer.

Pairs are tokenized here (``tokens.preference_tokens``: prompts cut from the left, replies whole)
and given to the trainer as token ids; TRL would otherwise silently drop every pair longer than
max_length. Training and evaluation see the same encoding. The training pairs come from the
tokenization cache when the asset found an entry, and batches hold pairs of similar length
(``group_by_length``): a batch is padded to its longest sequence, so mixed lengths waste compute."""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, set_seed
from trl import RewardConfig, RewardTrainer

from llm_assets.training.common import (
    hardware_for,
    lora_config,
    model_kwargs,
    quiet,
    save_trained,
    train_resuming,
    trainable_in_compute_dtype,
    trainer_args,
    write_metrics,
)
from llm_assets.training.data import load_rows
from llm_assets.training.evaluate import SAMPLES, pairwise_accuracy, reward_scores
from llm_assets.training.hardware import free_device_memory
from llm_assets.training.models import is_adapter, load_causal_lm, load_reward_model, load_tokenizer, whole_model_dir
from llm_assets.training.report import LogCallback, Reporter
from llm_assets.training.sft import load_for_training
from llm_assets.training.spec import StageSpec
from llm_assets.training.tokens import LENGTH_GROUPED, cached_pairs, preference_tokens, trainable_pairs, with_lengths


def pair_dataset(spec: StageSpec, rows, tok, template: str, max_length: int,
                 reporter: Reporter) -> tuple[Dataset, dict[str, int], dict[str, Any]]:
    """Whole sequences (prompt + reply) per side, as RewardTrainer takes pre-tokenized pairs, the fit counts and how the
    pairs were tokenized (from the cache or here)."""
    pairs, counts, tokenization = cached_pairs(spec, rows, tok, template, max_length, reporter)
    return as_sequences(pairs), counts, tokenization


def held_out_pairs(rows, tok, template: str, max_length: int) -> Dataset | None:
    """The held-out pairs encoded as training encodes them, for the eval loss and accuracy curves; None when none fits."""
    pairs = trainable_pairs(preference_tokens(rows, tok, template, max_length)[0])
    return as_sequences(with_lengths(Dataset.from_list(pairs))) if pairs else None


def as_sequences(pairs: Dataset) -> Dataset:
    """Each side as one sequence (prompt + reply), keeping the pairs' ``length`` (``tokens.with_lengths``)."""
    return Dataset.from_list([{"chosen_ids": p["prompt_ids"] + p["chosen_ids"], "rejected_ids": p["prompt_ids"] + p["rejected_ids"],
                               "length": p["length"]} for p in pairs])


def scored_samples(rm, tok, rows, template: str, max_length: int, n: int = SAMPLES) -> list[dict[str, Any]]:
    """The trained reward model's scores of the first ``n`` held-out pairs, encoded as evaluation encodes them."""
    rows = rows[:n]
    prompts = [r["prompt"] for r in rows]
    chosen = reward_scores(rm, tok, prompts, [r["chosen"] for r in rows], template, max_length)
    rejected = reward_scores(rm, tok, prompts, [r["rejected"] for r in rows], template, max_length)
    return [{"prompt": r["prompt"][-1]["content"], "chosen": r["chosen"], "chosen_score": c, "rejected": r["rejected"],
             "rejected_score": j, "prefers_chosen": c > j} for r, c, j in zip(rows, chosen, rejected)]


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    group = recipe.reward
    hw = hardware_for(recipe, group)
    init = spec.inputs["model"]
    template = recipe.data.chat_template
    train = load_rows(spec.datasets["preference"], "train")
    held_out = load_rows(spec.datasets["preference"], "eval", spec.options.get("eval_limit"))
    tok = load_tokenizer(init)
    # A LoRA SFT model starts the reward model from its merged weights (merged on the host in the stage's dtype);
    # a QLoRA recipe quantizes them to 4 bits and merges the trained adapter back into them.
    merged = load_causal_lm(init, hw.torch_dtype) if is_adapter(init) else None
    with whole_model_dir(init, merged=merged) as start:
        set_seed(group.seed)  # the new score head's initial weights: same recipe, same reward model
        model = load_for_training(start, recipe.sft.method, recipe, hw, AutoModelForSequenceClassification, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        quantized_base = bool(getattr(model, "is_loaded_in_4bit", False))
        before = pairwise_accuracy(model, tok, held_out, template, recipe.data.max_length)
        reporter.log(f"[reward] {len(train)} pairs, {hw.why}; untrained head accuracy {before['reward_accuracy']:.1%}")
        dataset, fit, tokenization = pair_dataset(spec, train, tok, template, recipe.data.max_length, reporter)

        eval_pairs = held_out_pairs(held_out, tok, template, recipe.data.max_length)
        args = RewardConfig(**trainer_args(group, spec, hw, evaluates=eval_pairs is not None, include_num_input_tokens_seen="no"),
                            max_length=recipe.data.max_length, **LENGTH_GROUPED)
        callback = LogCallback(reporter, "reward")
        trainer = quiet(RewardTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=eval_pairs, processing_class=tok,
                                      peft_config=lora_config(recipe, "SEQ_CLS") if recipe.sft.method != "full" else None, callbacks=[callback]))
        trainable_in_compute_dtype(trainer, hw)
        result, resume = train_resuming(trainer, reporter, spec)
        if not save_trained(trainer, tok, spec.output_dir, merge_adapter=True, full_base=start):
            return {}
    steps = trainer.state.global_step
    del trainer, model
    free_device_memory()

    trained = load_reward_model(spec.output_dir, **model_kwargs(hw))
    after = pairwise_accuracy(trained, tok, held_out, template, recipe.data.max_length)
    metrics = {"parent_reward_accuracy": before["reward_accuracy"], "reward_accuracy": after["reward_accuracy"],
               "decided_accuracy": after["decided_accuracy"], "parent_tie_rate": before["tie_rate"], "ties": after["ties"],
               "tie_rate": after["tie_rate"], "reward_margin": after["reward_margin"], "eval_pairs": after["pairs"],
               "eval_pairs_left_out": after["pairs_left_out"], "eval_pairs_indistinguishable": after["indistinguishable_pairs"],
               "train_pairs": len(train), "train_pairs_used": len(dataset), "train_pairs_truncated": fit["truncated"],
               "train_pairs_left_out": fit["left_out"], "train_pairs_indistinguishable": fit["indistinguishable"],
               "train_loss": result.training_loss, "steps": steps, "resumed_from": resume or "", **tokenization,
               "quantized_base": quantized_base, "hardware": hw.as_dict(), "log_history": callback.history,
               "tracking": callback.tracking, "samples": scored_samples(trained, tok, held_out, template, recipe.data.max_length)}
    write_metrics(spec.output_dir, metrics)
    reporter.log(f"[reward] pairwise accuracy (a tie counts half) {before['reward_accuracy']:.1%} -> {after['reward_accuracy']:.1%}, "
                 f"ties {after['ties']} of {after['pairs']} held-out pairs")
    return metrics
