"""batch_predictions[drop × recipe]: the recipe's served model (``quantized_model``) replies to every prompt of one
inference drop; the replies are Parquet in the store (``predictions/<recipe>/<drop>``), throughput and samples metadata.

Thin wiring over the ``predict`` worker stage (``llm_assets.training.predict``): the body resolves the model and the
prompts in the store, reuses the predictions made from the same model, prompts, generation settings and code, or sends
a worker a work order through the TrainingLauncher, and records what it committed. Automation runs a partition when its
prompts, its model or its recipe (the generation group) got a new data version, after the run that made it.
"""

import time
import warnings
from typing import Any

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetSelection,
    BetaWarning,
    DataVersion,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    StaticPartitionsDefinition,
    asset,
    define_asset_job,
)

from llm_assets.artifacts import Store
from llm_assets.assets.data import dataset_key
from llm_assets.assets.model_metadata import metadata_of
from llm_assets.assets.models import _current_version, model_key, refuse_failed_gates, store_settings, training_retry_policy
from llm_assets.automation import DATASETS, on_change
from llm_assets.partitions import DROP_PARTITIONS
from llm_assets.recipes import RecipeError, load_recipe
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.resources.store import ArtifactStore
from llm_assets.stages import STAGES, Stage
from llm_assets.training.order import WorkOrder
from llm_assets.training.predict import PREDICTIONS_FILE

SERVED = STAGES["quantize"]  # the graph's final model: what is served, so what batch inference answers with
# Batch inference as a row of the stage table: what it starts from, what it reads and the recipe fields that decide its
# replies (the generation group, the prompt template, the dtype and attention the model runs in).
PREDICT = Stage("predict", "batch_predictions", "Replies of the recipe's served model to every prompt of one inference drop.",
                None, (SERVED.name,), ("inference",),
                ("generation", "data.chat_template", "model.dtype", "model.attn_implementation"))


def predictions_key(recipe: str, drop: str) -> str:
    return f"predictions/{recipe}/{drop}"


def prompts_of(st: Store, drop: str) -> tuple[str, str]:
    """(store key, version) of the drop's validated prompts; a drop whose dataset failed its checks is refused."""
    key = dataset_key("inference", drop)
    version = _current_version(st, key)
    if not st.manifest(key, version).metadata.get("checks_passed", False):
        raise Failure(description=f"inference drop '{drop}' failed a blocking check of inference_dataset (see its checks): "
                                  "fix the prompt file and land it again", allow_retries=False)
    return key, version


def build_predictions_asset(recipes: StaticPartitionsDefinition):
    partitions = MultiPartitionsDefinition({"drop": DROP_PARTITIONS["inference"], "recipe": recipes})
    with warnings.catch_warnings():  # beta in Dagster 1.13; the one mapping that says "this dimension of my key is its key"
        warnings.simplefilter("ignore", BetaWarning)
        by_drop, by_recipe = MultiToSingleDimensionPartitionMapping("drop"), MultiToSingleDimensionPartitionMapping("recipe")

    @asset(
        partitions_def=partitions, group_name="predictions", code_version="1", kinds={"pytorch", "parquet"}, pool="training",
        deps=[AssetDep("inference_dataset", partition_mapping=by_drop),
              AssetDep(SERVED.asset, partition_mapping=by_recipe), AssetDep("recipe", partition_mapping=by_recipe)],
        automation_condition=on_change(elsewhere=DATASETS | AssetSelection.assets(SERVED.asset)),
        retry_policy=training_retry_policy(),
        description="Replies of the recipe's served (quantized) model to every prompt of one inference drop: "
                    "predictions.parquet (row, prompt, reply, tokens, latency, finish reason); generation from recipe.generation.",
    )
    def batch_predictions(context: AssetExecutionContext, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        key: MultiPartitionKey = context.partition_key
        drop, name = key.keys_by_dimension["drop"], key.keys_by_dimension["recipe"]
        try:
            recipe = load_recipe(name)
        except RecipeError as e:
            raise Failure(description=str(e), allow_retries=False) from None
        st = store.open()
        model = model_key(SERVED.name, name)
        refuse_failed_gates(st, {"model": model})
        inputs = {"model": _current_version(st, model)}
        prompts, inputs["prompts"] = prompts_of(st, drop)
        code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
        fingerprint = PREDICT.fingerprint(recipe, inputs, code_version, {})
        out = predictions_key(name, drop)
        known = st.record(out, fingerprint)
        if known is not None and st.has_version(out, known["version"]):
            st.set_latest(out, known["version"])
            context.log.info(f"{out}: model, prompts, generation settings and code unchanged since version "
                             f"{known['version'][:12]} (run {known.get('run_id', '?')}); reusing it, nothing to generate")
            return predictions_result(st, out, known, reused=True)
        order = WorkOrder(stage=PREDICT.name, recipe=recipe.model_dump(mode="json"), store=store_settings(store), output_key=out,
                          fingerprint=fingerprint, inputs={"model": {"key": model, "version": inputs["model"]}},
                          datasets={"inference": [{"key": prompts, "version": inputs["prompts"]}]}, checkpoints=False)
        result = launcher.run(context, order, st)
        st.set_latest(out, result["version"])
        record = {"version": result["version"], "fingerprint": fingerprint, "stage": PREDICT.name, "recipe_hash": recipe.recipe_hash,
                  "inputs": inputs, "metrics": result["metrics"], "run_id": context.run_id, "predicted_at": time.time()}
        st.put_record(out, fingerprint, record)
        return predictions_result(st, out, record)

    return batch_predictions


def predictions_result(st: Store, key: str, record: dict[str, Any], **extra: Any) -> MaterializeResult:
    manifest = st.manifest(key, record["version"])
    metrics = record.get("metrics", {})
    return MaterializeResult(data_version=DataVersion(manifest.version), metadata={
        "dagster/row_count": metrics.get("rows", 0), **metadata_of(metrics), **extra,
        "fingerprint": record["fingerprint"], "model_version": record["inputs"]["model"],
        "prompts_version": record["inputs"]["prompts"], "recipe_hash": record.get("recipe_hash", ""),
        "predictions": MetadataValue.path(f"{st.root}/{key}/versions/{manifest.version}/{PREDICTIONS_FILE}"),
        "artifact": f"{st.root}/{key}/versions/{manifest.version}"})


def predictions_definitions(recipes: StaticPartitionsDefinition) -> Definitions:
    predictions = build_predictions_asset(recipes)
    job = define_asset_job("batch_predictions_job", selection=AssetSelection.assets(predictions), partitions_def=predictions.partitions_def,
                           description="Replies of one recipe's served model to one inference drop (partition: drop|recipe).")
    return Definitions(assets=[predictions], jobs=[job])
