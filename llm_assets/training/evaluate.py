"""Evaluation shared by every stage: held-out loss, exact match by generation, reward scores,
win rate and KL. Small and batched: it runs after every stage on a CPU."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from llm_assets.training.tokens import encode_pairs, full_text, prompt_text


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def reply_logprobs(model, tok, prompts, replies, template: str, max_length: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Per example: log p of each reply token given everything before it."""
    model.eval()
    out = []
    for batch in _batches(encode_pairs(tok, prompts, replies, template, max_length), batch_size):
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, (seq, _) in enumerate(batch):
            ids[i, :len(seq)] = torch.tensor(seq)
            mask[i, :len(seq)] = 1
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for i, (seq, start) in enumerate(batch):
            out.append(tok_lp[i, max(start - 1, 0):len(seq) - 1].clone())
    return out


def completion_loss(model, tok, rows: list[dict[str, Any]], template: str, max_length: int, field: str = "completion") -> dict[str, float]:
    """Token-weighted cross-entropy on the replies only (the prompt is context), and its perplexity."""
    lps = reply_logprobs(model, tok, [r["prompt"] for r in rows], [r[field] for r in rows], template, max_length)
    nll, n = -sum(float(lp.sum()) for lp in lps), sum(lp.numel() for lp in lps)
    loss = nll / max(n, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50)), "eval_tokens": n}


@torch.no_grad()
def text_loss(model, tok, texts: list[str], max_length: int, batch_size: int = 16) -> dict[str, float]:
    model.eval()
    nll, n = 0.0, 0
    for batch in _batches(texts, batch_size):
        enc = tok([t + tok.eos_token for t in batch], return_tensors="pt", padding=True, truncation=True, max_length=max_length, add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        logits = model(**enc).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="sum"))
        n += int((tgt != -100).sum())
    loss = nll / max(n, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50)), "eval_tokens": n}


@torch.no_grad()
def generate(model, tok, prompts, template: str, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, batch_size: int = 32, seed: int = 0) -> list[str]:
    model.eval()
    torch.manual_seed(seed)
    side, tok.padding_side = tok.padding_side, "left"
    out = []
    try:
        for batch in _batches(list(prompts), batch_size):
            enc = tok([prompt_text(tok, p, template) for p in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature if do_sample else None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return [o.strip() for o in out]


def exact_match(model, tok, rows: list[dict[str, Any]], template: str, max_new_tokens: int = 24) -> dict[str, Any]:
    preds = generate(model, tok, [r["prompt"] for r in rows], template, max_new_tokens)
    hits = [p == r["completion"].strip() for p, r in zip(preds, rows)]
    samples = [{"prompt": r["prompt"][-1]["content"], "expected": r["completion"], "got": p} for p, r in list(zip(preds, rows))[:5]]
    return {"exact_match": sum(hits) / max(len(hits), 1), "exact_match_n": len(hits), "samples": samples}


@torch.no_grad()
def reward_scores(rm, tok, prompts, replies, template: str, max_length: int, batch_size: int = 32) -> list[float]:
    rm.eval()
    texts = [full_text(tok, p, r, template) for p, r in zip(prompts, replies)]
    scores = []
    for batch in _batches(texts, batch_size):
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length, add_special_tokens=False)
        scores += rm(**enc).logits[:, 0].float().tolist()
    return scores


def pairwise_accuracy(rm, tok, rows: list[dict[str, Any]], template: str, max_length: int) -> dict[str, float]:
    prompts = [r["prompt"] for r in rows]
    chosen = reward_scores(rm, tok, prompts, [r["chosen"] for r in rows], template, max_length)
    rejected = reward_scores(rm, tok, prompts, [r["rejected"] for r in rows], template, max_length)
    wins = [c > r for c, r in zip(chosen, rejected)]
    margin = sum(c - r for c, r in zip(chosen, rejected)) / max(len(rows), 1)
    return {"reward_accuracy": sum(wins) / max(len(wins), 1), "reward_margin": margin, "pairs": len(rows)}


def kl_to_reference(policy, ref, tok, prompts, replies, template: str, max_length: int) -> float:
    """KL(policy || reference) per reply on replies sampled from the policy, with the unbiased,
    never-negative per-token estimator exp(d) - 1 - d, d = log p_ref - log p_policy (as TRL logs it)."""
    lp = reply_logprobs(policy, tok, prompts, replies, template, max_length)
    lr = reply_logprobs(ref, tok, prompts, replies, template, max_length)
    per_reply = [float((torch.exp(r - p) - 1 - (r - p)).sum()) for p, r in zip(lp, lr)]
    return sum(per_reply) / max(len(per_reply), 1)
