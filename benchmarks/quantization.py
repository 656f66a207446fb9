"""Quantization and memory: size and eval loss of a trained tiny model at fp32 / 8-bit / 4-bit, and
peak RSS of LoRA steps versus QLoRA steps of our SFT path on a 105 M parameter Llama (own process
each), with and without gradient checkpointing (QLoRA's usual companion: activations otherwise hide
the weights' saving)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from llm_assets.markdown import markdown_table

ROOT = Path(__file__).resolve().parent.parent
BIG = dict(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12, vocab_size=32000, tie_word_embeddings=False)


def sizes_and_loss(model_dir: Path, rows: list[dict]) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.training.common import quantization_config
    from llm_assets.training.evaluate import completion_loss
    from llm_assets.training.quantize import linear_bytes

    warnings.filterwarnings("ignore", message="MatMul8bitLt")  # once per matmul: the 8-bit row says it already
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for bits in (None, 8, 4):
        kw = {"quantization_config": quantization_config(bits, torch.float32)} if bits else {}
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
        loss = completion_loss(model, tok, rows, "tokenizer", 128)["eval_loss"]
        out.append({"weights": f"{bits}-bit" if bits else "fp32", "state_bytes": size, "linear_bytes": linear_bytes(model), "eval_loss": loss})
    for r in out:
        r["size_ratio"], r["linear_ratio"] = r["state_bytes"] / out[0]["state_bytes"], r["linear_bytes"] / out[0]["linear_bytes"]
    return out


def build_big(work: Path, rows: list[dict]) -> tuple[Path, Path, int]:
    """A >= 100 M parameter Llama with a tokenizer trained on the SFT rows (the throughput part's work directory
    layout: rows.json, model/), and its 4-bit copy (for the file ratio)."""
    from transformers import AutoModelForCausalLM

    from benchmarks.run import build_workdir
    from llm_assets.training.common import quantization_config

    fp32, nf4 = work / "model", work / "big-nf4"
    params = build_workdir(work, rows, BIG, 256)["parameters"]
    AutoModelForCausalLM.from_pretrained(fp32, quantization_config=quantization_config(4, torch.float32)).save_pretrained(nf4)
    return fp32, nf4, params


def step_rss(method: str, work: Path, steps: int, checkpointing: bool) -> dict:
    """``steps`` optimizer steps of our SFT path with method lora or qlora, in a fresh process: the steps' peak RSS."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quantization", method, str(work), str(steps), str(int(checkpointing))],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{method} step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _child(method: str, work: str, steps: int, checkpointing: bool) -> None:
    """The sft_model asset's trainer (make_trainer): QLoRA quantizes the fp32 weights to 4-bit as it loads them."""
    from benchmarks.sft_throughput import our_trainer

    torch.set_num_threads(2)
    baseline = rss_mb("VmRSS")  # the interpreter and libraries, before any weights
    rows = json.loads((Path(work) / "rows.json").read_text())
    trainer = our_trainer(str(Path(work) / "model"), rows, 256, 4, steps, str(Path(work) / f"run-{method}"),
                          method=method, gradient_checkpointing=checkpointing)
    torch.set_num_threads(2)
    loaded = rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: from here on it is the steps' peak, not loading's
    t = time.perf_counter()
    trainer.train()
    peak = rss_mb("VmHWM")
    print(json.dumps({"method": method, "checkpointing": checkpointing, "peak_rss_mb": peak, "baseline_mb": baseline,
                      "above_baseline_mb": peak - baseline, "loaded_rss_mb": loaded,
                      "seconds_per_step": (time.perf_counter() - t) / steps, "loss": trainer.state.log_history[-1].get("train_loss")}))


def quantization(work: Path, trained: Path | None, rows: list[dict], sft_rows: list[dict], quick: bool = False) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    if trained is not None:
        out["tiny"] = tiny = sizes_and_loss(trained, rows)
        print("\nQuantization of the trained tiny SFT model (bitsandbytes; eval loss on held-out demo completions)")
        print(markdown_table(["weights", "state bytes", "x fp32", "linear layers x fp32", "eval loss"],
                             [[r["weights"], f"{r['state_bytes']:,}", f"{r['size_ratio']:.3f}", f"{r['linear_ratio']:.3f}",
                               f"{r['eval_loss']:.4f}"] for r in tiny]))
    if quick:
        return out
    fp32, nf4, params = build_big(work, sft_rows)
    runs = {(m, ck): step_rss(m, work, 2, ck) for ck in (False, True) for m in ("lora", "qlora")}
    from transformers import AutoModelForCausalLM

    from llm_assets.training.quantize import linear_bytes, weights_bytes

    lin = linear_bytes(AutoModelForCausalLM.from_pretrained(nf4)) / linear_bytes(AutoModelForCausalLM.from_pretrained(fp32))
    ratios = {ck: (runs["qlora", ck]["peak_rss_mb"] / runs["lora", ck]["peak_rss_mb"],
                   runs["qlora", ck]["above_baseline_mb"] / runs["lora", ck]["above_baseline_mb"]) for ck in (False, True)}
    out["big"] = {"parameters": params, "runs": [r for r in runs.values()],
                  "rss_ratio": ratios[False][0], "rss_above_baseline_ratio": ratios[False][1],
                  "rss_ratio_checkpointing": ratios[True][0], "rss_above_baseline_ratio_checkpointing": ratios[True][1],
                  "linear_ratio_4bit": lin, "file_ratio_4bit": weights_bytes(nf4) / weights_bytes(fp32)}
    b = out["big"]
    print(f"\nLoRA vs QLoRA through our SFT path on a {params / 1e6:.0f} M parameter Llama (r=16, all linear layers, batch 4 x 256 "
          "packed, 2 steps, own process each; peak RSS of the steps, after loading)")
    print(markdown_table(["method", "gradient checkpointing", "peak RSS MB", "above the libraries' baseline MB", "RSS after loading MB", "s / step"],
                         [[m, "yes" if ck else "no", f"{r['peak_rss_mb']:.0f}", f"{r['above_baseline_mb']:.0f}", f"{r['loaded_rss_mb']:.0f}",
                           f"{r['seconds_per_step']:.1f}"] for (m, ck), r in runs.items()]))
    print(f"QLoRA / LoRA peak RSS {ratios[False][0]:.2f} without checkpointing, {ratios[True][0]:.2f} with "
          f"(above baseline {ratios[False][1]:.2f} / {ratios[True][1]:.2f}); 4-bit linear layers {lin:.3f}x fp32; whole file {b['file_ratio_4bit']:.3f}x")
    return out


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
