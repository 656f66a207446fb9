"""What decides an evaluation's result: the models' versions, the held-out rows, the recipe fields it reads, the code.
Tolerances are left out: a tolerance edit re-runs the gates, never the evaluation."""

from __future__ import annotations

import hashlib
import json

from llm_assets.recipes import Recipe

TOLERANCES = ("tolerance", "tolerance_by_task", "quantized_tolerance", "published_tolerance")
# how prompts are rendered and cut, and how the models are loaded and run
READS = {"data": ("chat_template", "max_length"), "model": ("dtype", "attn_implementation")}


def identity(recipe: Recipe) -> dict:
    fields = {f"{group}.{name}": getattr(getattr(recipe, group), name) for group, names in READS.items() for name in names}
    return {"evaluation": recipe.evaluation.model_dump(mode="json", exclude=set(TOLERANCES)), **fields}


def fingerprint(recipe: Recipe, inputs: dict[str, str], code_version: str) -> str:
    """``inputs``: role -> model version and "data/<kind>" -> rows digest."""
    body = {"stage": "evaluation", "recipe": identity(recipe), "inputs": inputs, "code_version": code_version}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
