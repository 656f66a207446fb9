"""TrainingLauncher: starts a training worker through Dagster Pipes and reads back what it committed.

The worker (``python -m llm_assets.training STAGE``; ``torchrun --standalone --nproc-per-node N -m
llm_assets.training STAGE`` when ``distributed.processes > 1``) gets its work order as Pipes extras and
shares nothing with this process but the artifact store: it runs in a fresh directory, and its result or
error comes back through the store (a Pipes message can arrive torn). Its logs stream into the run log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    Failure,
    MetadataValue,
    PipesClientCompletedInvocation,
    PipesTempFileContextInjector,
    PipesTempFileMessageReader,
    open_pipes_session,
)
from pydantic import Field

from llm_assets.artifacts import Store
from llm_assets.recipes import Recipe
from llm_assets.training.hardware import training_thread_env
from llm_assets.training.order import ORDER_EXTRA, WorkOrder

CHILD_STOP_SECONDS = 20  # how long an interrupted child may take to stop before it is killed (Dagster's default)
TRAINING_STAGES = ("cpt", "sft", "reward", "rlhf")


class TrainingLauncher(ConfigurableResource):
    python: str = Field(default_factory=lambda: sys.executable, description="Interpreter for the training process.")
    extra_env: dict[str, str] = Field(default_factory=dict, description="Environment added to the training process.")

    def command(self, stage: str, processes: int) -> list[str]:
        entry = ["-m", "llm_assets.training", stage]
        if processes > 1:
            torchrun = Path(self.python).with_name("torchrun")
            launcher = [str(torchrun)] if torchrun.exists() else [self.python, "-m", "torch.distributed.run"]
            return [*launcher, "--standalone", f"--nproc-per-node={processes}", *entry]
        return [self.python, *entry]

    def run(self, context: AssetExecutionContext, order: WorkOrder, store: Store) -> dict[str, Any]:
        """Launch the worker and return its result ({version, metrics}) as it left it in the store."""
        for path in (order.result_path, order.error_path):  # a previous attempt's, not this one's
            store.delete(path)
        processes = launched_processes(order.stage, Recipe.model_validate(order.recipe))
        command = self.command(order.stage, processes)
        context.log.info(f"launching {' '.join(command)}")
        workdir = Path(tempfile.mkdtemp(prefix=f"llm-assets-{order.stage}-"))  # the worker shares no directory with us
        try:
            returncode, _ = run_pipes_process(context, command, child_env(self.extra_env, processes),
                                              extras={ORDER_EXTRA: order.to_dict()}, cwd=workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return worker_result(order, store, returncode)


def worker_result(order: WorkOrder, store: Store, returncode: int | None) -> dict[str, Any]:
    """The committed result, or the Failure that says why there is none. A worker that reported its own error failed for
    a reason a retry cannot change (bad data, a recipe the model cannot run): that failure is not retried. A worker
    that was killed or evicted is, and resumes from its last stored checkpoint."""
    error = store.read_json(order.error_path)
    if error is not None:
        raise Failure(description=f"the {order.stage} stage failed: {error['error']}", allow_retries=False,
                      metadata={"traceback": MetadataValue.md(f"```\n{error['traceback'][-6000:]}\n```")})
    result = store.read_json(order.result_path)
    if result is not None and returncode in (0, None) and store.has_version(order.output_key, result["version"]):
        return result
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode).name
        raise Failure(description=f"the {order.stage} worker was killed by {sig}; a retry (or the next materialization) "
                                  "resumes from its last stored checkpoint")
    raise Failure(description=f"the {order.stage} worker ended (exit status {returncode}) without committing a result or "
                              "reporting an error; see its output above")


def launched_processes(stage: str, recipe: Recipe) -> int:
    """How many training processes the stage runs as: the recipe's ``distributed.processes`` for a training stage, else one."""
    return recipe.distributed.processes if stage in TRAINING_STAGES else 1


def child_env(extra_env: Mapping[str, str], processes: int) -> dict[str, str]:
    """What the training process gets on top of this process's environment (merged over ``os.environ``).

    Its threading (``training_thread_env``: passive OpenMP waits, the cores shared among ``processes``) keeps
    training fast beside the webserver, daemon and other runs. It must be in the environment because OpenMP reads it
    when torch is imported. To override, set ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` in the environment that
    starts Dagster, or in ``TrainingLauncher.extra_env`` (which wins over everything here).
    """
    return {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
            "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda"),
            **training_thread_env(processes), **extra_env}


def run_pipes_process(context: AssetExecutionContext, command: list[str], env: dict[str, str],
                      extras: Mapping[str, Any] | None = None, cwd: Path | None = None) -> tuple[int, PipesClientCompletedInvocation]:
    """``PipesSubprocessClient.run`` that hands back the exit status instead of raising on a non-zero one.

    Its error, DagsterPipesExecutionError, is not exported by Dagster 1.13 (only ``dagster._core.errors``
    has it), and its message is the only place the status was; this uses the public session API instead.
    An interrupted run (terminated from the UI) sends the child SIGINT first, as that client does.
    """
    with open_pipes_session(context=context, context_injector=PipesTempFileContextInjector(),
                            message_reader=PipesTempFileMessageReader(), extras=extras) as session:
        process = subprocess.Popen(command, cwd=str(cwd) if cwd else None, env={**os.environ, **env, **session.get_bootstrap_env_vars()})
        try:
            returncode = process.wait()
        except BaseException:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=CHILD_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
    return returncode, PipesClientCompletedInvocation(session)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
