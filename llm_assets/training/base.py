"""Stage ``base``: build ``builtin:tiny`` (tokenizer trained on the corpora, fresh weights) and
measure it, so every later stage has a 'before' to beat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_assets.training.builtin import build_builtin, render_chat
from llm_assets.training.common import copy_model_dir, hardware_for, model_kwargs, write_metrics
from llm_assets.training.data import load_rows
from llm_assets.training.evaluate import completion_loss, exact_match, text_loss
from llm_assets.training.models import load_causal_lm, load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec


def corpus_texts(spec: StageSpec) -> list[str]:
    """Text as the model will see it: pre-training documents and chat-rendered SFT/preference rows (train split)."""
    texts = [r["text"] for r in load_rows(spec.datasets.get("pretraining", []), "train")]
    for r in load_rows(spec.datasets.get("sft", []), "train"):
        texts.append(render_chat(r["prompt"] + [{"role": "assistant", "content": r["completion"]}]))
    for r in load_rows(spec.datasets.get("preference", []), "train"):
        texts += [render_chat(r["prompt"] + [{"role": "assistant", "content": r[k]}]) for k in ("chosen", "rejected")]
    return texts


def baseline_metrics(model_dir: str | Path, spec: StageSpec) -> dict[str, Any]:
    """Eval loss on SFT replies, exact match and pre-training loss: the figures later stages are compared on."""
    recipe = spec.parsed_recipe
    limit = spec.options.get("eval_limit")
    hw = hardware_for(recipe)
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir, **model_kwargs(hw))  # on the stage's device
    out: dict[str, Any] = {"hardware": hw.as_dict()}
    sft_eval = load_rows(spec.datasets.get("sft", []), "eval", limit)
    if sft_eval:
        out.update(completion_loss(model, tok, sft_eval, recipe.data.chat_template, recipe.data.max_length))
        em = exact_match(model, tok, sft_eval, recipe.data.chat_template)
        out["exact_match"], out["samples"] = em["exact_match"], em["samples"]
    text_eval = load_rows(spec.datasets.get("pretraining", []), "eval", limit)
    if text_eval:
        out["text_eval_loss"] = text_loss(model, tok, [r["text"] for r in text_eval], recipe.data.max_length)["eval_loss"]
    return out


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    if "snapshot" in spec.inputs:  # a hub model, already snapshotted at its pinned revision
        copy_model_dir(spec.inputs["snapshot"], spec.output_dir)
        reporter.log(f"[base] {recipe.model.base}@{recipe.model.revision} copied from {spec.inputs['snapshot']}")
        return _saved(spec, {"source": f"{recipe.model.base}@{recipe.model.revision}", **baseline_metrics(spec.output_dir, spec)})
    texts = corpus_texts(spec)
    if not texts:
        raise ValueError(f"{recipe.model.base} trains its tokenizer on the datasets, but no validated drop was given")
    reporter.log(f"[base] training a {recipe.model.architecture.vocab_size}-token BPE tokenizer on {len(texts)} texts")
    info = build_builtin(recipe.model, texts, max_positions=max(2 * recipe.data.max_length, 512), output_dir=Path(spec.output_dir))
    tok = load_tokenizer(spec.output_dir)
    reporter.log(f"[base] built {recipe.model.base} with {info['parameters']:,} parameters, vocabulary {info['vocab_size']}")
    return _saved(spec, {**info, "tokenizer_texts": len(texts), "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                         **baseline_metrics(spec.output_dir, spec)})


def _saved(spec: StageSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    write_metrics(spec.output_dir, metrics)
    return metrics
