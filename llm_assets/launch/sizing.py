"""How big a stage's worker is: GPUs, CPU cores, host memory and ``/dev/shm``, from the recipe and the memory estimate.

One answer for every launcher, so a Kubernetes pod and an ECS task of the same stage ask for the same machine.

- GPUs: the memory estimate's ``gpus`` for the stage, the one place that decides them: a training stage (cpt, sft,
  reward, rlhf) gets the recipe's ``resources.gpus`` (``distributed.processes`` ranks, one per GPU); ``base``,
  ``quantize`` and ``evaluate`` run one process that loads one model, so one GPU (none for a CPU recipe): a pod
  holding eight GPUs for an evaluation would idle seven.
- Host memory: the request is the estimate's ``host_gb`` (what the process needs, so the scheduler places it on a
  node that has it); the limit is the recipe's ``resources.memory_gb`` when set, which must leave room for the
  estimate and ``/dev/shm`` (a memory-backed volume is charged to the worker's memory).
- CPU: ``resources.cpus``, else 4 cores per process (the main loop, tokenization and NCCL's proxy thread;
  DataLoader workers are off, see ``training.common.trainer_args``). The worker's OpenMP threads follow the cores
  it is given, not the cores of the node it lands on (a container sees every core of the node).
- ``/dev/shm``: container runtimes give 64 MB, and NCCL places its intra-node buffers there (NVIDIA's container
  guide asks for ``--shm-size=1g``); each local rank gets 1 GB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llm_assets.paths import recipes_dir
from llm_assets.recipes import Recipe
from llm_assets.stage_memory import stage_memory

TRAINING_STAGES = ("cpt", "sft", "reward", "rlhf")
WORKER_STAGES = ("base", "cpt", "sft", "reward", "rlhf", "quantize", "evaluate", "evaluation", "release", "predict")
CPUS_PER_PROCESS = 4
SHM_GB_PER_PROCESS = 1.0


@dataclass(frozen=True)
class WorkerSize:
    """What one stage's worker asks its cluster for (GB are 10^9 bytes, as the memory estimate counts them)."""

    stage: str
    processes: int
    gpus: int
    cpus: float
    memory_gb: float  # request: the estimate's host memory
    memory_limit_gb: float | None  # the recipe's resources.memory_gb
    shm_gb: float
    device_gb: float  # per GPU, from the estimate
    estimate: str  # the estimate's own description

    @property
    def threads_per_process(self) -> int:
        return max(1, int(self.cpus) // self.processes)


def worker_processes(recipe: Recipe, stage: str) -> int:
    """Processes the worker runs: ``distributed.processes`` for a training stage (under torchrun), else one."""
    return recipe.distributed.processes if stage in TRAINING_STAGES else 1


def worker_size(recipe: Recipe, stage: str, shm_gb: float | None = None) -> WorkerSize:
    """The worker for ``stage`` of ``recipe``; ``shm_gb`` overrides the derived ``/dev/shm`` size."""
    where = recipes_dir() / f"{recipe.name}.yaml"
    if stage not in WORKER_STAGES:
        raise ValueError(f"no worker for stage {stage!r}; stages are {', '.join(WORKER_STAGES)}")
    processes = worker_processes(recipe, stage)
    res = recipe.resources
    memory = stage_memory(recipe, stage)
    gpus = memory.gpus
    if gpus and processes > gpus:
        raise ValueError(f"{where}: distributed.processes is {processes} but resources.gpus is {res.gpus}: "
                         "a worker runs one process per GPU; make them equal")
    shm = SHM_GB_PER_PROCESS * processes if shm_gb is None else shm_gb
    if res.memory_gb is not None and res.memory_gb < memory.host_gb + shm:
        raise ValueError(f"{where}: resources.memory_gb = {res.memory_gb:g} leaves no room for the {stage} stage: "
                         f"{memory.host_gb:.1f} GB estimated host memory + {shm:g} GB /dev/shm. Raise it or remove it "
                         f"({memory.describe()})")
    return WorkerSize(stage=stage, processes=processes, gpus=gpus, cpus=res.cpus or CPUS_PER_PROCESS * processes,
                      memory_gb=memory.host_gb, memory_limit_gb=res.memory_gb, shm_gb=shm,
                      device_gb=memory.device_gb if gpus else 0.0, estimate=memory.describe())


def decimal_megabytes(gb: float) -> int:
    """``gb`` (10^9 bytes) in whole 10^6-byte units, rounded up: Kubernetes' ``M`` suffix."""
    return math.ceil(round(gb * 1000, 6))


def mebibytes(gb: float) -> int:
    """``gb`` (10^9 bytes) in whole MiB, rounded up: ECS counts memory in MiB."""
    return math.ceil(round(gb * 1e9 / 2**20, 6))


def cuda_gpus() -> int:
    """CUDA devices this process sees."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_gpu_shortfall(recipe: Recipe) -> str | None:
    """Why this machine cannot give a recipe whose stages run here (launcher subprocess) the GPUs it asks for, or None."""
    gpus = cuda_gpus()
    if recipe.resources.gpus <= gpus:
        return None
    return (f"it asks for resources.gpus: {recipe.resources.gpus} and its stages run on this machine "
            f"(launcher subprocess), which has {gpus} CUDA GPU(s): run it where the GPUs are (resources.launcher: k8s or "
            "ecs, or a GPU machine), or set resources.gpus: 0 to train on the CPU")
