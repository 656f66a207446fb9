"""model_report: every stage's before -> after figures for a recipe, as one table in the UI."""

import json

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, StaticPartitionsDefinition, asset

from llm_assets.assets.models import model_key
from llm_assets.automation import on_change
from llm_assets.report_table import report_markdown
from llm_assets.resources.store import ArtifactStore

STAGES = ("base", "cpt", "sft", "reward", "rlhf", "quantize")


def collect(store, recipe: str) -> tuple[dict, dict]:
    metrics, passthrough = {}, {}
    for stage in STAGES:
        key = model_key(stage, recipe)
        manifest = store.manifest(key)
        if "passthrough_of" in manifest.metadata:
            passthrough[stage] = manifest.metadata["passthrough_of"]
        metrics[stage] = json.loads(store.read_file(key, "metrics.json", manifest.version) or b"{}")
    return metrics, passthrough


def build_report_assets(partitions: StaticPartitionsDefinition) -> list[AssetsDefinition]:
    @asset(partitions_def=partitions, group_name="reports", code_version="1", automation_condition=on_change(),
           deps=["base_model", "cpt_model", "sft_model", "reward_model", "rlhf_policy", "quantized_model"],
           description="Before -> after figures of every stage of the recipe, from the stages' own measurements.")
    def model_report(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
        metrics, passthrough = collect(store.open(), context.partition_key)
        table = report_markdown(context.partition_key, metrics, passthrough)
        return MaterializeResult(metadata={"report": MetadataValue.md(table)})

    return [model_report]
