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
                   attn_implementation: str | None = None) -> PreTrainedModel:
    """A plain model; a LoRA adapter is applied to its base and merged (what evaluation and export need)."""
    directory = Path(directory)
    if is_adapter(directory):
        from peft import PeftModel

        base = load_causal_lm(base_dir or adapter_base(directory), dtype, attn_implementation=attn_implementation)
        return PeftModel.from_pretrained(base, directory).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation=attn_implementation)


def load_reward_model(directory: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    return AutoModelForSequenceClassification.from_pretrained(directory, dtype=dtype, num_labels=1)


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
