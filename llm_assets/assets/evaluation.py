"""``evaluation[recipe]``: base, SFT, policy and released models side by side through lm-evaluation-harness, in a worker
(``python -m llm_assets.training evaluation``), and the three blocking release gates on what it stored.

The body is ``models.train`` for a stage with four model inputs: resolve versions and data, reuse the result of the same
identity (``llm_assets.evaluation.identity``: tolerances are not part of it), or send a work order and record what the
worker committed. The gates read the stored record, so a tolerance edit re-runs the checks alone, and each writes its
outcome into the record's ``gates``, which the publisher requires all passed.
"""

import time

from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
    multi_asset_check,
)

from llm_assets.assets.models import (
    _current_version,
    model_key,
    recipe_of,
    refuse_failed_gates,
    reuse,
    store_settings,
    stored_result,
    training_data,
    training_retry_policy,
)
from llm_assets.automation import on_change
from llm_assets.evaluation import gates
from llm_assets.evaluation.identity import fingerprint
from llm_assets.evaluation.table import results_markdown
from llm_assets.partitions import partitioned_checks
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.resources.store import ArtifactStore
from llm_assets.stages import STAGES
from llm_assets.training.order import WorkOrder

# model role -> the stage whose current version it is; "released" is the quantized model, the one published and served
ROLES = {"base": "base", "sft": "sft", "policy": "rlhf", "released": "quantize"}
GATE_DESCRIPTIONS = {
    "released_not_worse_than_base": "On every task the released model scores at most evaluation.tolerance worse than the "
                                    "base model (in the task's own direction).",
    "quantized_within_bound": "On every task the released (quantized) model scores at most evaluation.quantized_tolerance "
                              "worse than the unquantized policy; passes when the recipe has no quantization group.",
    "no_regression_vs_published": "On every task both were evaluated on, the released model scores at most "
                                  "evaluation.published_tolerance worse than the version published now; passes when "
                                  "nothing is published.",
}


def published_key(recipe: str) -> str:
    return model_key("published", recipe)


def results_metadata(metrics: dict) -> dict:
    return {"results": MetadataValue.md(results_markdown(metrics)), "metrics": MetadataValue.json(metrics)}


def evaluate(context: AssetExecutionContext, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
    recipe = recipe_of(context)
    st = store.open()
    parents = {role: model_key(stage, recipe.name) for role, stage in ROLES.items()}
    refuse_failed_gates(st, parents)
    versions = {role: _current_version(st, key) for role, key in parents.items()}
    data = training_data(context, st, STAGES["base"].data_kinds(recipe), recipe, trains_on=())
    inputs = {**{f"data/{k}": d for k, d in data.digests.items()}, **versions}
    code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
    identity = fingerprint(recipe, inputs, code_version)
    key = model_key("evaluation", recipe.name)
    known = st.record(key, identity)
    if known is not None and st.has_version(key, known["version"]):
        reused = reuse(context, st, key, known, data)
        return MaterializeResult(data_version=reused.data_version, metadata={**reused.metadata, **results_metadata(known["metrics"])})
    models = {role: {"key": parents[role], "version": v} for role, v in versions.items()}
    drops = {kind: [ref["key"].split("/", 2)[2] for ref in refs] for kind, refs in data.refs.items()}  # datasets/<kind>/<drop>
    order = WorkOrder(stage="evaluation", recipe=recipe.model_dump(mode="json"), store=store_settings(store), output_key=key,
                      fingerprint=identity, inputs=models, datasets=data.refs, options={"models": models, "drops": drops},
                      checkpoints=False)
    result = launcher.run(context, order, st)
    st.set_latest(key, result["version"])
    record = {"version": result["version"], "fingerprint": identity, "stage": "evaluation", "recipe_hash": recipe.recipe_hash,
              "inputs": inputs, "drops_used": {}, "drops_measured": data.measured, "drops_left_out": data.left_out,
              "metrics": result["metrics"], "run_id": context.run_id, "trained_at": time.time()}
    st.put_record(key, identity, record)
    return stored_result(st, key, record, **results_metadata(result["metrics"]))


def gate_results(context: AssetCheckExecutionContext, store: ArtifactStore):
    """All three gates on the stored evaluation of the current version, kept in its record; a result for those selected."""
    recipe = recipe_of(context)
    st, key = store.open(), model_key("evaluation", recipe.name)
    record = st.record(key)
    if record is None or record["version"] != st.latest_version(key):
        raise Failure(description=f"evaluation has no stored run record for its current version (recipe '{recipe.name}'): "
                                  "materialize it, then run the checks")
    metrics = record["metrics"]
    outcomes = {"released_not_worse_than_base": gates.released_not_worse_than_base(metrics, recipe),
                "quantized_within_bound": gates.quantized_within_bound(metrics, recipe),
                "no_regression_vs_published": gates.no_regression_vs_published(metrics, recipe, st.record(published_key(recipe.name)))}
    st.put_record(key, record["fingerprint"], {**record, "gates": {
        **record.get("gates", {}), **{name: {"passed": o.passed, "reason": o.reason} for name, o in outcomes.items()}}})
    selected = {k.name for k in context.selected_asset_check_keys}
    for name, outcome in outcomes.items():
        if name not in selected:
            continue
        if not outcome.passed:
            context.log.error(f"evaluation [{recipe.name}] {name} failed: {outcome.reason}")
        yield AssetCheckResult(check_name=name, asset_key="evaluation", passed=outcome.passed, description=outcome.reason,
                               metadata={"compared": MetadataValue.json(outcome.compared), "version": record["version"][:12]})


def evaluation_definitions(recipes: StaticPartitionsDefinition) -> Definitions:
    deps = ["recipe", *(STAGES[stage].asset for stage in reversed(ROLES.values())),
            *(AssetDep(f"{kind}_dataset", partition_mapping=AllPartitionMapping()) for kind in STAGES["base"].data)]

    @asset(partitions_def=recipes, group_name="release", pool="training", deps=deps, kinds={"pytorch", "huggingface"},
           automation_condition=on_change(), code_version="1", retry_policy=training_retry_policy(),
           description="Base, SFT, policy and released models through lm-evaluation-harness on tasks generated from the "
                       "held-out splits (exact match, log-likelihood, multiple choice, bits per byte) plus the recipe's "
                       "standard tasks: one table, task x model, with standard errors.")
    def evaluation(context: AssetExecutionContext, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        return evaluate(context, store, launcher)

    with partitioned_checks():
        specs = [AssetCheckSpec(name, asset="evaluation", blocking=True, partitions_def=recipes, description=text)
                 for name, text in GATE_DESCRIPTIONS.items()]
    checks = multi_asset_check(specs=specs, can_subset=True, name="evaluation_gates")(gate_results)
    return Definitions(assets=[evaluation], asset_checks=[checks])
