"""What a stage module runs on: local directories (the worker resolves a ``WorkOrder``'s store keys into one), no Dagster types.

``python -m llm_assets.training STAGE --spec spec.json`` runs one from a shell, a benchmark or a debugger."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_assets.recipes import Recipe

STAGES = ("base", "cpt", "sft", "reward", "rlhf", "quantize", "evaluate", "evaluation", "release", "predict")


def beside(output_dir: str | Path, suffix: str) -> Path:
    """A file next to a stage's output directory: metrics and errors are records of the run, never part of
    the output, whose files alone decide its version."""
    out = Path(output_dir)
    return out.parent / f"{out.name}.{suffix}"


@dataclass
class StageSpec:
    stage: str
    recipe: dict[str, Any]
    output_dir: str
    inputs: dict[str, str] = field(default_factory=dict)  # role -> local model directory (model, reward, snapshot, tokens)
    datasets: dict[str, list[str]] = field(default_factory=dict)  # kind -> dataset.parquet paths (one per drop)
    checkpoint_dir: str | None = None  # the Trainer's local scratch for checkpoints
    checkpoint_store: dict[str, Any] | None = None  # {root, s3_endpoint, region, key}: checkpoints kept in the artifact store
    options: dict[str, Any] = field(default_factory=dict)  # test/benchmark knobs (eval_limit, ...)

    @property
    def parsed_recipe(self) -> Recipe:
        return Recipe.model_validate(self.recipe)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    def save(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> "StageSpec":
        return cls(**json.loads(Path(path).read_text()))

    @property
    def error_path(self) -> Path:
        """Where a failing stage leaves its error for the orchestrator to show."""
        return beside(self.output_dir, "error.json")
