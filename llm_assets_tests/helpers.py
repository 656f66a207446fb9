"""Shared test set-up: small validated datasets and a micro recipe, built the way the assets build them."""

from __future__ import annotations

from pathlib import Path

import yaml

from llm_assets.data.io import write_dataset
from llm_assets.data.pipeline import validate_drop
from llm_assets.demo_data import write_demo_drops
from llm_assets.recipes import parse_recipe

HUB_REV = "0123456789abcdef0123456789abcdef01234567"  # the pinned revision of the test Hub model (conftest hub_cache)

MICRO = {
    "description": "micro recipe for tests",
    "data": {"max_length": 64, "max_reject_rate": 0.05},
    "model": {"base": "builtin:tiny", "architecture": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 1, "num_heads": 2, "vocab_size": 512}},
    "cpt": {"max_steps": 4, "learning_rate": 1e-3, "per_device_batch_size": 8, "logging_steps": 2, "save_steps": 2},
    "sft": {"max_steps": 6, "learning_rate": 1e-3, "per_device_batch_size": 8, "logging_steps": 2, "save_steps": 3},
    "reward": {"max_steps": 4, "learning_rate": 1e-3, "per_device_batch_size": 8, "logging_steps": 2, "min_accuracy": 0.0},
    "rlhf": {"algorithm": "rloo", "max_steps": 2, "learning_rate": 1e-4, "per_device_batch_size": 4, "num_generations": 2,
             "max_new_tokens": 4, "logging_steps": 1, "min_win_rate": 0.0, "max_kl": 100.0},
    "quantization": {"bits": 4, "max_eval_loss_delta": 10.0},
}


def deep_update(base: dict, changes: dict) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_recipe(directory: Path, name: str = "tiny", **changes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(deep_update(MICRO, changes)))
    parse_recipe(path)  # must be valid
    return path


def demo_datasets(tmp: Path, scale: float = 0.1) -> dict[str, list[str]]:
    """The demo drops, validated and written as the dataset assets write them."""
    out: dict[str, list[str]] = {}
    for f in write_demo_drops(tmp / "landing", scale=scale):
        kind = f.parent.name
        result = validate_drop(kind, f.name, f.read_bytes())
        path = tmp / "datasets" / f"{f.name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(result.dataset, path, kind)
        out.setdefault(kind, []).append(str(path))
    return out


def validate_landed_drops(defs, instance, kinds=None) -> dict[str, list[str]]:
    """What landing_sensor and the data prep runs do for every landed file (local or S3 landing zone, as configured):
    a drop partition each, then its ``<kind>_data_prep_job`` materialized, which must succeed. Returns the drops by kind."""
    from llm_assets.demo import register_drops
    from llm_assets.resources import default_resources

    drops = register_drops(instance, default_resources()["landing"].open())
    for kind, keys in drops.items():
        if kinds is None or kind in kinds:
            job = defs.resolve_job_def(f"{kind}_data_prep_job")
            for key in keys:
                assert job.execute_in_process(partition_key=key, instance=instance).success, f"{kind}_data_prep_job[{key}]"
    return drops


def land_demo_drops(landing: Path, defs, instance, scale: float = 0.1, kinds=None) -> dict[str, list[str]]:
    """The demo drops written into ``landing`` (the configured local landing zone) at ``scale``, each registered and
    validated through Dagster (``kinds``: only those kinds' drops are validated; every drop is registered)."""
    write_demo_drops(landing, scale=scale)
    return validate_landed_drops(defs, instance, kinds)
