"""Defaults chosen from the machine, because GPU-tuned defaults are wrong on a CPU.

On this project's 2-core CPU, bf16 autocast (emulated) plus gradient checkpointing (recompute)
made TRL's SFT about 20x slower than fp32 without checkpointing. A recipe can override each.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    dtype: str  # "float32" | "bfloat16" | "float16"
    gradient_checkpointing: bool
    attn_implementation: str
    threads: int
    why: str

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def choose(dtype: str = "auto", gradient_checkpointing: bool | None = None, attn_implementation: str = "auto",
           large_model: bool = False) -> Hardware:
    """Resolve 'auto' / None recipe values for the machine this process runs on."""
    if torch.cuda.is_available():
        auto_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        auto_attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
        auto_ckpt, device, why = large_model, "cuda", f"GPU {torch.cuda.get_device_name(0)}"
    else:
        auto_dtype, auto_attn, auto_ckpt, device = "float32", "sdpa", False, "cpu"
        why = "CPU: fp32 (no native bf16 matmul), no gradient checkpointing (recompute costs more than the memory saves)"
    return Hardware(
        device=device,
        dtype=auto_dtype if dtype == "auto" else dtype,
        gradient_checkpointing=auto_ckpt if gradient_checkpointing is None else gradient_checkpointing,
        attn_implementation=auto_attn if attn_implementation == "auto" else attn_implementation,
        threads=cpu_threads(),
        why=why,
    )
