"""TrainingLauncher: starts a training worker through Dagster Pipes and reads back what it committed.

The worker (``python -m llm_assets.training STAGE``; ``torchrun --standalone --nproc-per-node N -m
llm_assets.training STAGE`` when ``distributed.processes > 1``) gets its work order as Pipes extras and
shares nothing with this process but the artifact store: its result or error comes back through the store
(a Pipes message can arrive torn); its logs stream into the run log. It runs as a subprocess in a fresh
directory, in a Kubernetes pod (``PipesK8sClient``) or as an ECS task (``PipesECSClient``): the launcher's
``kind``, or the recipe's ``resources.launcher``.
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
from typing import Any, Literal

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    Failure,
    MetadataValue,
    PipesClientCompletedInvocation,
    PipesTempFileContextInjector,
    open_pipes_session,
)
from pydantic import Field

from llm_assets.artifacts import Store
from llm_assets.launch.ecs import EcsSettings, run_ecs_worker
from llm_assets.launch.k8s import K8sSettings, run_k8s_worker
from llm_assets.launch.pipes_messages import WholeLineMessageReader
from llm_assets.launch.sizing import local_gpu_shortfall, worker_processes
from llm_assets.recipes import Recipe
from llm_assets.training.hardware import training_thread_env
from llm_assets.training.order import ORDER_EXTRA, WorkOrder

CHILD_STOP_SECONDS = 20  # how long an interrupted child may take to stop before it is killed (Dagster's default)
PARENT_POLL_SECONDS = 1.0  # how often a waiting step checks that its run worker still lives
# what a remote worker gets besides its pod's or task's own settings (threads follow the pod's cores there)
REMOTE_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}


class TrainingLauncher(ConfigurableResource):
    kind: Literal["subprocess", "k8s", "ecs"] = Field("subprocess", description="Where workers run unless the recipe's "
                                                      "resources.launcher says otherwise (LLM_ASSETS_LAUNCHER).")
    python: str = Field(default_factory=lambda: sys.executable, description="Interpreter for a subprocess worker.")
    extra_env: dict[str, str] = Field(default_factory=dict, description="Environment added to every worker; never "
                                      "credentials (a pod spec shows them): use the k8s/ecs settings' secrets.")
    k8s: K8sSettings | None = Field(None, description="Pods for kind k8s (LLM_ASSETS_K8S, YAML).")
    ecs: EcsSettings | None = Field(None, description="Tasks for kind ecs (LLM_ASSETS_ECS, YAML).")

    def command(self, stage: str, processes: int, python: str | None = None) -> list[str]:
        python = python or self.python
        entry = ["-m", "llm_assets.training", stage]
        if processes > 1:
            torchrun = Path(python).with_name("torchrun")
            launcher = [str(torchrun)] if torchrun.exists() else [python, "-m", "torch.distributed.run"]
            return [*launcher, "--standalone", f"--nproc-per-node={processes}", *entry]
        return [python, *entry]

    def run(self, context: AssetExecutionContext, order: WorkOrder, store: Store) -> dict[str, Any]:
        """Launch the worker and return its result ({version, metrics}) as it left it in the store."""
        recipe = Recipe.model_validate(order.recipe)
        kind = recipe.resources.launcher or self.kind
        if kind != "subprocess" and not order.store.root.startswith("s3://"):
            raise Failure(description=f"recipe '{recipe.name}' runs its workers on {kind}, but the artifact store is the local "
                                      f"directory {order.store.root}, which a pod or task cannot reach: set LLM_ASSETS_STORE "
                                      "to an s3:// location (and LLM_ASSETS_S3_ENDPOINT for MinIO)", allow_retries=False)
        if kind == "subprocess" and (why := local_gpu_shortfall(recipe)):
            raise Failure(description=f"recipe '{recipe.name}' cannot run here: {why}", allow_retries=False)
        for path in (order.result_path, order.error_path):  # a previous attempt's, not this one's
            store.delete(path)
        processes = worker_processes(recipe, order.stage)
        extras = {ORDER_EXTRA: order.to_dict()}
        if kind == "subprocess":
            command = self.command(order.stage, processes)
            context.log.info(f"launching {' '.join(command)}")
            workdir = Path(tempfile.mkdtemp(prefix=f"llm-assets-{order.stage}-"))  # the worker shares no directory with us
            try:
                returncode, _ = run_pipes_process(context, command, child_env(self.extra_env, processes), extras=extras, cwd=workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            return worker_result(order, store, returncode)
        settings = getattr(self, kind)
        if settings is None:
            raise Failure(description=f"recipe '{recipe.name}' asks for resources.launcher {kind!r}, but the launcher has no "
                                      f"{kind} settings: set LLM_ASSETS_{kind.upper()} (YAML of its settings)", allow_retries=False)
        command = self.command(order.stage, processes, python="python")  # the image's interpreter and torchrun, from its PATH
        context.log.info(f"launching {' '.join(command)} on {kind}")
        env = {**REMOTE_ENV, **self.extra_env}
        run_remote = run_k8s_worker if kind == "k8s" else run_ecs_worker
        try:
            run_remote(context, stage=order.stage, recipe=recipe, command=command, env=env, extras=extras, settings=settings)
        except Exception as e:  # the pod or task failed or was evicted: the store says whether the worker knew why
            context.log.warning(f"the {order.stage} worker on {kind} ended with {type(e).__name__}: {str(e)[-2000:]}")
            return worker_result(order, store, None, failed=f"{type(e).__name__}: {str(e)[:300]}")
        return worker_result(order, store, 0)


def worker_result(order: WorkOrder, store: Store, returncode: int | None, failed: str | None = None) -> dict[str, Any]:
    """The committed result, or the Failure that says why there is none. A worker that reported its own error failed for
    a reason a retry cannot change (bad data, a recipe the model cannot run): that failure is not retried. A worker
    that was killed or evicted is, and resumes from its last stored checkpoint."""
    error = store.read_json(order.error_path)
    if error is not None:  # the description is the error's first line; all of it is in the metadata
        first = error["error"].strip().splitlines()[0] if error["error"].strip() else "no message"
        raise Failure(description=f"the {order.stage} stage failed: {first}", allow_retries=False,
                      metadata={"error": MetadataValue.md(f"```\n{error['error']}\n```"),
                                "traceback": MetadataValue.md(f"```\n{error['traceback'][-6000:]}\n```")})
    result = store.read_json(order.result_path)
    if result is not None and not failed and returncode == 0 and store.has_version(order.output_key, result["version"]):
        return result
    if failed:
        raise Failure(description=f"the {order.stage} worker failed without reporting an error ({failed}); a retry (or the "
                                  "next materialization) resumes from its last stored checkpoint")
    if returncode is not None and returncode < 0:
        sig = signal.Signals(-returncode).name
        raise Failure(description=f"the {order.stage} worker was killed by {sig}; a retry (or the next materialization) "
                                  "resumes from its last stored checkpoint")
    raise Failure(description=f"the {order.stage} worker ended (exit status {returncode}) without committing a result or "
                              "reporting an error; see its output above")


def child_env(extra_env: Mapping[str, str], processes: int) -> dict[str, str]:
    """What the training process gets on top of this process's environment (merged over ``os.environ``).

    Its threading (``training_thread_env``: the cores shared among ``processes``, a short OpenMP spin when they are
    free at launch, passive waits beside the webserver, daemon and other runs) keeps training fast either way. It must
    be in the environment because OpenMP reads it when torch is imported. To override, set ``OMP_WAIT_POLICY`` /
    ``GOMP_SPINCOUNT`` / ``OMP_NUM_THREADS`` in the environment that starts Dagster, or in
    ``TrainingLauncher.extra_env`` (which wins over everything here).
    """
    return {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
            "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda"),
            **training_thread_env(processes), **extra_env}


def run_pipes_process(context: AssetExecutionContext, command: list[str], env: dict[str, str],
                      extras: Mapping[str, Any] | None = None, cwd: Path | None = None) -> tuple[int, PipesClientCompletedInvocation]:
    """``PipesSubprocessClient.run`` that hands back the exit status instead of raising on a non-zero one.

    Its error, DagsterPipesExecutionError, is not exported by Dagster 1.13 (only ``dagster._core.errors``
    has it), and its message is the only place the status was; this uses the public session API instead.
    The child runs in its own process group and dies with this process (``parent_death``), so neither a killed step
    nor a finished torchrun leaves a worker training. An interrupted run (terminated from the UI) sends the group
    SIGINT first, as that client does. Messages are read whole-line only (``WholeLineMessageReader``).
    """
    with open_pipes_session(context=context, context_injector=PipesTempFileContextInjector(),
                            message_reader=WholeLineMessageReader(context.log), extras=extras) as session:
        process = subprocess.Popen([sys.executable, "-m", "llm_assets.launch.parent_death", *command], process_group=0,
                                   cwd=str(cwd) if cwd else None, env={**os.environ, **env, **session.get_bootstrap_env_vars()})
        try:
            returncode = _wait_while_parent_lives(process)
        except BaseException:
            _signal_group(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=CHILD_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        finally:
            _signal_group(process.pid, signal.SIGKILL)  # what the worker left running (a torchrun rank) goes with it
    return returncode, PipesClientCompletedInvocation(session)


class RunWorkerGone(RuntimeError):
    """The process that started this step (Dagster's run worker) died: nobody will record the step's result."""


def _wait_while_parent_lives(process: subprocess.Popen) -> int:
    """The worker's exit status; raises RunWorkerGone once this step's parent process is gone. A step process outlives
    a run worker killed with -9 (it is re-parented, and parent_death only ties the worker to the step), and would train
    on into a run already marked failed while a re-run trains beside it; raising stops its worker group on the way out."""
    parent = os.getppid()
    while True:
        try:
            return process.wait(timeout=PARENT_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                raise RunWorkerGone(f"the run worker (pid {parent}) that started this step is gone; stopping the "
                                    f"training worker (pid {process.pid})") from None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty: every process of it has exited


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
