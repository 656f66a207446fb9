"""Defaults chosen from the machine, because GPU-tuned defaults are wrong on a CPU.

On a CPU, gradient checkpointing only costs time (recompute) for memory a small model does not
need, and bf16 pays only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX) and the model
is wide enough (``BF16_MIN_HIDDEN``): there bf16 autocast over fp32 weights made a 7 M parameter SFT
step 1.47x faster on this project's 2-core machine; without it bf16 is emulated and slower than
fp32. A recipe can override each.

On a GPU the fast path is on wherever its package is installed: bf16, FlashAttention 2 (else
SDPA), TRL's padding-free batches (with a varlen kernel), Liger kernels, vLLM generation for
RLOO/GRPO, and checkpointing only when the stage's memory estimate does not fit the GPU.

``decide`` is a pure function of what the recipe asks (``Request``) and what the machine has
(``Machine``), so every combination is tested without a GPU; ``choose`` reads the machine.
Each choice carries its reason into the ``Hardware`` report every stage stores in its metrics.

Threading is chosen here too, for the training child process (``training_thread_env``), because
the CPU is shared: under ``dagster dev`` the webserver, daemon, code server and other runs use it.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

# Importable module -> its distribution on PyPI (the version is read from the distribution).
KERNEL_PACKAGES = {"flash_attn": "flash-attn", "liger_kernel": "liger-kernel", "vllm": "vllm"}
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
# Below this hidden size a CPU's bf16 autocast costs more in casts than its matmuls gain. A training step (batch 16 x
# 128 tokens) on this project's 2-core machine, bf16 autocast against fp32: 0.77x the speed at hidden size 128 (the
# tiny recipe), 1.2x at 192, 1.37x at 256; a 7 M model's SFT step 1.47x.
BF16_MIN_HIDDEN = 192
LARGE_MODEL_PARAMETERS = 1e9  # checkpointing without a memory estimate: above this many parameters
GB = 1e9  # as the memory estimator counts


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    dtype: str  # weights: "float32" | "bfloat16" | "float16"
    autocast: str  # matmuls under mixed precision: "bfloat16" | "float16" | "none"
    gradient_checkpointing: bool
    attn_implementation: str
    threads: int
    why: str
    padding_free: bool = False  # TRL's one-row batches, documents kept apart by a varlen attention kernel
    liger_kernel: bool = False  # TrainingArguments.use_liger_kernel
    vllm: bool = False  # RLOO/GRPO generate with vLLM colocated on the training GPU
    deepspeed: bool = False  # DeepSpeed places (and under ZeRO-3 partitions) the training model itself
    choices: tuple[str, ...] = ()  # "what: reason", one per decision

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> str:
        """This process's device: under torchrun each rank owns the GPU of its LOCAL_RANK."""
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if self.device == "cuda" else "cpu"


@dataclass(frozen=True)
class Machine:
    """What the decisions depend on; ``machine()`` reads it from this process's hardware."""

    cuda: bool
    name: str = "CPU"
    bf16: bool = False  # GPU: bf16 supported; CPU: native bf16 matmul (AVX512-BF16 or AMX)
    capability: tuple[int, int] = (0, 0)  # CUDA compute capability
    memory_gb: float | None = None  # one GPU's memory
    packages: Mapping[str, str] = field(default_factory=dict)  # importable kernel package -> version
    threads: int = 1
    waits: str = "spin"  # OMP_WAIT_POLICY


@dataclass(frozen=True)
class Request:
    """What a recipe asks of one stage; 'auto' and None are chosen from the machine."""

    dtype: str = "auto"
    attn_implementation: str = "auto"
    gradient_checkpointing: bool | None = None
    padding_free: bool | None = None
    use_liger_kernel: bool | None = None
    use_vllm: bool | None = None
    packing: bool = False  # the stage packs several documents per row (data.packing, CPT/SFT)
    generates: bool = False  # the stage samples completions while training (RLOO/GRPO)
    deepspeed: bool = False
    memory_gb: float | None = None  # the stage's memory estimate without checkpointing; None: no estimate
    parameters: float = 0
    hidden_size: int = 0  # the model's width; 0: unknown
    group: str = "sft"  # the recipe group the overrides are read from, for messages


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


