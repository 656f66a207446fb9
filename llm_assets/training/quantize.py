"""Stage ``quantize``: LoRA merged into its base, then bitsandbytes 4-bit NF4 (or 8-bit).

Reports the file-size ratio, the bytes of the quantized linear layers against their fp32 bytes,
and the eval-loss delta against the unquantized model on the SFT held-out replies.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from llm_assets.training.common import hardware_for, model_kwargs, quantization_config, write_metrics
from llm_assets.training.data import load_rows
from llm_assets.training.evaluate import SAMPLES, completion_loss, generate
from llm_assets.training.models import load_causal_lm, load_tokenizer
from llm_assets.training.report import Reporter
from llm_assets.training.spec import StageSpec

SAMPLE_TOKENS = 24  # greedy reply length of the samples, as the SFT stage's exact-match samples


def weights_bytes(directory: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*.safetensors"))


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the weights of the decoder's linear layers (quantized or not)."""
    total = 0
    for name, module in model.named_modules():
        if name.endswith("lm_head") or not hasattr(module, "weight") or module.weight is None:
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt"):
            w = module.weight
            total += w.numel() * w.element_size()
            state = getattr(w, "quant_state", None)
            if state is not None:  # 4-bit absmax constants (double-quantized or not)
                total += state.absmax.numel() * state.absmax.element_size()
    return total


def run(spec: StageSpec, reporter: Reporter) -> dict[str, Any]:
    recipe = spec.parsed_recipe
    q = recipe.quantization
    hw = hardware_for(recipe)
    placed = model_kwargs(hw)  # merged and quantized on the stage's device, in its dtype (fp32 on a CPU)
    source = spec.inputs["model"]
    tok = load_tokenizer(source)
    held_out = load_rows(spec.datasets["sft"], "eval", spec.options.get("eval_limit"))
    with tempfile.TemporaryDirectory() as tmp:
        merged = load_causal_lm(source, **placed)
        merged.save_pretrained(tmp)
        reference = completion_loss(merged, tok, held_out, recipe.data.chat_template, recipe.data.max_length)["eval_loss"]
        shown = held_out[:SAMPLES]
        unquantized_replies = generate(merged, tok, [r["prompt"] for r in shown], recipe.data.chat_template, SAMPLE_TOKENS)
        fp32_linear = linear_bytes(merged) * 4 // merged.dtype.itemsize  # as fp32, whatever dtype it was merged in
        del merged
        qc = quantization_config(q.bits, hw.torch_dtype, q.quant_type, q.double_quant)
        quantized = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qc, **{"device_map": "cpu", **placed})
        loss = completion_loss(quantized, tok, held_out, recipe.data.chat_template, recipe.data.max_length)["eval_loss"]
        replies = generate(quantized, tok, [r["prompt"] for r in shown], recipe.data.chat_template, SAMPLE_TOKENS)
        full_size = weights_bytes(tmp)
        metrics = {"bits": q.bits, "quant_type": q.quant_type if q.bits == 4 else "int8", "unquantized_eval_loss": reference,
                   "eval_loss": loss, "eval_loss_delta": loss - reference, "unquantized_bytes": full_size,
                   "linear_bytes_ratio": linear_bytes(quantized) / fp32_linear, "hardware": hw.as_dict(),
                   "samples": [{"prompt": r["prompt"][-1]["content"], "expected": r["completion"], "unquantized": a,
                                "quantized": b} for r, a, b in zip(shown, unquantized_replies, replies)]}
        quantized.save_pretrained(spec.output_dir)
        tok.save_pretrained(spec.output_dir)
    metrics["quantized_bytes"] = weights_bytes(spec.output_dir)
    metrics["size_ratio"] = metrics["quantized_bytes"] / full_size
    write_metrics(spec.output_dir, metrics)
    reporter.log(f"[quantize] {q.bits}-bit: {full_size:,} -> {metrics['quantized_bytes']:,} bytes ({metrics['size_ratio']:.2f}x), "
                 f"linear layers {metrics['linear_bytes_ratio']:.2f}x, eval loss {reference:.4f} -> {loss:.4f}")
    return metrics
