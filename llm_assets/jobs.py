"""Jobs runnable from the UI and the dagster CLI."""

from __future__ import annotations

from dagster import AssetSelection, StaticPartitionsDefinition, define_asset_job

from llm_assets.partitions import DROP_PARTITIONS
from llm_assets.resources.landing import KINDS

MODEL_ASSETS = ["base_model", "cpt_model", "sft_model", "reward_model", "rlhf_policy", "quantized_model", "model_report"]

data_jobs = {
    kind: define_asset_job(
        f"{kind}_data_job",
        selection=AssetSelection.assets(f"raw_{kind}_corpus", f"{kind}_dataset"),
        partitions_def=DROP_PARTITIONS[kind],
        description=f"Snapshot and validate one {kind} drop.",
    )
    for kind in KINDS
}


def build_jobs(recipes: StaticPartitionsDefinition) -> list:
    training = define_asset_job("training_job", selection=AssetSelection.assets(*MODEL_ASSETS), partitions_def=recipes,
                                description="Train, evaluate and quantize one recipe on every validated drop.")
    return [*data_jobs.values(), training]
