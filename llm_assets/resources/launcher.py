"""TrainingLauncher: runs a training stage out of process through Dagster Pipes.

One process: ``python -m llm_assets.training STAGE --spec spec.json``; ``distributed.processes > 1``:
``torchrun --standalone --nproc-per-node N -m llm_assets.training ...`` (rank 0 talks to Dagster).
The child's logs stream into the run log; its final metrics come back as a Pipes message. A child
that fails or is killed fails the materialization with its error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, ConfigurableResource, Failure, MetadataValue, PipesSubprocessClient
from dagster._core.errors import DagsterPipesExecutionError
from pydantic import Field

from llm_assets.paths import default_data_dir, project_root
from llm_assets.training.spec import StageSpec


class TrainingLauncher(ConfigurableResource):
    python: str = Field(default_factory=lambda: sys.executable, description="Interpreter for the training process.")
    checkpoint_root: str | None = Field(None, description="Where runs checkpoint (default: <data dir>/checkpoints); must survive a killed run.")
    extra_env: dict[str, str] = Field(default_factory=dict, description="Environment added to the training process.")

    def checkpoints(self) -> Path:
        return Path(self.checkpoint_root) if self.checkpoint_root else default_data_dir() / "checkpoints"

    def command(self, spec: StageSpec, spec_path: Path) -> list[str]:
        processes = spec.parsed_recipe.distributed.processes
        entry = ["-m", "llm_assets.training", spec.stage, "--spec", str(spec_path)]
        if processes > 1 and spec.stage in ("cpt", "sft", "reward", "rlhf"):
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
        env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
               "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda"), **self.extra_env}
        command = self.command(spec, spec_path)
        context.log.info(f"launching {' '.join(command)}")
        try:
            invocation = PipesSubprocessClient(cwd=str(project_root()), env=env).run(context=context, command=command)
        except DagsterPipesExecutionError as e:
            raise child_failure(spec, str(e)) from None
        results = [m["metrics"] for m in invocation.get_custom_messages() if isinstance(m, dict) and "metrics" in m]
        if not results:
            raise Failure(description=f"the {spec.stage} process exited without reporting its metrics; see its log above")
        return results[-1]


def child_failure(spec: StageSpec, pipes_message: str) -> Failure:
    """The child's own error (left by ``llm_assets.training``), or how it died when it could not say."""
    from llm_assets.training.__main__ import error_path

    path = error_path(spec)
    if path.exists():
        err = json.loads(path.read_text())
        return Failure(description=f"the {spec.stage} stage failed: {err['error']}",
                       metadata={"traceback": MetadataValue.md(f"```\n{err['traceback'][-6000:]}\n```")})
    code = re.search(r"code (-?\d+)", pipes_message)
    if code and int(code.group(1)) < 0:
        sig = signal.Signals(-int(code.group(1))).name
        return Failure(description=f"the {spec.stage} process was killed by {sig}; materialize again to resume from its last checkpoint")
    return Failure(description=f"the {spec.stage} process failed without reporting an error ({pipes_message}); see its output above")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
