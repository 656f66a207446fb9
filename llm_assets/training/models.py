"""Loading the models the stages pass to each other: full directories or LoRA adapters."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(directory: str | Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).exists()


def adapter_base(directory: str | Path) -> str:
    return json.loads((Path(directory) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]


def load_tokenizer(directory: str | Path):
    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(directory: str | Path, dtype: torch.dtype = torch.float32, base_dir: str | None = None,
                   attn_implementation: str | None = None, device_map: dict | str | None = None,
                   quantization_config=None) -> PreTrainedModel:
    """A plain model; a LoRA adapter is applied to its base and merged (what evaluation and export need).

    ``dtype``/``device_map`` (``common.model_kwargs``) load it straight onto the stage's device: an 8 B model is never
    materialised in fp32 on the host. A ``quantization_config`` quantizes a whole model as it loads (an adapter's base stays whole: it is merged into)."""
    directory = Path(directory)
    if is_adapter(directory):
        from peft import PeftModel

        base = load_causal_lm(base_dir or adapter_base(directory), dtype, attn_implementation=attn_implementation, device_map=device_map)
        return PeftModel.from_pretrained(base, directory).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation=attn_implementation,
                                                device_map=device_map, **quantized(quantization_config))


def load_reward_model(directory: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
                      device_map: dict | str | None = None, quantization_config=None) -> PreTrainedModel:
    return AutoModelForSequenceClassification.from_pretrained(directory, dtype=dtype, num_labels=1, attn_implementation=attn_implementation,
                                                              device_map=device_map, **quantized(quantization_config))


def quantized(quantization_config) -> dict:
    """``quantization_config`` only when there is one: passing None makes transformers ignore the one a saved 4-bit
    checkpoint's config.json carries, and its packed weights then fail to load."""
    return {} if quantization_config is None else {"quantization_config": quantization_config}


def parameter_count(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def whole_model_dir(directory: str | Path, merged: PreTrainedModel | None = None) -> Iterator[str]:
    """A directory with full weights: ``directory`` itself, or for a LoRA adapter its merge (``merged``
    when the caller already loaded it) saved to a temporary directory, for loaders that take no adapter."""
    if not is_adapter(directory):
        yield str(directory)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (merged or load_causal_lm(directory)).save_pretrained(tmp)
        yield tmp
