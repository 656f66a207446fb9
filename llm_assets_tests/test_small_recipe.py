"""The ``small`` recipe (real data on a 2-core CPU): it parses, is a builtin model of 10-30 M parameters counted from its
architecture, is never trained by automation, and its max_length fits the shared T0 rows as its tokenizer encodes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm_assets.recipes import BUILTIN_PREFIX, parse_recipe

PROJECT = Path(__file__).resolve().parent.parent
SMALL = PROJECT / "configs" / "recipes" / "small.yaml"
SHARED = PROJECT.parent / "shared" / "data"


def parameters(recipe) -> int:
    """Parameters of the recipe's builtin model, on the meta device (its BPE tokenizer is trained to vocab_size tokens)."""
    a = recipe.model.architecture
    config = LlamaConfig(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                         num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads,
                         num_key_value_heads=a.num_kv_heads or a.num_heads, tie_word_embeddings=a.tie_word_embeddings)
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


def test_small_recipe_is_a_manual_builtin_of_10_to_30_m_parameters():
    recipe = parse_recipe(SMALL)
    assert recipe.model.base.startswith(BUILTIN_PREFIX)
    assert 10e6 <= parameters(recipe) <= 30e6
    assert recipe.automation == "manual"  # landing the demo data never trains it
    assert recipe.reward is not None and recipe.reward.min_accuracy >= 0.55
    assert recipe.rlhf is not None and recipe.rlhf.min_win_rate >= 0.5


@pytest.mark.skipif(not (SHARED / "sft" / "t0_mixture.jsonl").exists(), reason=f"the shared data is not in {SHARED}")
def test_small_max_length_fits_most_t0_rows():
    """A tokenizer trained as base_model trains it (BPE of the recipe's vocab_size on the chat-rendered rows and the other
    corpora) fits at least 90% of the T0 rows whole in data.max_length (a few seconds)."""
    from llm_assets.training.builtin import render_chat, train_tokenizer
    from llm_assets.training.tokens import FIT, fit_prompt, split_encode

    recipe = parse_recipe(SMALL)
    lines = lambda rel: [json.loads(line) for line in (SHARED / rel).read_text().splitlines() if line.strip()]
    t0 = [r for r in lines("sft/t0_mixture.jsonl") if r["completion"].strip()]  # rows with an empty reply are quarantined
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in t0]
    texts = [render_chat(p + [{"role": "assistant", "content": r["completion"]}]) for p, r in zip(prompts, t0)]
    texts += [r["text"] for r in lines("cpt/news_articles.jsonl")]
    texts += [r[k] for r in lines("preference/hh_rlhf_harmless.jsonl") for k in ("chosen", "rejected")]
    tok = train_tokenizer(texts, recipe.model.architecture.vocab_size)
    encoded = split_encode(tok, prompts, [r["completion"] for r in t0], recipe.data.chat_template)
    fit = sum(fit_prompt(len(p), len(c), recipe.data.max_length, "drop")[0] == FIT for p, c in encoded)
    assert fit / len(t0) >= 0.9, f"{fit} of {len(t0)} T0 rows fit data.max_length {recipe.data.max_length} whole"


def test_exact_match_by_task_sets_each_data_set_beside_its_majority_baseline():
    """Templates of one data set are grouped; the baseline is each template's most common held-out answer."""
    from llm_assets.training.evaluate import exact_match_by_task

    row = lambda task, answer: {"meta": json.dumps({"task": task}), "completion": f" {answer}."}
    rows = [row("ag_news_classify", "Business"), row("ag_news_classify", "Business"), row("ag_news_classify", "World"),
            row("ag_news_recommend", "Scientist"), row("common_gen_Put_together", "a dog on a rug"), {"meta": None, "completion": "x"}]
    hits = [True, False, True, True, False, True]
    by_task = exact_match_by_task(rows, hits)
    assert by_task["ag_news"] == {"n": 4, "exact_match": 0.75, "majority_baseline": 0.75}
    assert by_task["classification"] == by_task["ag_news"]  # common_gen is no classification task
    assert by_task["common_gen"] == {"n": 1, "exact_match": 0.0, "majority_baseline": 1.0}
    assert exact_match_by_task([{"meta": None, "completion": "x"}], [True]) == {}
