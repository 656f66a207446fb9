"""Prompt + reply -> token ids, the one encoding training, evaluation and the fit report use, and the
token tables the tokenization cache stores (see ``llm_assets.tokens_cache``): SFT examples, CPT
documents and the preference pairs the reward model and DPO train on.

An example longer than ``data.max_length`` is never cut on the right: that would cut the reply,
the only part that is learned or scored (and make a preference pair's chosen and rejected the same
tokens). Either the example is left out, or (``data.truncation: left``, and always for preference
pairs) its prompt loses its first tokens so the whole reply fits. An example whose reply leaves no
room for a single prompt token is left out in every mode.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from llm_assets.tokens_cache import TOKENS_FILE
from llm_assets.training.data import plain

FIT, TRUNCATED, LEFT_OUT = "fit", "truncated", "left_out"
FIT_METADATA = "llm_assets.fit"  # table metadata: the counts and the truncation mode the table was made with
WHOLE = "whole"  # CPT documents are stored whole: the trainer packs them (or cuts them) to max_length itself
PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def prompt_text(tok, prompt: list[dict[str, str]], template: str) -> str:
    if template == "plain":
        return plain(prompt)
    return tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def full_text(tok, prompt: list[dict[str, str]], reply: str, template: str) -> str:
    if template == "plain":
        return plain(prompt) + reply + tok.eos_token
    return tok.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_encode(tok, prompts, replies, template: str) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids) per example, untruncated, in two batched tokenizer calls.

    The full text is tokenized once and split where it stops agreeing with the prompt alone, so
    prompt + reply is exactly the full sequence even when a tokenizer merges across the boundary.
    """
    p_ids = tok([prompt_text(tok, p, template) for p in prompts], add_special_tokens=False)["input_ids"]
    f_ids = tok([full_text(tok, p, r, template) for p, r in zip(prompts, replies)], add_special_tokens=False)["input_ids"]
    out = []
    for p, f in zip(p_ids, f_ids):
        start = common_prefix(p, f)
        out.append((f[:start], f[start:]))
    return out


def fit_prompt(prompt_len: int, reply_len: int, max_length: int, truncation: str) -> tuple[str, int]:
    """What happens to an example, and how many of its prompt's last tokens it keeps.

    FIT: prompt + reply within max_length. TRUNCATED ('left' only): the prompt keeps its last
    ``max_length - reply_len`` tokens. LEFT_OUT: too long under 'drop', or the reply leaves no
    room for one prompt token (its first token would have nothing to be predicted from).
    """
    if prompt_len + reply_len <= max_length:
        return FIT, prompt_len
    room = max_length - reply_len
    if truncation == "left" and room >= 1:
        return TRUNCATED, room
    return LEFT_OUT, 0


def keep_last(ids: list[int], n: int) -> list[int]:
    return ids[len(ids) - n:] if n else []


def encode_pairs(tok, prompts, replies, template: str, max_length: int) -> list[tuple[list[int], int]]:
    """For evaluation: (token ids, index where the reply starts), keeping the end of each sequence:
    the whole reply with as much prompt as fits before it (a reply longer than max_length keeps its
    last tokens, so every example gets a score)."""
    out = []
    for p, r in split_encode(tok, prompts, replies, template):
        ids = (p + r)[-max_length:]
        out.append((ids, max(len(ids) - len(r), 0)))
    return out


def sft_tokens(rows: list[dict[str, Any]], tok, template: str, max_length: int,
               truncation: str = "drop") -> tuple[pa.Table, dict[str, int]]:
    """Token ids and completion masks of every row that fits under ``truncation``, and how many rows
    fit whole, were truncated (prompt cut from the left) and were left out."""
    ids, masks, counts = [], [], Counter({FIT: 0, TRUNCATED: 0, LEFT_OUT: 0})
    for prompt, reply in split_encode(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], template):
        outcome, keep = fit_prompt(len(prompt), len(reply), max_length, truncation)
        counts[outcome] += 1
        if outcome != LEFT_OUT:
            ids.append(keep_last(prompt, keep) + reply)
            masks.append([0] * keep + [1] * len(reply))
    counts = dict(counts)
    table = pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())), "completion_mask": pa.array(masks, pa.list_(pa.int8()))},
                     metadata={FIT_METADATA: json.dumps({**counts, "truncation": truncation})})  # a cache hit reports them too
    return table, counts


