"""One SFT throughput configuration in its own process (peak RSS is a per-process figure).

    python -m benchmarks.sft_throughput CONFIG --workdir DIR --steps N --out result.json [--device cuda]

CONFIG is ``ours`` (the sft_model asset's trainer with recipe defaults, from
llm_assets.training.sft.make_trainer) or a TRL baseline. On the CPU: ``trl_default`` (SFTConfig
defaults, only use_cpu=True), ``trl_cpu`` (fp32, no gradient checkpointing), ``trl_packing``
(trl_cpu + packing). On a GPU (``--device cuda``): ``trl_default`` (SFTConfig defaults) and
``trl_tuned`` (TRL's fast path: bf16 weights and autocast, BFD packing with padding-free batches,
FlashAttention 2 when flash_attn is installed else SDPA, Liger kernels when liger_kernel is
installed, no gradient checkpointing). Every configuration gets the same model weights, rows,
max_length, batch size, threads and number of optimizer steps, which the benchmark fixes, not tunes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

CONFIGS = ("ours", "trl_default", "trl_cpu", "trl_packing", "trl_tuned")
GPU_CONFIGS = ("ours", "trl_default", "trl_tuned")


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
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the step's kernels are queued, not done, when the Trainer returns from it
        self.marks.append((time.perf_counter(), self.counter.trainable, self.counter.real, self.counter.slots))


def tuned_attention() -> str:
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def trl_trainer(config: str, model_dir: str, rows: list[dict], max_length: int, batch: int, steps: int, out: str,
                device: str = "cpu"):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    fixed = dict(output_dir=out, max_steps=steps, max_length=max_length, per_device_train_batch_size=batch,
                 report_to="none", save_strategy="no", logging_steps=steps, disable_tqdm=True, use_cpu=device == "cpu")
    tuned = {"trl_default": {}, "trl_cpu": dict(bf16=False, gradient_checkpointing=False),
             "trl_packing": dict(bf16=False, gradient_checkpointing=False, packing=True),
             "trl_tuned": dict(bf16=True, gradient_checkpointing=False, packing=True, padding_free=True,
                               use_liger_kernel=importlib.util.find_spec("liger_kernel") is not None)}[config]
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    tok = AutoTokenizer.from_pretrained(model_dir)
    load = dict(dtype=torch.bfloat16, attn_implementation=tuned_attention()) if config == "trl_tuned" else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    return SFTTrainer(model=model, args=SFTConfig(**fixed, **tuned), train_dataset=data, processing_class=tok)


def our_trainer(model_dir: str, rows: list[dict], max_length: int, batch: int, steps: int, out: str,
                model_base: str = "builtin:tiny", **sft):
    from llm_assets.recipes import Recipe
    from llm_assets.training.common import hardware_for
    from llm_assets.training.report import Reporter
    from llm_assets.training.sft import make_trainer, tokenized
    from llm_assets.training.spec import StageSpec

    recipe = Recipe(name="bench", data={"max_length": max_length}, model={"base": model_base},  # its shape sizes the hardware choice
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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the GPU configurations (GPU_CONFIGS)")
    p.add_argument("--model-base", default="builtin:tiny", help="The builtin model in workdir/model (ours sizes its hardware choice by it)")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here")
    if a.config not in (GPU_CONFIGS if a.device == "cuda" else CONFIGS[:4]):
        raise SystemExit(f"{a.config} is not a {a.device} configuration")

    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    rows = json.loads((work / "rows.json").read_text())
    model_dir = str(work / "model")
    t0 = time.perf_counter()
    out = str(work / f"run-{a.config}")
    if a.config == "ours":
        trainer = our_trainer(model_dir, rows, a.max_length, a.batch, a.steps, out, model_base=a.model_base)
    else:
        trainer = trl_trainer(a.config, model_dir, rows, a.max_length, a.batch, a.steps, out, a.device)
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
        "device": a.device, "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "liger": bool(getattr(trainer.args, "use_liger_kernel", False)),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if a.device == "cuda" else None,
    }
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
