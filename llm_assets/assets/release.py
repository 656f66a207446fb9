"""The release half of a recipe's graph: the carded model, a person's approval, and publishing.

- ``released_model[recipe]``: the quantized model with its model card, committed at ``models/release/<recipe>``
  by a ``release`` worker. It needs the evaluation of that exact quantized model with every gate passed: in
  the same run the evaluation's blocking checks stop it; in a later run it refuses itself.
- ``approve_release_job``: how a person approves one released version (Dagster OSS has no approval step): run
  it from the Launchpad or ``dagster job launch``. It records who, when, which version and why in the store
  and on the released_model partition (an observation shown on the asset's page).
- ``release_sensor``: starts ``published_model`` for a recipe whose current released version is approved, passed
  its gates and is not yet published; its skip reason says, per recipe, what it waits for.
- ``published_model[recipe]``: checks all of that again and publishes (``llm_assets.release.publish``).
"""

import hashlib
import json
import time
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    Config,
    DataVersion,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    StaticPartitionsDefinition,
    asset,
    define_asset_job,
    job,
    op,
    sensor,
)
from pydantic import Field

from llm_assets.assets.models import model_key, recipe_of, refuse_failed_gates, store_settings, training_retry_policy
from llm_assets.automation import on_change
from llm_assets.paths import recipes_dir
from llm_assets.recipes import RecipeError, load_recipe
from llm_assets.release.approval import (
    approval_of,
    approve_command,
    evaluation_key,
    gate_refusal,
    is_published,
    publish_refusal,
    published_key,
    record_approval,
    release_key,
    resolve_version,
)
from llm_assets.release.card import build_card, drops_used
from llm_assets.release.publish import PublishError, commit_message, publish
from llm_assets.resources.hub import HubClient
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.resources.store import ArtifactStore
from llm_assets.stages import STAGES
from llm_assets.training.order import WorkOrder

RELEASE_CODE_VERSION = "1"