def write_tokens(table: pa.Table, directory: Path) -> None:
    """Written under a temporary name and renamed: a directory with TOKENS_FILE holds a complete table."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{TOKENS_FILE}.partial"
    pq.write_table(table, tmp)
    tmp.rename(directory / TOKENS_FILE)


def read_tokens(directory: str | Path, truncation: str) -> tuple[Dataset, dict[str, int]] | None:
    """The cached table and its fit counts; None when it was made under another truncation mode, or
    by an older encoding that did not record one (it is not what this recipe would train on)."""
    table = pq.read_table(Path(directory) / TOKENS_FILE)
    fit = json.loads((table.schema.metadata or {}).get(FIT_METADATA.encode(), b"{}"))
    if fit.pop("truncation", None) != truncation:
        return None
    return Dataset(table.replace_schema_metadata(None)), fit


def preference_tokens(rows: list[dict[str, Any]], tok, template: str, max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Preference pairs as ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` (replies without the
    prompt), prompts always cut from the left so both replies stay whole, and the counts.

    A pair whose longer reply leaves no room for the prompt is left out. A pair whose two replies
    are the same tokens cannot be told apart by any model (its loss has no gradient and it is a
    certain tie): counted as ``indistinguishable`` and left out too. Every row gets one ``outcome``
    and keeps its untruncated ``prompt_len``.
    """
    prompts = [r["prompt"] for r in rows]
    chosen = split_encode(tok, prompts, [r["chosen"] for r in rows], template)
    rejected = split_encode(tok, prompts, [r["rejected"] for r in rows], template)
    pairs, counts = [], Counter({FIT: 0, TRUNCATED: 0, LEFT_OUT: 0, "indistinguishable": 0})
    for (pc, c), (pr, r) in zip(chosen, rejected):
        start = common_prefix(pc, pr)  # the shared prompt (a reply's first token can merge into it)
        prompt, c, r = pc[:start], pc[start:] + c, pr[start:] + r
        outcome, keep = fit_prompt(len(prompt), max(len(c), len(r)), max_length, "left")
        if outcome != LEFT_OUT and c == r:
            outcome = "indistinguishable"
        counts[outcome] += 1
        pairs.append({"prompt_ids": keep_last(prompt, keep), "chosen_ids": c, "rejected_ids": r, "outcome": outcome,
                      "prompt_len": len(prompt)})
    return pairs, dict(counts)


def trainable_pairs(pairs: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    """The pairs a trainer can learn from (fit whole or truncated), without the outcome field."""
    return [{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs if p["outcome"] in (FIT, TRUNCATED)]


def pairs_summary(counts: dict[str, int], max_length: int) -> str:
    """One line for the stage log: what happened to the preference pairs, and why any were left out."""
    used = counts[FIT] + counts[TRUNCATED]
    return (f"{used} of {sum(counts.values())} pairs trained on: {counts[FIT]} fit whole, {counts[TRUNCATED]} with the prompt "
            f"cut from the left to fit data.max_length ({max_length}); left out: {counts[LEFT_OUT]} whose longer reply alone "
            f"fills it, {counts['indistinguishable']} whose replies are the same tokens")


def usable_pairs(rows: list[dict[str, Any]], tok, template: str, max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """The pairs a trainer can learn from (prompt cut from the left where needed) and the counts;
    an error that says what to change when there is none."""
    pairs, counts = preference_tokens(rows, tok, template, max_length)
    usable = trainable_pairs(pairs)
    if not usable:
        raise ValueError(f"no preference pair fits data.max_length={max_length} with both replies whole "
                         f"({counts[LEFT_OUT]} too long, {counts['indistinguishable']} with identical replies): raise data.max_length")
    return usable, counts


def text_tokens(rows: list[dict[str, Any]], tok) -> tuple[pa.Table, dict[str, int]]:
    """Each pre-training document's token ids exactly as TRL's SFTTrainer makes them for language modelling (the text
    with EOS appended unless it ends with it, the tokenizer's special tokens added), in one batched call."""
    eos = tok.eos_token
    ids = tok([r["text"] if r["text"].endswith(eos) else r["text"] + eos for r in rows])["input_ids"]
    counts = {"documents": len(ids)}
    table = pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32()))},
                     metadata={FIT_METADATA: json.dumps({**counts, "truncation": WHOLE})})
    return table, counts