SPIN_COUNT = "10000"  # GNU OpenMP spin iterations before a waiting thread sleeps, when the cores are free
FREE_CORE_SHARE = 0.5  # the cores count as free when other processes use less than half a core between them


def idle_cores(interval_s: float = 0.2) -> float | None:
    """Cores of this machine no process used over ``interval_s`` (``/proc/stat``'s idle and iowait time); None where
    there is no ``/proc/stat``."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(interval_s)
        total1, idle1 = sample()
    except OSError:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(1, total1 - total0)


def training_thread_env(processes: int = 1, environ: Mapping[str, str] = os.environ,
                        idle_now: Callable[[], float | None] | None = None) -> dict[str, str]:
    """Threading settings for a training child process; OpenMP reads them once, when torch is imported, so only its
    environment can carry them. ``idle_now``: the idle cores at launch (default ``idle_cores``).

    ``OMP_NUM_THREADS``: every core of this process's affinity, shared among torchrun's ``processes``.
    How a thread waits at the end of each parallel region depends on whether the cores are free at launch:

    * free (other processes use under half a core): spin briefly (``GOMP_SPINCOUNT=10000``) before sleeping. A 1 M
      parameter training step (batch 16 x 128 tokens, fp32) on this idle 2-core machine, tokens/s: 18,700 with this
      spin, 19,000 with OpenMP's default long spin, 13,400 with passive waits; that model's whole SFT stage took 79 s
      spinning, 120 s passive. Should a neighbour start mid-run, the short spin keeps 5,900 where the default falls
      to 1,500.
    * busy: ``OMP_WAIT_POLICY=PASSIVE``, a thread that reaches a barrier sleeps instead of burning the core its partner
      thread needs: beside one busy process 9,400, against 5,900 with the short spin and 1,500 with the default.
      (``benchmarks.run --parts contention`` compares them on the tiny recipe.)

    LLVM/Intel OpenMP maps PASSIVE to ``KMP_BLOCKTIME=0``; its short spin (``KMP_BLOCKTIME``) is left at its default.
    No ``OMP_PROC_BIND``: a thread pinned to the core a busy process holds could not move to a free one.
    A key already in ``environ`` (the user's own setting) is left as the user set it; a user's wait policy or spin
    count stands for both of them.
    """
    chosen = {"OMP_NUM_THREADS": str(max(1, cpu_cores() // max(1, processes)))}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        idle = (idle_now or idle_cores)()
        if idle is not None and (os.cpu_count() or 1) - idle < FREE_CORE_SHARE:  # unknown load: passive, the safe one
            chosen["GOMP_SPINCOUNT"] = SPIN_COUNT
        else:
            chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    return {k: v for k, v in chosen.items() if k not in environ}


def cpu_has_native_bf16() -> bool:
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def free_device_memory() -> None:
    """Return the memory of models a stage is done with (after ``del``) before it loads the next ones: a stage that
    trains and then evaluates on one GPU must not hold both sets at once."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def installed_kernels() -> dict[str, str]:
    """Kernel packages this interpreter can import (found, not imported: importing vLLM takes seconds), with versions."""
    found = {}
    for module, dist in KERNEL_PACKAGES.items():
        if importlib.util.find_spec(module) is not None:
            try:
                found[module] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[module] = "unknown version"
    return found


def wait_policy(environ: Mapping[str, str] = os.environ) -> str:
    """How OpenMP threads wait under ``environ``: its wait policy, else spinning (``GOMP_SPINCOUNT`` times when set)."""
    spin = environ.get("GOMP_SPINCOUNT")
    return environ.get("OMP_WAIT_POLICY", "").lower() or (f"spin {spin}" if spin else "spin")


def machine() -> Machine:
    waits = wait_policy()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return Machine(cuda=True, name=props.name, bf16=torch.cuda.is_bf16_supported(), capability=(props.major, props.minor),
                       memory_gb=props.total_memory / GB, packages=installed_kernels(), threads=cpu_threads(), waits=waits)
    return Machine(cuda=False, bf16=cpu_has_native_bf16(), packages=installed_kernels(), threads=cpu_threads(), waits=waits)


def choose(dtype: str = "auto", gradient_checkpointing: bool | None = None, attn_implementation: str = "auto",
           **request) -> Hardware:
    """Resolve a recipe's 'auto' / None values (``Request`` fields) on the machine this process runs on."""
    return decide(Request(dtype=dtype, gradient_checkpointing=gradient_checkpointing,
                          attn_implementation=attn_implementation, **request), machine())


def decide(want: Request, have: Machine) -> Hardware:
    """Every device decision of one stage, with its reason; an override the machine cannot honour is an error.

    An explicit dtype means weights and matmuls in that dtype; 'auto' on a CPU keeps fp32 weights
    (the optimizer needs them) and autocasts to bf16 only where the CPU has native bf16, and not under
    DeepSpeed, which casts the weights themselves to bf16 instead (unmeasured on CPU; one CI run aborted).
    """
    g = want.group
    choices: list[str] = []
    if have.cuda:
        dtype = "bfloat16" if have.bf16 else "float16"
        autocast, why_dtype = dtype, f"{dtype}: {'the GPU has bf16' if have.bf16 else 'the GPU has no bf16'}"
    else:
        narrow = 0 < want.hidden_size < BF16_MIN_HIDDEN
        native = have.bf16 and not want.deepspeed and not narrow
        dtype, autocast = "float32", "bfloat16" if native else "none"
        if native:
            why_dtype = "float32 weights, bf16 autocast: native bf16 matmul"
        elif not have.bf16:
            why_dtype = "float32: bf16 is emulated on this CPU, slower than fp32"
        elif want.deepspeed:
            why_dtype = "float32: DeepSpeed casts weights itself"
        else:
            why_dtype = f"float32: hidden size {want.hidden_size}: matmuls too small for bf16 casts to pay"
    if want.dtype != "auto":
        dtype, autocast, why_dtype = want.dtype, want.dtype if want.dtype != "float32" else "none", f"{want.dtype}: model.dtype"
    choices.append(f"dtype {why_dtype}")

    attn, why_attn = _attention(want, have, dtype)
    choices.append(f"{attn}: {why_attn}")
    varlen = attn in VARLEN_ATTENTION

    if want.padding_free is not None:
        if want.padding_free is False and varlen and want.packing:
            raise ValueError(f"{g}.padding_free: false with data.packing needs an attention kernel that reads a per-row "
                             f"mask, but {attn} would attend across the packed documents: set model.attn_implementation: "
                             "sdpa, or remove the key")
        padding_free, why_pf = want.padding_free, f"{g}.padding_free"
    elif varlen:
        padding_free, why_pf = True, f"{attn} keeps the documents of one flattened row apart"
    else:
        padding_free, why_pf = False, f"{attn} has no varlen kernel: one packed bin per row"
    choices.append(f"padding_free {padding_free}: {why_pf}")

    liger, why_liger = _optional_kernel(want.use_liger_kernel, "liger_kernel", f"{g}.use_liger_kernel", have)
    choices.append(f"liger_kernel {liger}: {why_liger}")
    if want.generates:
        vllm, why_vllm = _optional_kernel(want.use_vllm, "vllm", f"{g}.use_vllm", have)
        why_vllm += "" if vllm else "; HF generate"
    else:
        vllm, why_vllm = False, "no online generation in this stage"
    choices.append(f"vllm {vllm}: {why_vllm}")

    ckpt, why_ckpt = _checkpointing(want, have)
    choices.append(f"gradient_checkpointing {ckpt}: {why_ckpt}")

    matmuls = {"bfloat16": "bf16 autocast", "float16": "fp16 autocast"}.get(autocast, "fp32 matmuls")
    where = f"GPU {have.name}" if have.cuda else "CPU"
    why = (f"{where}: {dtype} weights, {matmuls}, {attn}, gradient checkpointing {'on' if ckpt else 'off'}, "
           f"{have.threads} threads ({have.waits} waits)")
    return Hardware(device="cuda" if have.cuda else "cpu", dtype=dtype, autocast=autocast, gradient_checkpointing=ckpt,
                    attn_implementation=attn, threads=have.threads, why=why, padding_free=padding_free, liger_kernel=liger,
                    vllm=vllm, deepspeed=want.deepspeed, choices=tuple(choices))


def _attention(want: Request, have: Machine, dtype: str) -> tuple[str, str]:
    if want.attn_implementation in VARLEN_ATTENTION:  # asked for by name: refused here, in one line, where it cannot run
        key = f"model.attn_implementation: {want.attn_implementation}"
        if not have.cuda:
            raise ValueError(f"{key}, but not on a CPU (FlashAttention is CUDA only): set it to auto or sdpa")
        if "flash_attn" not in have.packages:
            raise ValueError(f"{key}, but flash_attn is not installed (pip install flash-attn): set it to auto or sdpa")
        if have.capability < (8, 0):
            raise ValueError(f"{key}, but this GPU has compute capability {have.capability[0]}.{have.capability[1]} and "
                             "flash_attn needs 8.0: set it to auto or sdpa")
        if dtype == "float32":
            raise ValueError(f"{key}, but the weights are float32 and FlashAttention 2 runs in bf16/fp16 only: "
                             "set model.dtype: bfloat16, or attn_implementation: auto")
    if want.attn_implementation != "auto":
        return want.attn_implementation, "model.attn_implementation"
    if not have.cuda:
        return "sdpa", "CPU (FlashAttention is CUDA only)"
    if "flash_attn" not in have.packages:
        return "sdpa", "flash_attn not installed"
    if have.capability < (8, 0):
        return "sdpa", f"flash_attn {have.packages['flash_attn']} needs compute capability 8.0, this GPU has {have.capability[0]}.{have.capability[1]}"
    if dtype == "float32":
        return "sdpa", "FlashAttention 2 runs in bf16/fp16 only, the weights are float32"
    return "flash_attention_2", f"flash_attn {have.packages['flash_attn']} installed on CUDA"


def _optional_kernel(wanted: bool | None, module: str, key: str, have: Machine) -> tuple[bool, str]:
    """A CUDA-only package: on where installed unless the recipe says false; asked for where it cannot run, an error."""
    if wanted is False:
        return False, f"{key}: false"
    if have.cuda and module in have.packages:
        return True, f"{module} {have.packages[module]} installed on CUDA" + (f" ({key})" if wanted else "")
    missing = "not on a CPU (CUDA only)" if not have.cuda else f"{module} is not installed (pip install {KERNEL_PACKAGES[module]})"
    if wanted:
        raise ValueError(f"{key}: true, but {missing}: remove the key or set it to false")
    return False, missing


def _checkpointing(want: Request, have: Machine) -> tuple[bool, str]:
    if want.gradient_checkpointing is not None:
        return want.gradient_checkpointing, f"{want.group}.gradient_checkpointing"
    if not have.cuda:
        return False, "CPU: recompute costs more time than the memory saves"
    if want.memory_gb is not None and have.memory_gb is not None:
        need = want.memory_gb > have.memory_gb
        return need, (f"the stage's estimate without it, {want.memory_gb:.1f} GB, "
                      f"{'exceeds' if need else 'fits'} the GPU's {have.memory_gb:.1f} GB")
    need = want.parameters > LARGE_MODEL_PARAMETERS
    return need, f"no memory estimate: {want.parameters / 1e9:.2f} B parameters {'>' if need else '<='} 1 B"
