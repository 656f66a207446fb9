"""Jobs runnable from the UI and the dagster CLI.

A Dagster job has one partitions definition, so data preparation is one job per drop kind
(``<kind>_data_prep_job``, partitioned by that kind's drops) and training is partitioned by
recipe. The automation sensor chains them; ``full_pipeline_job`` is the whole recipe-side graph
in one run (recipe observation, every model stage, evaluation, the released model, the report) on the data validated so far.
"""

from __future__ import annotations

from dagster import AssetSelection, StaticPartitionsDefinition, define_asset_job

from llm_assets.partitions import DROP_PARTITIONS
from llm_assets.resources.landing import KINDS
from llm_assets.stages import MODEL_ASSETS

data_jobs = {
    kind: define_asset_job(
        f"{kind}_data_prep_job",
        selection=AssetSelection.assets(f"raw_{kind}_corpus", f"{kind}_dataset"),
        partitions_def=DROP_PARTITIONS[kind],
        description=f"Snapshot and validate one {kind} drop.",
    )
    for kind in KINDS
}


def build_jobs(recipes: StaticPartitionsDefinition) -> list:
    training = define_asset_job("training_job", selection=AssetSelection.assets(*MODEL_ASSETS), partitions_def=recipes,
                                description="Train and quantize one recipe on every validated drop: base -> cpt -> sft -> reward -> rlhf -> quantized.")
    full = define_asset_job("full_pipeline_job",
                            selection=AssetSelection.assets("recipe", *MODEL_ASSETS, "evaluation", "released_model", "model_report"),
                            partitions_def=recipes, description="Observe the recipe, train every stage, evaluate, card the "
                            "released model and write the report, in one run (publishing waits for a person's approval).")
    return [*data_jobs.values(), training, full]
