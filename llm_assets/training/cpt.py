"""Stage ``cpt``: continued pre-training on the pre-training corpus (language-model loss on all tokens).

The documents' token ids come from the tokenization cache when the asset found an entry (the trainer
packs them to max_length as it would have after tokenizing them itself)."""

from __future__ import annotations

from typing import Any

from trl import SFTConfig, SFTTrainer

from llm_assets.training.common import hardware_for, model_kwargs, quiet, save_trained, train_resuming, trainer_args, write_metrics
from llm_assets.training.data import load_rows, text_dataset
from llm_assets.training.evaluate import text_loss
from llm_assets.training.models import load_causal_lm, load_tokenizer
from llm_assets.training.packing import use_packing_collator
from llm_assets.training.report import LogCallback, Reporter
from llm_assets.training.spec import StageSpec
from llm_assets.training.tokens import WHOLE, cached_tokens, text_tokens


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    group = recipe.cpt
    hw = hardware_for(recipe, group)
    parent = spec.inputs["model"]
    train = load_rows(spec.datasets["pretraining"], "train")
    held_out_rows = load_rows(spec.datasets["pretraining"], "eval", spec.options.get("eval_limit"))
    held_out = [r["text"] for r in held_out_rows]
    if hw.padding_free and not recipe.data.packing:
        raise ValueError("cpt.padding_free: true needs data.packing: true (unpacked documents would not be cut to data.max_length)")
    tok, model = load_tokenizer(parent), load_causal_lm(parent, **model_kwargs(hw, training=True))
    before = text_loss(model, tok, held_out, recipe.data.max_length)["eval_loss"]  # under DeepSpeed the model is still on the host
    reporter.log(f"[cpt] {len(train)} documents, {hw.why}; parent eval loss {before:.4f}")

    args = SFTConfig(**trainer_args(group, spec, hw, evaluates=bool(held_out)), max_length=recipe.data.max_length,
                     dataset_text_field="text", packing=recipe.data.packing, padding_free=hw.padding_free, completion_only_loss=False)
    callback = LogCallback(reporter, "cpt")
    documents, _, tokenization = cached_tokens(spec, WHOLE, lambda: text_tokens(train, tok), reporter)
    trainer = SFTTrainer(model=model, args=args, train_dataset=documents, processing_class=tok, callbacks=[callback],
                         eval_dataset=text_dataset(held_out_rows) if held_out else None)
    trainer = quiet(use_packing_collator(trainer, tok, hw) if recipe.data.packing else trainer)
    result, resume = train_resuming(trainer, reporter, spec)
    if not save_trained(trainer, tok, spec.output_dir):
        return {}

    after = text_loss(load_causal_lm(spec.output_dir, **model_kwargs(hw)), tok, held_out, recipe.data.max_length)["eval_loss"]
    metrics = {"parent_eval_loss": before, "eval_loss": after, "train_loss": result.training_loss,
               "steps": trainer.state.global_step, "train_documents": len(train), "resumed_from": resume or "",
               "tokens_seen": trainer.state.num_input_tokens_seen, **tokenization, "hardware": hw.as_dict(), "log_history": callback.history,
               "tracking": callback.tracking}
    write_metrics(spec.output_dir, metrics)
    return metrics
