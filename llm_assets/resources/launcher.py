"""TrainingLauncher: runs a training stage out of process through Dagster Pipes.

One process: ``python -m llm_assets.training STAGE --spec spec.json``; ``distributed.processes > 1``:
``torchrun --standalone --nproc-per-node N -m llm_assets.training ...`` (rank 0 talks to Dagster).
The child's logs stream into the run log; its final metrics come back as a Pipes message. A child
that fails or is killed fails the materialization with its error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
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

from llm_assets.paths import default_data_dir, project_root
from llm_assets.training.hardware import training_thread_env
from llm_assets.training.spec import StageSpec


CHILD_STOP_SECONDS = 20  # how long an interrupted child may take to stop before it is killed (Dagster's default)


class TrainingLauncher(ConfigurableResource):
    python: str = Field(default_factory=lambda: sys.executable, description="Interpreter for the training process.")
    checkpoint_root: str | None = Field(None, description="Where runs checkpoint (default: <data dir>/checkpoints); must survive a killed run.")
    extra_env: dict[str, str] = Field(default_factory=dict, description="Environment added to the training process.")

    def checkpoints(self) -> Path:
        return Path(self.checkpoint_root) if self.checkpoint_root else default_data_dir() / "checkpoints"

    def command(self, spec: StageSpec, spec_path: Path) -> list[str]:
        processes = launched_processes(spec)
        entry = ["-m", "llm_assets.training", spec.stage, "--spec", str(spec_path)]
        if processes > 1:
            torchrun = Path(self.python).with_name("torchrun")
            launcher = [str(torchrun)] if torchrun.exists() else [self.python, "-m", "torch.distributed.run"]
            return [*launcher, "--standalone", f"--nproc-per-node={processes}", *entry]
        return [self.python, *entry]

    def run(self, context: AssetExecutionContext, spec: StageSpec) -> dict[str, Any]:
        """Launch the stage and return its final metrics."""
        out = Path(spec.output_dir)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        spec_path = spec.save(out.parent / f"{out.name}.spec.json")
        env = child_env(self.extra_env, launched_processes(spec))
        command = self.command(spec, spec_path)
        context.log.info(f"launching {' '.join(command)}")
        returncode, invocation = run_pipes_process(context, command, env)
        if returncode != 0:
            raise child_failure(spec, returncode)
        if spec.metrics_path.exists():  # the stage's own record; a Pipes message can arrive torn
            return json.loads(spec.metrics_path.read_text())
        results = [m["metrics"] for m in invocation.get_custom_messages() if isinstance(m, dict) and "metrics" in m]
        if not results:
            raise Failure(description=f"the {spec.stage} process exited without reporting its metrics; see its log above")
        return results[-1]


def launched_processes(spec: StageSpec) -> int:
    """How many training processes the stage runs as: the recipe's ``distributed.processes`` for a training stage, else one."""
    return spec.parsed_recipe.distributed.processes if spec.stage in ("cpt", "sft", "reward", "rlhf") else 1


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


def run_pipes_process(context: AssetExecutionContext, command: list[str], env: dict[str, str]) -> tuple[int, PipesClientCompletedInvocation]:
    """``PipesSubprocessClient.run`` that hands back the exit status instead of raising on a non-zero one.

    Its error, DagsterPipesExecutionError, is not exported by Dagster 1.13 (only ``dagster._core.errors``
    has it), and its message is the only place the status was; this uses the public session API instead.
    An interrupted run (terminated from the UI) sends the child SIGINT first, as that client does.
    """
    with open_pipes_session(context=context, context_injector=PipesTempFileContextInjector(),
                            message_reader=PipesTempFileMessageReader()) as session:
        process = subprocess.Popen(command, cwd=str(project_root()), env={**os.environ, **env, **session.get_bootstrap_env_vars()})
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


def child_failure(spec: StageSpec, returncode: int) -> Failure:
    """The child's own error (left by ``llm_assets.training``), or how it died when it could not say."""
    path = spec.error_path
    if path.exists():
        err = json.loads(path.read_text())
        return Failure(description=f"the {spec.stage} stage failed: {err['error']}",
                       metadata={"traceback": MetadataValue.md(f"```\n{err['traceback'][-6000:]}\n```")})
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        return Failure(description=f"the {spec.stage} process was killed by {sig}; materialize again to resume from its last checkpoint")
    return Failure(description=f"the {spec.stage} process failed without reporting an error (exit status {returncode}); see its output above")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
