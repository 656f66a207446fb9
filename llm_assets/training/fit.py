"""Which rows a recipe can train on, known before any training: the same encoding and length rules
the stages apply (``llm_assets.training.tokens``), counted over the validated datasets.

Data prep keeps a row when it is valid; whether it fits depends on the recipe (its tokenizer,
chat template, ``data.max_length`` and ``data.truncation``), so the same drop can be whole for
one recipe and mostly unusable for another. No Dagster here: the base_model asset calls it and
shows the figures in the UI.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llm_assets.recipes import Recipe
from llm_assets.training.data import load_rows
from llm_assets.training.tokens import FIT, LEFT_OUT, TRUNCATED, fit_prompt, preference_tokens, split_encode


def fit_report(tokenizer, recipe: Recipe, datasets: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per data kind present in ``datasets`` (kind -> dataset Parquet paths, as in a stage spec),
    over the train split after cross-drop de-duplication (the rows a stage trains on):

    - ``rows``: rows counted.
    - ``fit``: rows whose whole token sequence fits in ``data.max_length``.
    - ``truncated``: rows trained on with part cut off. sft: the prompt's first tokens (only with
      ``data.truncation: left``); preference: the shared prompt's first tokens, always, so both
      replies stay whole; pretraining: documents longer than max_length, of which continued
      pre-training sees only the first max_length tokens.
    - ``left_out``: rows not trained on. sft: longer than max_length under ``truncation: drop``,
      or a reply that alone leaves no room for one prompt token; preference: a pair whose longer
      reply leaves no room for the prompt. Pretraining documents are never left out.
    - ``indistinguishable`` (preference): pairs that would fit but whose chosen and rejected
      replies are the same tokens: no model can tell them apart, and they are left out of training.
      ``fit + truncated + left_out (+ indistinguishable) == rows``.
    - ``p50_tokens`` / ``p95_tokens``: token length of the whole row before any cut (prompt +
      reply; for a pair, prompt + the longer reply), to choose max_length from.
    """
    count = {"sft": _sft, "preference": _preference, "pretraining": _pretraining}
    report = {}
    for kind, paths in sorted(datasets.items()):
        rows = load_rows(paths, "train")
        if kind in count and rows:
            report[kind] = count[kind](tokenizer, recipe, rows)
    return report


def _sft(tok, recipe: Recipe, rows: list[dict[str, Any]]) -> dict[str, Any]:
    d = recipe.data
    encoded = split_encode(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], d.chat_template)
    outcomes = Counter(fit_prompt(len(p), len(r), d.max_length, d.truncation)[0] for p, r in encoded)
    return _summary(len(rows), outcomes, [len(p) + len(r) for p, r in encoded])


def _preference(tok, recipe: Recipe, rows: list[dict[str, Any]]) -> dict[str, Any]:
    pairs, counts = preference_tokens(rows, tok, recipe.data.chat_template, recipe.data.max_length)
    lengths = [p["prompt_len"] + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs]
    return {**_summary(len(rows), counts, lengths), "indistinguishable": counts["indistinguishable"]}


def _pretraining(tok, recipe: Recipe, rows: list[dict[str, Any]]) -> dict[str, Any]:
    lengths = [len(ids) for ids in tok([r["text"] + tok.eos_token for r in rows], add_special_tokens=False)["input_ids"]]
    outcomes = Counter(FIT if n <= recipe.data.max_length else TRUNCATED for n in lengths)
    return _summary(len(rows), outcomes, lengths)


def _summary(rows: int, outcomes: dict[str, int], lengths: list[int]) -> dict[str, Any]:
    return {"rows": rows, "fit": outcomes.get(FIT, 0), "truncated": outcomes.get(TRUNCATED, 0),
            "left_out": outcomes.get(LEFT_OUT, 0), "p50_tokens": _percentile(lengths, 50), "p95_tokens": _percentile(lengths, 95)}


def _percentile(values: list[int], q: int) -> int:
    """Nearest-rank percentile: a length some row really has."""
    ordered = sorted(values)
    return ordered[max(0, -(-q * len(ordered) // 100) - 1)] if ordered else 0
