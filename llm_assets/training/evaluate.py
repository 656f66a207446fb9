"""Evaluation shared by every stage: held-out loss, exact match by generation, reward scores,
win rate and KL. Batched, on the device the model was loaded on (inputs follow the model), with
batches small enough that their logits stay within ``LOGITS_BUDGET``: an 8 B model's 128 k-token
vocabulary would otherwise need tens of GB for one batch of full-length rows."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llm_assets.training.tokens import LEFT_OUT, TRUNCATED, encode_pairs, preference_tokens, prompt_text

LOGITS_BUDGET = 2**28  # logits elements per batch (1 GB in fp32): a tiny model's batches never reach it
SAMPLES = 5  # held-out examples each stage shows in its metadata


def rows_within_budget(model, width: int, batch_size: int) -> int:
    """Rows per batch: ``batch_size``, fewer where rows of ``width`` tokens would exceed the logits budget."""
    vocab = model.config.get_text_config().vocab_size
    return max(1, min(batch_size, LOGITS_BUDGET // max(1, width * vocab)))


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _padded(seqs: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask on ``device`` (a sequence-classification head reads the last real token)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def reply_logprobs(model, tok, prompts, replies, template: str, max_length: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Per example: log p of each reply token given everything before it."""
    model.eval()
    out = []
    for batch in _batches(encode_pairs(tok, prompts, replies, template, max_length), rows_within_budget(model, max_length, batch_size)):
        ids, mask = _padded([seq for seq, _ in batch], tok.pad_token_id, model.device)
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for i, (seq, start) in enumerate(batch):
            out.append(tok_lp[i, max(start - 1, 0):len(seq) - 1].to("cpu", copy=True))
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
    for batch in _batches(texts, rows_within_budget(model, max_length, batch_size)):
        enc = tok([t + tok.eos_token for t in batch], return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                  add_special_tokens=False).to(model.device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        logits = model(**enc).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="sum"))
        n += int((tgt != -100).sum())
    loss = nll / max(n, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50)), "eval_tokens": n}


@dataclass(frozen=True)
class Reply:
    """One generated reply and its cost in tokens; ``finish_reason`` is "stop" (it ended with EOS) or "length" (it reached
    max_new_tokens)."""

    text: str
    prompt_tokens: int
    reply_tokens: int
    finish_reason: str


