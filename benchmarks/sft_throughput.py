"""One SFT throughput configuration in its own process (peak RSS is a per-process figure).

    python -m benchmarks.sft_throughput CONFIG --workdir DIR --steps N --out result.json

CONFIG is ``ours`` (the sft_model asset's trainer with recipe defaults, from
llm_assets.training.sft.make_trainer) or a
TRL baseline: ``trl_default`` (SFTConfig defaults, only use_cpu=True), ``trl_cpu`` (fp32, no
gradient checkpointing), ``trl_packing`` (trl_cpu + packing). Every configuration gets the same
model weights, rows, max_length, batch size, threads and number of optimizer steps, which the
benchmark fixes, not tunes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

CONFIGS = ("ours", "trl_default", "trl_cpu", "trl_packing")


class Counting:
    """Wraps a collator: trainable tokens (label != -100), real tokens and token slots of every batch.

    Real tokens are counted from the examples handed in, not from an attention mask: packed batches have none.
    """

    def __init__(self, inner):
        self.inner, self.trainable, self.real, self.slots = inner, 0, 0, 0

    def __call__(self, examples):
        batch = self.inner(examples)
        labels = batch["labels"]
        self.trainable += int((labels[:, 1:] != -100).sum())  # shifted: the tokens a loss is computed on
        self.slots += labels.numel()
        self.real += sum(len(e["input_ids"]) for e in examples)
        return batch


class Clock(TrainerCallback):
    def __init__(self, counter: Counting):
        self.counter, self.marks = counter, []

    def on_step_end(self, args, state, control, **kw):
        self.marks.append((time.perf_counter(), self.counter.trainable, self.counter.real, self.counter.slots))


def trl_trainer(config: str, model_dir: str, rows: list[dict], max_length: int, batch: int, steps: int, out: str):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    fixed = dict(output_dir=out, max_steps=steps, max_length=max_length, per_device_train_batch_size=batch,
                 report_to="none", save_strategy="no", logging_steps=steps, disable_tqdm=True, use_cpu=True)
    tuned = {"trl_default": {}, "trl_cpu": dict(bf16=False, gradient_checkpointing=False),
             "trl_packing": dict(bf16=False, gradient_checkpointing=False, packing=True)}[config]
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return SFTTrainer(model=model, args=SFTConfig(**fixed, **tuned), train_dataset=data, processing_class=tok)


def our_trainer(model_dir: str, rows: list[dict], max_length: int, batch: int, steps: int, out: str, **sft):
    from llm_assets.recipes import Recipe
    from llm_assets.training.common import hardware_for
    from llm_assets.training.report import Reporter
    from llm_assets.training.sft import make_trainer, tokenized
    from llm_assets.training.spec import StageSpec

    recipe = Recipe(name="bench", data={"max_length": max_length},
                    sft={"max_steps": steps, "per_device_batch_size": batch, "logging_steps": steps, "save_steps": steps * 10, **sft})
    spec = StageSpec(stage="sft", recipe=recipe.model_dump(mode="json"), output_dir=out, inputs={"model": model_dir},
                     datasets={}, options={})
    spec.checkpoint_dir = out
    hw = hardware_for(recipe, recipe.sft)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tokens, _ = tokenized(spec, rows, tok, recipe, Reporter())
    return make_trainer(spec, hw, tokens, tok, [])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config", choices=CONFIGS)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="0: the count the training process chooses (hardware.cpu_threads)")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    rows = json.loads((work / "rows.json").read_text())
    model_dir = str(work / "model")
    t0 = time.perf_counter()
    out = str(work / f"run-{a.config}")
    if a.config == "ours":
        trainer = our_trainer(model_dir, rows, a.max_length, a.batch, a.steps, out)
    else:
        trainer = trl_trainer(a.config, model_dir, rows, a.max_length, a.batch, a.steps, out)
    if a.threads:  # hardware_for sets its own count; the throughput part fixes the same count for all
        torch.set_num_threads(a.threads)
    counter = Counting(trainer.data_collator)
    trainer.data_collator = counter
    clock = Clock(counter)
    trainer.add_callback(clock)
    trainer.train()
    (t1, tr1, re1, _), (tn, trn, ren, sln) = clock.marks[0], clock.marks[-1]
    params = sum(p.numel() for p in trainer.model.parameters())
    result = {
        "config": a.config, "steps": len(clock.marks), "parameters": params,
        "dtype": str(next(trainer.model.parameters()).dtype).replace("torch.", ""),
        "bf16_autocast": bool(trainer.args.bf16), "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "packing": bool(getattr(trainer.args, "packing", False)),
        "time_to_first_step_s": t1 - t0,
        "trainable_tokens_per_s": (trn - tr1) / (tn - t1), "real_tokens_per_s": (ren - re1) / (tn - t1),
        "trainable_tokens": trn, "padding_waste": 1 - ren / sln, "steady_seconds": tn - t1,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "threads": torch.get_num_threads(),
    }
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
