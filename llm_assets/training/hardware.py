"""Defaults chosen from the machine, because GPU-tuned defaults are wrong on a CPU.

On a CPU, gradient checkpointing only costs time (recompute) for memory a small model does not
need, and bf16 pays only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX): there
bf16 autocast over fp32 weights made a 7 M parameter SFT step 1.47x faster on this project's
2-core machine; without it bf16 is emulated and slower than fp32. A recipe can override each.

Threading is chosen here too, for the training child process (``training_thread_env``), because
the CPU is shared: under ``dagster dev`` the webserver, daemon, code server and other runs use it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    dtype: str  # weights: "float32" | "bfloat16" | "float16"
    autocast: str  # matmuls under mixed precision: "bfloat16" | "float16" | "none"
    gradient_checkpointing: bool
    attn_implementation: str
    threads: int
    why: str

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_threads() -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` when set (the launcher sets it per process; a user may override it), else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else cpu_cores()


def training_thread_env(processes: int = 1, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Threading settings for a training child process; OpenMP reads them once, when torch is imported, so only its
    environment can carry them.

    ``OMP_WAIT_POLICY=PASSIVE``: a thread that reaches a barrier sleeps instead of spinning, so it does not burn the
    core its partner thread needs. A demo-size SFT on this 2-core machine (``python -m benchmarks.run --parts
    contention``; tokens/s, min-max of 3) beside one busy process: 444-767 spinning, 2,856-5,795 passive while other
    test runs loaded the machine; 2,228-3,228 vs 5,913-6,554 when it was quieter. With nothing but other engineers'
    tests beside it, spinning fell to 613-5,288 and passive kept 5,678-6,622. On a near-idle machine passive ran from
    11% faster (median 10,949 vs 9,870) to 17% slower (8,475 vs 10,613, median of 5) than spinning, run to run; a
    short spin (``GOMP_SPINCOUNT=1000``) was no better than passive either way. LLVM/Intel OpenMP maps PASSIVE to
    ``KMP_BLOCKTIME=0`` and GNU OpenMP (PyPI torch) to no spinning, so one variable covers both.
    ``OMP_NUM_THREADS``: every core of this process's affinity, shared among torchrun's ``processes``. One thread
    fewer was as fast beside a busy process (6,086-7,408) but 35% slower idle (6,683-7,802 vs 8,848-10,983).
    No ``OMP_PROC_BIND``: a thread pinned to the core a busy process holds could not move to a free one.
    A key already in ``environ`` (the user's own setting) is left as the user set it.
    """
    chosen = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(max(1, cpu_cores() // max(1, processes)))}
    return {k: v for k, v in chosen.items() if k not in environ}


def cpu_has_native_bf16() -> bool:
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def choose(dtype: str = "auto", gradient_checkpointing: bool | None = None, attn_implementation: str = "auto",
           large_model: bool = False, deepspeed: bool = False) -> Hardware:
    """Resolve 'auto' / None recipe values for the machine this process runs on.

    An explicit dtype means weights and matmuls in that dtype; 'auto' on a CPU keeps fp32 weights
    (the optimizer needs them) and autocasts to bf16 only where the CPU has native bf16, and not under
    DeepSpeed, which casts the weights themselves to bf16 instead (unmeasured on CPU; one CI run aborted).
    """
    if torch.cuda.is_available():
        auto_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        auto_autocast, auto_attn = auto_dtype, "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
        auto_ckpt, device, why = large_model, "cuda", f"GPU {torch.cuda.get_device_name(0)}"
    else:
        auto_dtype, auto_attn, auto_ckpt, device = "float32", "sdpa", False, "cpu"
        native = cpu_has_native_bf16() and not deepspeed
        auto_autocast = "bfloat16" if native else "none"
        why = (f"CPU: fp32 weights, {'bf16 autocast (native bf16 matmul)' if native else 'fp32 matmuls'}, "
               f"no gradient checkpointing (recompute costs more than the memory saves), {cpu_threads()} threads "
               f"({os.environ.get('OMP_WAIT_POLICY', 'spin').lower()} waits)")
    if dtype != "auto":
        auto_dtype, auto_autocast = dtype, dtype if dtype != "float32" else "none"
    return Hardware(
        device=device,
        dtype=auto_dtype,
        autocast=auto_autocast,
        gradient_checkpointing=auto_ckpt if gradient_checkpointing is None else gradient_checkpointing,
        attn_implementation=auto_attn if attn_implementation == "auto" else attn_implementation,
        threads=cpu_threads(),
        why=why,
    )
