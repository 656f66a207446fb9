"""Stage ``rlhf``: the SFT policy optimised against the reward model with a KL penalty to the SFT
reference (TRL RLOOTrainer or GRPOTrainer), or DPO on the preference pairs as the offline option.

Reported: mean reward of the SFT model's and the policy's replies on held-out prompts, the
policy's win rate against SFT as judged by the reward model, and KL(policy || SFT).
"""

from __future__ import annotations

import tempfile
from typing import Any

from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from llm_assets.training.common import (
    hardware_for,
    lora_config,
    model_kwargs,
    quiet,
    save_trained,
    train_resuming,
    trainer_args,
    write_metrics,
)
from llm_assets.training.data import load_rows, preference_dataset, prompt_dataset
from llm_assets.training.evaluate import exact_match, generate, kl_to_reference, reward_scores
from llm_assets.training.models import is_adapter, load_causal_lm, load_reward_model, load_tokenizer
from llm_assets.training.report import LogCallback, Reporter
from llm_assets.training.spec import StageSpec


def judge(policy, reference, rm, tok, prompts, recipe) -> dict[str, float]:
    """Reward of greedy replies, win rate against the reference, and KL on sampled replies."""
    g = recipe.rlhf
    t, L = recipe.data.chat_template, recipe.data.max_length
    ref_replies = generate(reference, tok, prompts, t, g.max_new_tokens)
    pol_replies = generate(policy, tok, prompts, t, g.max_new_tokens)
    ref_r = reward_scores(rm, tok, prompts, ref_replies, t, L)
    pol_r = reward_scores(rm, tok, prompts, pol_replies, t, L)
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(pol_r, ref_r))
    sampled = generate(policy, tok, prompts, t, g.max_new_tokens, do_sample=True, temperature=g.temperature)
    return {"sft_mean_reward": sum(ref_r) / len(ref_r), "mean_reward": sum(pol_r) / len(pol_r),
            "win_rate_vs_sft": wins / len(prompts), "kl_to_sft": kl_to_reference(policy, reference, tok, prompts, sampled, t, L)}


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    g = recipe.rlhf
    hw = hardware_for(recipe, g)
    template = recipe.data.chat_template
    tok = load_tokenizer(spec.inputs["model"])
    train = load_rows(spec.datasets["preference"], "train")
    held_out = load_rows(spec.datasets["preference"], "eval", spec.options.get("eval_limit"))
    sft_eval = load_rows(spec.datasets.get("sft", []), "eval", spec.options.get("eval_limit"))
    reference = load_causal_lm(spec.inputs["model"])
    rm = load_reward_model(spec.inputs["reward"]) if "reward" in spec.inputs else None

    with tempfile.TemporaryDirectory() as merged:
        start = spec.inputs["model"]
        if is_adapter(start):
            reference.save_pretrained(merged)
            start = merged
        from transformers import AutoModelForCausalLM

        policy = AutoModelForCausalLM.from_pretrained(start, **model_kwargs(hw))
    peft = lora_config(recipe) if recipe.sft.method != "full" else None
    common = trainer_args(g, spec, hw, include_num_input_tokens_seen="no")
    callback = LogCallback(reporter, f"rlhf/{g.algorithm}")
    if g.algorithm == "dpo":
        args = DPOConfig(**common, beta=g.beta, max_length=recipe.data.max_length)
        trainer = DPOTrainer(model=policy, args=args, train_dataset=preference_dataset(train, template), processing_class=tok,
                             peft_config=peft, callbacks=[callback])
    else:
        Config, Trainer = (RLOOConfig, RLOOTrainer) if g.algorithm == "rloo" else (GRPOConfig, GRPOTrainer)
        args = Config(**common, beta=g.beta, num_generations=g.num_generations, max_completion_length=g.max_new_tokens,
                      temperature=g.temperature, )
        rm.config.pad_token_id = tok.pad_token_id
        trainer = Trainer(model=policy, reward_funcs=rm, args=args, train_dataset=prompt_dataset(train, template),
                          processing_class=tok, reward_processing_classes=tok, peft_config=peft, callbacks=[callback])
    quiet(trainer)
    reporter.log(f"[rlhf] {g.algorithm} on {len(train)} prompts, beta {g.beta}, {hw.why}")
    result, resume = train_resuming(trainer, reporter, "rlhf")
    if not save_trained(trainer, tok, spec.output_dir, merge_adapter=True):
        return {}
    final = load_causal_lm(spec.output_dir)

    metrics: dict[str, Any] = {"algorithm": g.algorithm, "train_loss": result.training_loss, "steps": trainer.state.global_step,
                               "train_prompts": len(train), "resumed_from": resume or "", "hardware": hw.as_dict(),
                               "log_history": callback.history}
    if rm is not None:
        metrics.update(judge(final, reference, rm, tok, [r["prompt"] for r in held_out], recipe))
        reporter.log(f"[rlhf] mean reward {metrics['sft_mean_reward']:.3f} (SFT) -> {metrics['mean_reward']:.3f}, "
                     f"win rate {metrics['win_rate_vs_sft']:.1%}, KL {metrics['kl_to_sft']:.3f}")
    if sft_eval:
        metrics["parent_exact_match"] = exact_match(reference, tok, sft_eval, template)["exact_match"]
        metrics["exact_match"] = exact_match(final, tok, sft_eval, template)["exact_match"]
    write_metrics(spec.output_dir, metrics)
    return metrics
