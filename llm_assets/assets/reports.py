"""model_report: every stage's before -> after figures for a recipe, its evaluation, and where its release is, in the UI."""

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, StaticPartitionsDefinition, asset

from llm_assets.assets.models import model_key
from llm_assets.automation import on_change
from llm_assets.evaluation.table import results_markdown
from llm_assets.release.approval import approval_of, evaluation_key, published_key, release_key
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


def release_markdown(st, recipe: str) -> str:
    """The evaluation table with its gates, then the released version (its card), its approval and where it is published."""
    parts = []
    evaluation = st.record(evaluation_key(recipe))
    if evaluation:
        gates = evaluation.get("gates", {})
        parts.append("### Evaluation\n\n" + results_markdown(evaluation.get("metrics", {})))
        if gates:
            parts.append("Gates: " + "; ".join(f"{name} {'passed' if g.get('passed') else 'FAILED: ' + g.get('reason', '')}"
                                               for name, g in gates.items()))
    released = st.record(release_key(recipe))
    if released:
        version = released["version"]
        approval = approval_of(st, recipe, version)
        parts.append(f"### Release\n\nreleased_model {version[:12]}: card at `{st.root}/{release_key(recipe)}/versions/{version}/README.md`; "
                     + (f"approved by {approval['approver']} ({approval['reason']})" if approval else "not approved yet"))
    published = st.record(published_key(recipe))
    if published:
        parts.append(f"Published {published['version'][:12]} to {published.get('target')} {published.get('location')}"
                     + (f" at commit {published['sha']}" if published.get("sha") else ""))
    return "\n\n".join(parts)


def build_report_assets(partitions: StaticPartitionsDefinition) -> list[AssetsDefinition]:
    @asset(partitions_def=partitions, group_name="reports", code_version="2", automation_condition=on_change(),
           deps=[*MODEL_ASSETS, "evaluation", "released_model"],
           description="Before -> after figures of every stage of the recipe, from the stages' own measurements, then its "
                       "evaluation, card, approval and published revision.")
    def model_report(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
        st = store.open()
        metrics, passthrough = collect(st, context.partition_key)
        table = report_markdown(context.partition_key, metrics, passthrough)
        release = release_markdown(st, context.partition_key)
        return MaterializeResult(metadata={"report": MetadataValue.md(table + ("\n\n" + release if release else ""))})

    return [model_report]