@torch.no_grad()
def reply_batches(model, tok, prompts, template: str, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                  top_p: float | None = None, top_k: int | None = None, batch_size: int = 32, seed: int = 0) -> Iterator[list[Reply]]:
    """Replies to ``prompts``, a batch at a time (a generator, so a caller can time each batch): left-padded (so every
    row's reply starts at the same column) and decoded with the KV cache. ``top_p``/``top_k`` apply when sampling; None
    leaves the model's generation defaults."""
    model.eval()
    torch.manual_seed(seed)
    side, tok.padding_side = tok.padding_side, "left"
    try:
        for batch in _batches(list(prompts), batch_size):
            enc = tok([prompt_text(tok, p, template) for p in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature if do_sample else None,
                                 top_p=top_p if do_sample else None, top_k=top_k if do_sample else None,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
            new = gen[:, enc["input_ids"].shape[1]:].cpu()
            texts = tok.batch_decode(new, skip_special_tokens=True)
            yield [Reply(text, int(mask.sum()), *_reply_length(ids.tolist(), tok.eos_token_id))
                   for text, ids, mask in zip(texts, new, enc["attention_mask"])]
    finally:
        tok.padding_side = side


def _reply_length(ids: list[int], eos_id: int) -> tuple[int, str]:
    """Tokens generated up to and including EOS (padding after it is not the reply's), and why generation stopped."""
    return (ids.index(eos_id) + 1, "stop") if eos_id in ids else (len(ids), "length")


def generate(model, tok, prompts, template: str, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, batch_size: int = 32, seed: int = 0) -> list[str]:
    """The text of each reply to ``prompts`` (see ``reply_batches``), stripped."""
    return [r.text.strip() for batch in reply_batches(model, tok, prompts, template, max_new_tokens, do_sample, temperature,
                                                      batch_size=batch_size, seed=seed) for r in batch]


def answer_of(reply: str) -> str:
    """A reply without its closing punctuation (. ! ?) and surrounding space: how an answer ends is style, not the answer
    (the demo's SFT data ends the same answer either way, and its preference data is about that ending)."""
    return reply.strip().rstrip(".!?").rstrip()


def exact_match(model, tok, rows: list[dict[str, Any]], template: str, max_new_tokens: int = 24) -> dict[str, Any]:
    """Greedy replies that give exactly the expected answer (``answer_of`` both); per task too when rows name one."""
    preds = generate(model, tok, [r["prompt"] for r in rows], template, max_new_tokens)
    hits = [answer_of(p) == answer_of(r["completion"]) for p, r in zip(preds, rows)]
    samples = [{"prompt": r["prompt"][-1]["content"], "expected": r["completion"], "got": p} for p, r in list(zip(preds, rows))[:SAMPLES]]
    out = {"exact_match": sum(hits) / max(len(hits), 1), "exact_match_n": len(hits), "samples": samples}
    by_task = exact_match_by_task(rows, hits)
    if by_task:
        out["exact_match_by_task"] = by_task
    return out


# The data sets of the T0 mixture (``task`` is "<data set>_<template>"); a task outside them is its own group.
T0_DATASETS = ("ag_news", "amazon_polarity", "dbpedia_14", "trec", "common_gen", "commonsense_qa")
CLASSIFICATION = ("ag_news", "amazon_polarity", "dbpedia_14", "trec")  # short label answers: a majority class exists


def row_meta(row: dict[str, Any]) -> dict[str, Any]:
    """A row's extra fields (the dataset keeps them as JSON in ``meta``); empty when there are none."""
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return {}
    return meta if isinstance(meta, dict) else {}


def row_task(row: dict[str, Any]) -> str | None:
    """The ``task`` a row's extra fields name, or None."""
    task = row_meta(row).get("task")
    return task if isinstance(task, str) and task else None


def task_family(task: str) -> str:
    return next((d for d in T0_DATASETS if task.startswith(d + "_")), task)


def exact_match_by_task(rows: list[dict[str, Any]], hits: list[bool]) -> dict[str, dict[str, float]]:
    """Exact match per data set (templates grouped) beside its majority baseline: for each template, the share of its
    held-out rows whose answer is that template's most common held-out answer (the best constant reply per template, a
    baseline that knows the held-out labels, so a model must really classify to beat it). ``classification``: the
    same over the label tasks together. Empty when no row names a task."""
    groups: dict[str, dict[str, list]] = {}
    for row, hit in zip(rows, hits):
        task = row_task(row)
        if task is None:
            continue
        family = task_family(task)
        for name in (family, "classification") if family in CLASSIFICATION else (family,):
            g = groups.setdefault(name, {"hits": [], "answers": {}})
            g["hits"].append(hit)
            g["answers"].setdefault(task, Counter())[answer_of(row["completion"])] += 1
    out = {}
    for name, g in sorted(groups.items()):
        n = len(g["hits"])
        majority = sum(c.most_common(1)[0][1] for c in g["answers"].values())
        out[name] = {"n": n, "exact_match": sum(g["hits"]) / n, "majority_baseline": majority / n}
    return out


@torch.no_grad()
def sequence_scores(rm, tok, seqs: list[list[int]], batch_size: int = 32) -> list[float]:
    rm.eval()
    scores = []
    for batch in _batches(seqs, batch_size):
        ids, mask = _padded(batch, tok.pad_token_id, rm.device)
        scores += rm(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
    return scores


def reward_scores(rm, tok, prompts, replies, template: str, max_length: int, batch_size: int = 32) -> list[float]:
    """The reward of each reply, encoded as evaluation encodes (the whole reply, the prompt cut from the left)."""
    return sequence_scores(rm, tok, [ids for ids, _ in encode_pairs(tok, prompts, replies, template, max_length)], batch_size)


def pairwise_accuracy(rm, tok, rows: list[dict[str, Any]], template: str, max_length: int) -> dict[str, float]:
    """How often the reward model prefers the chosen reply, on pairs encoded as the reward model trains on them.

    ``reward_accuracy`` = (wins + ties / 2) / pairs: a tie (equal scores, or replies that are the
    same tokens after truncation) is worth half, so a model that cannot tell pairs apart scores
    chance, 0.5, never below (counting a tie as a loss once put an untrained head at 13%). The gate
    reads this figure. ``decided_accuracy`` = wins / (wins + losses) says how good the decided calls
    were; ``ties``/``tie_rate`` how many were not decided. Pairs whose replies do not fit
    max_length are left out of every figure and counted in ``pairs_left_out``.
    """
    pairs, counts = preference_tokens(rows, tok, template, max_length)
    pairs = [p for p in pairs if p["outcome"] != LEFT_OUT]
    chosen = sequence_scores(rm, tok, [p["prompt_ids"] + p["chosen_ids"] for p in pairs]) if pairs else []
    rejected = sequence_scores(rm, tok, [p["prompt_ids"] + p["rejected_ids"] for p in pairs]) if pairs else []
    ties = sum(c == r or p["chosen_ids"] == p["rejected_ids"] for p, c, r in zip(pairs, chosen, rejected))
    wins = sum(c > r and p["chosen_ids"] != p["rejected_ids"] for p, c, r in zip(pairs, chosen, rejected))
    n = len(pairs)
    return {"reward_accuracy": (wins + ties / 2) / n if n else 0.0,
            "decided_accuracy": wins / (n - ties) if n > ties else 0.0,
            "reward_margin": sum(c - r for c, r in zip(chosen, rejected)) / max(n, 1),
            "pairs": n, "ties": ties, "tie_rate": ties / n if n else 0.0,
            "pairs_left_out": counts[LEFT_OUT], "pairs_truncated": counts[TRUNCATED],
            "indistinguishable_pairs": counts["indistinguishable"]}


def kl_to_reference(policy, ref, tok, prompts, replies, template: str, max_length: int) -> float:
    """KL(policy || reference) per reply on replies sampled from the policy, with the unbiased,
    never-negative per-token estimator exp(d) - 1 - d, d = log p_ref - log p_policy (as TRL logs it)."""
    lp = reply_logprobs(policy, tok, prompts, replies, template, max_length)
    lr = reply_logprobs(ref, tok, prompts, replies, template, max_length)
    per_reply = [float((torch.exp(r - p) - 1 - (r - p)).sum()) for p, r in zip(lp, lr)]
    return sum(per_reply) / max(len(per_reply), 1)