def build_released_model(recipes: StaticPartitionsDefinition):
    @asset(partitions_def=recipes, group_name="release", deps=["quantized_model", "evaluation"], kinds={"huggingface"},
           code_version=RELEASE_CODE_VERSION, automation_condition=on_change(), retry_policy=training_retry_policy(),
           description="The quantized model as published: an adapter merged into its base, with its model card (base model "
                       "and revision, drops and versions, recipe, stage figures, evaluation as model-index, license). "
                       "Refuses a model whose evaluation failed a gate.")
    def released_model(context: AssetExecutionContext, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        recipe = recipe_of(context)
        st, key = store.open(), release_key(recipe.name)
        quantized_key = model_key("quantize", recipe.name)
        quantized = st.latest_version(quantized_key)
        if quantized is None:
            raise Failure(description=f"{quantized_key} has never been committed: materialize quantized_model[{recipe.name}] first",
                          allow_retries=False)
        refuse_failed_gates(st, {"model": quantized_key})
        evaluation = st.record(evaluation_key(recipe.name))
        if why := gate_refusal(recipe.name, evaluation, quantized):
            raise Failure(description=f"released_model[{recipe.name}] not made: {why}", allow_retries=False)
        records = {name: st.record(model_key(name, recipe.name)) for name in STAGES}
        recipe_text = (recipes_dir() / f"{recipe.name}.yaml").read_text()
        card = str(build_card(recipe, recipe_text, records, evaluation["metrics"], evaluation["gates"], quantized))
        fingerprint = hashlib.sha256(json.dumps({"quantized": quantized, "card": card, "recipe_yaml": recipe_text,
                                                 "code_version": RELEASE_CODE_VERSION}).encode()).hexdigest()[:16]
        known = st.record(key, fingerprint)
        if known is not None and st.has_version(key, known["version"]):
            context.log.info(f"{key}: model, card and code unchanged since version {known['version'][:12]}; reusing it")
            st.set_latest(key, known["version"])
            st.put_record(key, fingerprint, known)
            return released_result(st, known, reused=True)
        order = WorkOrder(stage="release", recipe=recipe.model_dump(mode="json"), store=store_settings(store), output_key=key,
                          fingerprint=fingerprint, inputs={"model": {"key": quantized_key, "version": quantized}},
                          options={"card": card, "recipe_yaml": recipe_text}, checkpoints=False)
        result = launcher.run(context, order, st)
        st.set_latest(key, result["version"])
        record = {"version": result["version"], "fingerprint": fingerprint, "stage": "release", "recipe": recipe.name,
                  "recipe_hash": recipe.recipe_hash, "quantized_version": quantized, "drops_used": drops_used(records),
                  "evaluation": {"results": evaluation["metrics"].get("results", {}), "gates": evaluation["gates"]},
                  "metrics": result["metrics"], "run_id": context.run_id, "released_at": time.time()}
        st.put_record(key, fingerprint, record)
        return released_result(st, record)

    return released_model


def released_result(st, record: dict[str, Any], **extra: Any) -> MaterializeResult:
    recipe, version = record["recipe"], record["version"]
    card = (st.read_file(release_key(recipe), "README.md", version) or b"").decode()
    return MaterializeResult(data_version=DataVersion(version), metadata={
        **extra, "version": version, "quantized_version": record["quantized_version"], "recipe_hash": record["recipe_hash"],
        "drops_used": MetadataValue.json(record["drops_used"]), "files": len(record["metrics"].get("files", [])),
        "release_bytes": record["metrics"].get("release_bytes", 0),
        "merged_adapter": bool(record["metrics"].get("merged_adapter")),
        "artifact": MetadataValue.path(f"{st.root}/{release_key(recipe)}/versions/{version}"),
        "approve_with": MetadataValue.md(f"```\n{approve_command(recipe, version)}\n```"),
        "model_card": MetadataValue.md(card)})


class ApprovalConfig(Config):
    recipe: str = Field(description="The recipe (partition) whose released model is approved.")
    version: str = Field(description="The released_model version approved: all of it, or a prefix naming one version "
                                     "(shown as 'version' on the released_model partition).")
    approver: str = Field(min_length=1, description="Who approves (your name or e-mail): recorded and shown.")
    reason: str = Field(min_length=1, description="Why this version may be published: recorded and shown.")


@op(description="Records an approval of one released_model version in the store and on the asset.")
def approve_release(context: OpExecutionContext, config: ApprovalConfig, store: ArtifactStore) -> None:
    st = store.open()
    try:
        load_recipe(config.recipe)
        version = resolve_version(st, config.recipe, config.version)
    except (RecipeError, ValueError) as e:
        raise Failure(description=str(e), allow_retries=False) from None
    approval = record_approval(st, config.recipe, version, config.approver.strip(), config.reason.strip(), context.run_id)
    context.log_event(AssetObservation(asset_key="released_model", partition=config.recipe, metadata=approval_metadata(approval)))
    current = st.latest_version(release_key(config.recipe))
    note = "" if version == current else f" (not the current version {str(current)[:12]}: it will not be published unless it is current again)"
    context.log.info(f"released_model[{config.recipe}] version {version[:12]} approved by {approval['approver']}{note}")


def approval_metadata(approval: dict[str, Any]) -> dict[str, Any]:
    return {"approved_version": approval["version"], "approved_by": approval["approver"],
            "approval_reason": approval["reason"], "approved_at": MetadataValue.timestamp(approval["approved_at"]),
            "approval_run_id": approval["run_id"]}


@job(description="Approve one released_model version for publishing (config: recipe, version, approver, reason). "
                 "The release sensor then publishes it if it is the recipe's current version and its gates passed.")
def approve_release_job():
    approve_release()


def build_published_model(recipes: StaticPartitionsDefinition):
    @asset(partitions_def=recipes, group_name="release", deps=["released_model"], kinds={"huggingface", "s3"},
           code_version=RELEASE_CODE_VERSION,
           description="The approved released model, pushed to the recipe's release.target (a Hub repo or an S3 registry). "
                       "Runs from the release sensor or by hand; refuses a version that is not approved or failed a gate.")
    def published_model(context: AssetExecutionContext, store: ArtifactStore, hub: HubClient) -> MaterializeResult:
        recipe = recipe_of(context)
        st = store.open()
        if recipe.release.target is None:
            raise Failure(description=f"recipe '{recipe.name}' has no release.target: set it to 'hub' or 's3' to publish",
                          allow_retries=False)
        version, why = publish_refusal(st, recipe.name)
        if why:
            raise Failure(description=f"nothing published: {why}", allow_retries=False)
        released, approval = st.record(release_key(recipe.name)), approval_of(st, recipe.name, version)
        message = commit_message(recipe.name, released["recipe_hash"], version, released["drops_used"])
        try:
            art = st.get(release_key(recipe.name), version)
            published = publish(recipe.release, recipe.name, art.path, [f["path"] for f in art.manifest.files], version, message,
                                hub_endpoint=hub.endpoint, s3_endpoint=store.s3.endpoint_url)
        except PublishError as e:
            raise Failure(description=str(e)) from None
        evaluation = st.record(evaluation_key(recipe.name)) or {}
        record = {"version": version, "target": published.target, "location": published.location, "sha": published.sha,
                  "target_version": published.version, "url": published.url, "approval": approval, "commit_message": message,
                  "results": (evaluation.get("metrics") or {}).get("results", {}), "recipe_hash": released["recipe_hash"],
                  "published_at": time.time(), "run_id": context.run_id}
        st.put_record(published_key(recipe.name), version, record)
        context.log.info(f"published released_model[{recipe.name}] {version[:12]} to {published.location}")
        return MaterializeResult(data_version=DataVersion(version), metadata={
            "released_version": version, "target": published.target, "location": published.location,
            **({"sha": published.sha} if published.sha else {"registry_version": published.version}),
            "link": MetadataValue.url(published.url) if published.url.startswith("http") else MetadataValue.path(published.url),
            "commit_message": message, **approval_metadata(approval)})

    return published_model


def build_release_sensor(recipes: StaticPartitionsDefinition, publish_job):
    @sensor(name="release_sensor", job=publish_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
            description="Publishes a recipe's current released model once a person approved that exact version and its "
                        "evaluation gates passed; otherwise says per recipe what it waits for.")
    def release_sensor(context: SensorEvaluationContext, store: ArtifactStore):
        st = store.open()
        requests, waiting = [], []
        for name in recipes.get_partition_keys():
            try:
                target = load_recipe(name).release.target
            except RecipeError as e:
                waiting.append(f"{name}: the recipe does not load ({str(e).splitlines()[0]})")
                continue
            if target is None:
                waiting.append(f"{name}: no release.target (carded, not published)")
                continue
            version, why = publish_refusal(st, name)
            if why:
                waiting.append(f"{name}: {why}")
            elif is_published(st, name, version):
                waiting.append(f"{name}: version {version[:12]} is published")
            else:
                requests.append(RunRequest(partition_key=name, run_key=f"publish/{name}/{version}",
                                           tags={"llm_assets/released_version": version}))
        if not requests:
            return SkipReason("; ".join(waiting) or "no recipes")
        for line in waiting:
            context.log.info(line)
        return SensorResult(run_requests=requests)

    return release_sensor


def release_definitions(recipes: StaticPartitionsDefinition) -> Definitions:
    publish_job = define_asset_job("publish_model_job", selection=["published_model"], partitions_def=recipes,
                                   description="Publish one recipe's approved released model to its release.target.")
    return Definitions(assets=[build_released_model(recipes), build_published_model(recipes)],
                       jobs=[approve_release_job, publish_job], sensors=[build_release_sensor(recipes, publish_job)])