def pair_tokens(rows: list[dict[str, Any]], tok, template: str, max_length: int) -> tuple[pa.Table, dict[str, int]]:
    """The pairs the reward model and DPO train on (``usable_pairs``) as a table, with their fit counts."""
    pairs, counts = usable_pairs(rows, tok, template, max_length)
    table = pa.table({k: pa.array([p[k] for p in pairs], pa.list_(pa.int32())) for k in PAIR_COLUMNS},
                     metadata={FIT_METADATA: json.dumps({**counts, "truncation": "left"})})  # pairs always keep both replies
    return table, counts


def cached_pairs(spec, rows: list[dict[str, Any]], tok, template: str, max_length: int,
                 reporter) -> tuple[Dataset, dict[str, int], dict[str, Any]]:
    """A stage's training pairs from the tokenization cache (or encoded here), with a ``length`` column: the longer
    side, what the length-grouped sampler (``LENGTH_GROUPED``) sorts on, since a batch is padded to its longest
    sequence. Returns the pairs, their fit counts and how they were tokenized."""
    pairs, counts, tokenization = cached_tokens(spec, "left", lambda: pair_tokens(rows, tok, template, max_length), reporter)
    reporter.log(f"[{spec.stage}] {pairs_summary(counts, max_length)}")
    return with_lengths(pairs), counts, tokenization


def with_lengths(pairs: Dataset) -> Dataset:
    """Pairs with their ``length`` column (the Trainer's length-grouped sampler orders held-out batches by it too)."""
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"])]
    return pairs.add_column("length", lengths)


# Trainer arguments for batches of similar length; the collators take only the token ids, and the sampler needs the
# ``length`` column kept.
LENGTH_GROUPED = {"train_sampling_strategy": "group_by_length", "remove_unused_columns": False}


def cached_tokens(spec, truncation: str, encode, reporter) -> tuple[Dataset, dict[str, int], dict[str, Any]]:
    """A stage's training rows as token ids, from the tokenization cache entry the asset found when it was made under
    ``truncation``, else ``encode()`` (a table and its counts), written where the worker commits it to the cache.
    Returns the rows, their counts, and how they were obtained (``tokenization``, ``tokenize_seconds``) for the metrics."""
    cached = read_tokens(spec.inputs["tokens"], truncation) if "tokens" in spec.inputs else None
    if cached:
        reporter.log(f"[{spec.stage}] tokenization cache hit: {len(cached[0])} rows")
        return *cached, {"tokenization": "cache hit", "tokenize_seconds": 0.0}
    t0 = time.perf_counter()
    table, counts = encode()
    if "tokens_out" in spec.options:
        write_tokens(table, Path(spec.options["tokens_out"]))
    seconds = time.perf_counter() - t0
    reporter.log(f"[{spec.stage}] tokenized {table.num_rows} rows in {seconds:.1f} s")
    return Dataset(table.replace_schema_metadata(None)), counts, {"tokenization": "computed", "tokenize_seconds": round(seconds, 2)}
