"""Stage ``rlhf``: the SFT policy optimised against the reward model with a KL penalty to the SFT
reference (TRL RLOOTrainer or GRPOTrainer), or DPO on the preference pairs as the offline option.

Reported on held-out prompts, for SFT and the policy: the reward model's mean reward of sampled replies,
the policy's win rate against SFT as the reward model judges them, KL(policy || SFT), task exact match
and, where the preference rows name the gold function they were labelled with (generated data: the
demo's ``gold`` field), the gold win rate. DPO also reports its own measures on held-out pairs: how
often its implicit reward prefers the chosen reply, and the mean margin. The rlhf gates read them.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import AutoModelForSequenceClassification
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from llm_assets.training.common import (
    hardware_for,
    lora_config,
    model_kwargs,
    quantization_config,
    quiet,
    save_trained,
    train_resuming,
    trainable_in_compute_dtype,
    trainer_args,
    write_metrics,
)
from llm_assets.training.data import load_rows, prompt_dataset
from llm_assets.demo_gold import GOLD_FUNCTIONS
from llm_assets.training.evaluate import SAMPLES, exact_match, generate, kl_to_reference, reply_logprobs, reward_scores, row_meta
from llm_assets.training.hardware import free_device_memory
from llm_assets.training.models import is_adapter, load_causal_lm, load_reward_model, load_tokenizer, whole_model_dir
from llm_assets.training.report import LogCallback, Reporter
from llm_assets.training.sft import load_for_training
from llm_assets.training.spec import StageSpec
from llm_assets.training.tokens import LENGTH_GROUPED, cached_pairs, preference_tokens, trainable_pairs, with_lengths


class PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs tokenized by ``tokens.cached_pairs`` (prompt cut from the left, replies whole), in batches of
    similar length.

    TRL 1.16's DPOTrainer re-tokenizes text and its collator keeps the start of each sequence,
    cutting the replies, the only part DPO learns from. It has no public way to pass token ids,
    so this overrides its private ``_prepare_dataset``; test_dpo_trains_on_our_token_ids fails
    when TRL renames or stops calling it.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


def win_rate(ours: list[float], theirs: list[float]) -> float:
    """How often ours scores above theirs, a tie counting half."""
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs)) / max(len(ours), 1)


def mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def judge(policy, reference, rm, tok, rows, recipe) -> dict[str, Any]:
    """The policy against the SFT reference on held-out ``rows``: replies sampled from each (same prompts, same seed),
    KL on the policy's; the reward model's mean reward and win rate (what RL optimises) when there is one, with the
    same for greedy replies, the first of which are the samples shown; the gold win rate where the rows name one."""
    g = recipe.rlhf
    t, L = recipe.data.chat_template, recipe.data.max_length
    prompts = [r["prompt"] for r in rows]
    pol_samples = generate(policy, tok, prompts, t, g.max_new_tokens, do_sample=True, temperature=g.temperature)
    ref_samples = generate(reference, tok, prompts, t, g.max_new_tokens, do_sample=True, temperature=g.temperature)
    out = {"kl_to_sft": kl_to_reference(policy, reference, tok, prompts, pol_samples, t, L),
           **gold_measures(rows, pol_samples, ref_samples)}
    if rm is None:
        return out
    pol_r, ref_r = reward_scores(rm, tok, prompts, pol_samples, t, L), reward_scores(rm, tok, prompts, ref_samples, t, L)
    pol_replies = generate(policy, tok, prompts, t, g.max_new_tokens)
    ref_replies = generate(reference, tok, prompts, t, g.max_new_tokens)
    pol_greedy, ref_greedy = reward_scores(rm, tok, prompts, pol_replies, t, L), reward_scores(rm, tok, prompts, ref_replies, t, L)
    samples = [{"prompt": p[-1]["content"] if isinstance(p, list) else p, "sft_reply": a, "sft_reward": ra,
                "policy_reply": b, "policy_reward": rb}
               for p, a, ra, b, rb in list(zip(prompts, ref_replies, ref_greedy, pol_replies, pol_greedy))[:SAMPLES]]
    return {**out, "sft_mean_reward": mean(ref_r), "mean_reward": mean(pol_r), "win_rate_vs_sft": win_rate(pol_r, ref_r),
            "sft_greedy_mean_reward": mean(ref_greedy), "greedy_mean_reward": mean(pol_greedy), "samples": samples}


def gold_measures(rows, policy_replies: list[str], sft_replies: list[str]) -> dict[str, Any]:
    """The gold win rate of the policy's replies against SFT's and both mean gold scores, on the rows whose ``meta``
    names the gold preference function they were labelled with (``demo_gold.GOLD_FUNCTIONS``); nothing when none does
    (real data has no gold function)."""
    ours, theirs = [], []
    for row, a, b in zip(rows, policy_replies, sft_replies):
        score = GOLD_FUNCTIONS.get(row_meta(row).get("gold"))
        prompt = row["prompt"][-1]["content"]
        if score is not None and score(prompt, a) is not None:
            ours.append(score(prompt, a))
            theirs.append(score(prompt, b))
    if not ours:
        return {}
    return {"gold_win_rate_vs_sft": win_rate(ours, theirs), "gold_score": mean(ours), "sft_gold_score": mean(theirs),
            "gold_prompts": len(ours)}


def dpo_measures(policy, reference, tok, rows, recipe) -> dict[str, Any]:
    """DPO's own measures on held-out pairs: its implicit reward beta * (log pi(y|x) - log pi_SFT(y|x)) of each reply,
    how often it ranks the chosen reply above the rejected one (a tie counts half) and the mean margin."""
    t, L, beta = recipe.data.chat_template, recipe.data.max_length, recipe.rlhf.beta
    prompts = [r["prompt"] for r in rows]

    def implicit(field: str) -> list[float]:
        replies = [r[field] for r in rows]
        pol = reply_logprobs(policy, tok, prompts, replies, t, L)
        ref = reply_logprobs(reference, tok, prompts, replies, t, L)
        return [beta * float(p.sum() - q.sum()) for p, q in zip(pol, ref)]

    chosen, rejected = implicit("chosen"), implicit("rejected")
    return {"preference_accuracy": win_rate(chosen, rejected), "reward_margin": mean([c - r for c, r in zip(chosen, rejected)]),
            "preference_pairs": len(rows)}


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    g = recipe.rlhf
    hw = hardware_for(recipe, g)
    method = recipe.sft.method
    template = recipe.data.chat_template
    sft, reward = spec.inputs["model"], spec.inputs.get("reward")
    tok = load_tokenizer(sft)
    train = load_rows(spec.datasets["preference"], "train")
    held_out = load_rows(spec.datasets["preference"], "eval", spec.options.get("eval_limit"))
    sft_eval = load_rows(spec.datasets.get("sft", []), "eval", spec.options.get("eval_limit"))

    merged = load_causal_lm(sft, hw.torch_dtype) if is_adapter(sft) else None  # on the host, in the stage's dtype
    with whole_model_dir(sft, merged=merged) as start:  # the policy starts from the SFT model's whole weights
        policy = load_for_training(start, method, recipe, hw)  # QLoRA: a 4-bit base under a new adapter
        quantized_base = bool(getattr(policy, "is_loaded_in_4bit", False))
        peft = lora_config(recipe) if method != "full" else None
        callback = LogCallback(reporter, f"rlhf/{g.algorithm}")
        fit: dict[str, int] = {}  # DPO: what happened to the preference pairs (fit, truncated, left_out, indistinguishable)
        tokenization: dict[str, Any] = {}  # DPO: whether its pairs came from the tokenization cache
        if g.algorithm == "dpo":  # evaluated during training on held-out pairs (RLOO/GRPO curves are their training reward and KL)
            pairs, fit, tokenization = cached_pairs(spec, train, tok, template, recipe.data.max_length, reporter)
            eval_pairs = trainable_pairs(preference_tokens(held_out, tok, template, recipe.data.max_length)[0])
            args = DPOConfig(**trainer_args(g, spec, hw, evaluates=bool(eval_pairs), include_num_input_tokens_seen="no"),
                             beta=g.beta, max_length=recipe.data.max_length, **LENGTH_GROUPED)
            trainer = PretokenizedDPOTrainer(model=policy, args=args, train_dataset=pairs, processing_class=tok,
                                             eval_dataset=with_lengths(Dataset.from_list(eval_pairs)) if eval_pairs else None,
                                             peft_config=peft, callbacks=[callback])
        else:
            Config, Trainer = (RLOOConfig, RLOOTrainer) if g.algorithm == "rloo" else (GRPOConfig, GRPOTrainer)
            vllm = {"use_vllm": True, "vllm_mode": "colocate"} if hw.vllm else {}
            args = Config(**trainer_args(g, spec, hw, include_num_input_tokens_seen="no"), beta=g.beta,
                          num_generations=g.num_generations, max_completion_length=g.max_new_tokens,
                          temperature=g.temperature, **vllm)
            trainer = Trainer(model=policy, reward_funcs=reward_model(reward, recipe, hw, tok, training=True), args=args,
                              train_dataset=prompt_dataset(train, template), processing_class=tok, reward_processing_classes=tok,
                              peft_config=peft, callbacks=[callback])
        trainable_in_compute_dtype(quiet(trainer), hw)
        reporter.log(f"[rlhf] {g.algorithm} on {len(train)} prompts, beta {g.beta}, {hw.why}")
        result, resume = train_resuming(trainer, reporter, spec)
        if not save_trained(trainer, tok, spec.output_dir, merge_adapter=True, full_base=start):
            return {}
        steps = trainer.state.global_step
        del trainer, policy
        free_device_memory()  # the judge's models replace the trainer's on the device
        # Judged as the quantize stage and later users load them: on the device in the stage's dtype; QLoRA recipes in 4 bits.
        reference = load_for_judging(start, recipe, hw)
    final = load_for_judging(spec.output_dir, recipe, hw)

    metrics: dict[str, Any] = {"algorithm": g.algorithm, "train_loss": result.training_loss, "steps": steps,
                               "train_prompts": len(train), "resumed_from": resume or "", "quantized_base": quantized_base, "hardware": hw.as_dict(),
                               "log_history": callback.history, "tracking": callback.tracking,
                               **{f"train_pairs_{k}": n for k, n in fit.items()}, **tokenization}
    metrics.update(judge(final, reference, reward_model(reward, recipe, hw, tok) if reward else None, tok, held_out, recipe))
    if reward is not None:
        reporter.log(f"[rlhf] mean reward {metrics['sft_mean_reward']:.3f} (SFT) -> {metrics['mean_reward']:.3f}, "
                     f"win rate {metrics['win_rate_vs_sft']:.1%}")
    if g.algorithm == "dpo":
        metrics.update(dpo_measures(final, reference, tok, held_out, recipe))
        reporter.log(f"[rlhf] DPO preference accuracy {metrics['preference_accuracy']:.1%} on {len(held_out)} held-out pairs, "
                     f"reward margin {metrics['reward_margin']:.3f}")
    reporter.log(f"[rlhf] KL to SFT {metrics['kl_to_sft']:.3f}" + (
        f", gold win rate {metrics['gold_win_rate_vs_sft']:.1%} (gold score {metrics['sft_gold_score']:.2f} SFT -> "
        f"{metrics['gold_score']:.2f})" if "gold_win_rate_vs_sft" in metrics else ""))
    if sft_eval:
        metrics["parent_exact_match"] = exact_match(reference, tok, sft_eval, template)["exact_match"]
        metrics["exact_match"] = exact_match(final, tok, sft_eval, template)["exact_match"]
    write_metrics(spec.output_dir, metrics)
    return metrics


def qlora_quantization(recipe, hw):
    """How a QLoRA recipe loads every model of this stage (4 bits, as SFT trained it); None for the others."""
    if recipe.sft.method != "qlora":
        return None
    q = recipe.quantization
    return quantization_config(4, hw.torch_dtype, q.quant_type if q else "nf4", q.double_quant if q else True)


def reward_model(directory, recipe, hw, tok, training: bool = False):
    """The reward model, 4-bit for a QLoRA recipe. For training it is loaded as the policy is (TRL then moves it to the
    policy's device, or DeepSpeed prepares it); for judging, on this process's device."""
    if training:
        rm = load_for_training(directory, recipe.sft.method, recipe, hw, AutoModelForSequenceClassification, num_labels=1)
    else:
        rm = load_reward_model(directory, **model_kwargs(hw), quantization_config=qlora_quantization(recipe, hw))
    rm.config.pad_token_id = tok.pad_token_id
    return rm


def load_for_judging(directory, recipe, hw):
    return load_causal_lm(directory, **model_kwargs(hw), quantization_config=qlora_quantization(recipe, hw))
