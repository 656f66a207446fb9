"""What the orchestrator hands a training process: one JSON file, no Dagster types."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_assets.recipes import Recipe

STAGES = ("base", "cpt", "sft", "reward", "rlhf", "quantize", "evaluate")


COMMON_GROUPS = ("name", "data", "model", "lora", "distributed")
STAGE_GROUPS = {
    "base": COMMON_GROUPS, "cpt": (*COMMON_GROUPS, "cpt"), "sft": (*COMMON_GROUPS, "sft", "quantization"),
    "reward": (*COMMON_GROUPS, "reward"), "rlhf": (*COMMON_GROUPS, "rlhf", "reward"), "quantize": (*COMMON_GROUPS, "quantization"),
}


@dataclass
class StageSpec:
    stage: str
    recipe: dict[str, Any]
    output_dir: str
    inputs: dict[str, str] = field(default_factory=dict)  # role -> local model directory (parent, reward, reference)
    datasets: dict[str, list[str]] = field(default_factory=dict)  # kind -> dataset.parquet paths (one per drop)
    checkpoint_dir: str | None = None
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

    def fingerprint(self, input_versions: dict[str, str]) -> str:
        """Identity of a training run: same inputs and the same recipe groups this stage reads, same result
        (so the run resumes from its checkpoints, or is not run again). Other stages' groups do not count:
        an SFT learning-rate edit does not retrain CPT."""
        recipe = {k: v for k, v in self.recipe.items() if k in STAGE_GROUPS.get(self.stage, self.recipe)}
        body = {"stage": self.stage, "recipe": recipe, "inputs": input_versions, "options": self.options}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
