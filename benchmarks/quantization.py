"""Quantization and memory: size and eval loss of a trained tiny model at fp32 / 8-bit / 4-bit, and
peak RSS of a LoRA step versus a QLoRA step on a ~110 M parameter Llama (own process each)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from llm_assets.markdown import markdown_table

ROOT = Path(__file__).resolve().parent.parent
BIG = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vocab_size=32000)


def sizes_and_loss(model_dir: Path, rows: list[dict]) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.training.common import quantization_config
    from llm_assets.training.evaluate import completion_loss
    from llm_assets.training.quantize import linear_bytes

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


def build_big(work: Path) -> tuple[Path, Path, int]:
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    fp32, nf4 = work / "big-fp32", work / "big-nf4"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**BIG, max_position_embeddings=256, tie_word_embeddings=False))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(fp32)
    del model
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    LlamaForCausalLM.from_pretrained(fp32, quantization_config=q).save_pretrained(nf4)
    return fp32, nf4, params


def step_rss(method: str, model_dir: Path, steps: int) -> dict:
    """A LoRA or QLoRA training run of ``steps`` optimizer steps, in a fresh process: its peak RSS."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.quantization", method, str(model_dir), str(steps)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{method} step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(method: str, model_dir: str, steps: int) -> None:
    import psutil
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    baseline = psutil.Process().memory_info().rss / 2**20  # the interpreter and libraries, before any weights
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, BIG["vocab_size"], (4, 128), generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": method, "peak_rss_mb": peak, "baseline_mb": baseline, "above_baseline_mb": peak - baseline,
                      "seconds_per_step": (time.perf_counter() - t) / steps, "loss": float(loss)}))


def quantization(work: Path, trained: Path | None, rows: list[dict], quick: bool = False) -> dict:
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
    fp32, nf4, params = build_big(work)
    lora, qlora = step_rss("lora", fp32, 2), step_rss("qlora", nf4, 2)
    from transformers import AutoModelForCausalLM

    from llm_assets.training.quantize import linear_bytes, weights_bytes

    lin = linear_bytes(AutoModelForCausalLM.from_pretrained(nf4)) / linear_bytes(AutoModelForCausalLM.from_pretrained(fp32))
    out["big"] = {"parameters": params, "lora": lora, "qlora": qlora, "rss_ratio": qlora["peak_rss_mb"] / lora["peak_rss_mb"],
                  "rss_above_baseline_ratio": qlora["above_baseline_mb"] / lora["above_baseline_mb"],
                  "linear_ratio_4bit": lin, "file_ratio_4bit": weights_bytes(nf4) / weights_bytes(fp32)}
    b = out["big"]
    print(f"\nLoRA vs QLoRA on a {params / 1e6:.0f} M parameter Llama (r=16, all linear layers, batch 4 x 128, 2 steps, own process each)")
    print(markdown_table(["method", "peak RSS MB", "of which above the libraries' baseline", "s / step"],
                         [[m, f"{b[m]['peak_rss_mb']:.0f}", f"{b[m]['above_baseline_mb']:.0f}", f"{b[m]['seconds_per_step']:.1f}"]
                          for m in ("lora", "qlora")]))
    print(f"QLoRA / LoRA peak RSS {b['rss_ratio']:.2f} (above baseline {b['rss_above_baseline_ratio']:.2f}); 4-bit linear layers {lin:.3f}x fp32; whole file {b['file_ratio_4bit']:.3f}x")
    return out


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
