"""What a worker process skips: optional packages its stage cannot use, and Python's teardown once it is done.

transformers' Trainer imports PEFT whenever PEFT is installed, and PEFT imports bitsandbytes, which runs
``torch.compile`` on its kernels as it loads: 2.6 s of a worker's start-up on a 2-core CPU (bitsandbytes 1.75 s,
PEFT 0.86 s; ``python -X importtime``), paid by every stage of the demo graph. A full fine-tune of a builtin model
uses neither before the quantize stage. Hub models are left alone: a hub repo may hold an adapter or a checkpoint
already quantized with bitsandbytes.

Tearing the interpreter down after torch, transformers and TRL (freeing every module) took 1.2 s of each worker's
exit; the work is committed by then, so ``exit_without_teardown`` runs the exit hooks and leaves.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

TRAINING_STAGES = ("base", "cpt", "sft", "reward", "rlhf")  # stages that never load the quantized release


def unused_packages(stage: str, recipe: dict[str, Any]) -> list[str]:
    """The packages the ``stage`` of ``recipe`` (a recipe as JSON) cannot import on any code path."""
    if stage not in TRAINING_STAGES or not str(recipe["model"]["base"]).startswith("builtin:"):
        return []
    method = recipe["sft"]["method"]
    return {"full": ["bitsandbytes", "peft"], "lora": ["bitsandbytes"]}.get(method, [])


def hide(packages: list[str]) -> None:
    """Make ``packages`` unimportable in this process before anything imports them: a ``None`` in ``sys.modules`` is
    Python's way to stop an import, and ``importlib.util.find_spec`` then answers None, so the availability checks
    of transformers, PEFT and accelerate report the package missing instead of importing it."""
    for name in packages:
        if name not in sys.modules:
            sys.modules[name] = None


def exit_without_teardown(code: int) -> None:
    """End this process now with ``code``: the ``atexit`` hooks run (trackers finish their runs, ``datasets`` and
    ``tempfile`` delete their temporary files, logging flushes), the module teardown after them does not."""
    atexit._run_exitfuncs()  # what interpreter exit runs first; CPython has no public name for it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
