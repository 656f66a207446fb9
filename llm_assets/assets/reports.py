"""model_report: every stage's before -> after figures for a recipe, as one table in the UI."""

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, StaticPartitionsDefinition, asset

from llm_assets.assets.models import model_key
from llm_assets.automation import on_change
from llm_assets.report_table import report_markdown
from llm_assets.resources.store import ArtifactStore
from llm_assets.stages import MODEL_ASSETS, STAGES


def collect(store, recipe: str) -> tuple[dict, dict]:
    """Each stage's metrics from its current run record (and which stages passed their parent through)."""
    metrics, passthrough = {}, {}
    for stage in STAGES:
        record = store.record(model_key(stage, recipe)) or {}
        if "passthrough_of" in record:
            passthrough[stage] = record["passthrough_of"]
        metrics[stage] = record.get("metrics", {})
    return metrics, passthrough


def build_report_assets(partitions: StaticPartitionsDefinition) -> list[AssetsDefinition]:
    @asset(partitions_def=partitions, group_name="reports", code_version="1", automation_condition=on_change(),
           deps=MODEL_ASSETS,
           description="Before -> after figures of every stage of the recipe, from the stages' own measurements.")
    def model_report(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
        metrics, passthrough = collect(store.open(), context.partition_key)
        table = report_markdown(context.partition_key, metrics, passthrough)
        return MaterializeResult(metadata={"report": MetadataValue.md(table)})

    return [model_report]
