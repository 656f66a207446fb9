"""Model assets, one partition per recipe, generated from the stage table (``llm_assets.stages``):
base -> cpt -> sft -> reward -> rlhf -> quantized, each gate a blocking asset check.

Each body resolves its inputs from the store, launches one training stage through Pipes and
commits the stage's directory; the logic lives in ``llm_assets.training``. A stage whose inputs,
recipe fields and code are unchanged reuses its committed version without training.
"""

import os
import time
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AllPartitionMapping,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetChecksDefinition,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    Backoff,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    StaticPartitionsDefinition,
    asset,
    asset_check,
    multi_asset_check,
)
from pydantic import Field

from llm_assets.artifacts import Store
from llm_assets.assets.data import dataset_key
from llm_assets.assets.model_metadata import curves_metadata, metadata_of
from llm_assets.automation import on_change
from llm_assets.data.selection import left_out_because, rows_digest
from llm_assets.markdown import markdown_table
from llm_assets.partitions import partitioned_checks
from llm_assets.recipes import Recipe, RecipeError, load_recipe
from llm_assets.resources.hub import HubClient
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.resources.store import ArtifactStore
from llm_assets.stages import STAGES, Stage, gate_outcome
from llm_assets.tokens_cache import cache_key, tokenizer_digest
from llm_assets.training.order import StoreSettings, WorkOrder

CACHED_STAGES = ("cpt", "sft", "reward")
FORCE_TAG = "llm_assets/force_retrain"


class TrainingConfig(Config):
    eval_limit: int = Field(200, gt=0, description="Held-out rows each stage is measured on (generation is the slow part on a CPU).")
    force_retrain: bool = Field(False, description=(
        "Train again although inputs, recipe fields and code are unchanged (after a code fix, or to check that a "
        f"seed reproduces), starting from no checkpoint. The run tag {FORCE_TAG}=true does the same for every stage of a run."))


def model_key(stage: str, recipe: str) -> str:
    return f"models/{stage}/{recipe}"


def recipe_of(context: AssetExecutionContext | AssetCheckExecutionContext) -> Recipe:
    try:
        return load_recipe(context.partition_key)
    except RecipeError as e:
        raise Failure(description=str(e), allow_retries=False) from None


def forced(context: AssetExecutionContext, config: TrainingConfig) -> bool:
    return config.force_retrain or context.run.tags.get(FORCE_TAG, "").strip().lower() in ("1", "true", "yes")


@dataclass
class TrainingData:
    """The validated drops a recipe trains a stage on, and the identity of their de-duplicated rows."""

    paths: dict[str, list[str]] = field(default_factory=dict)  # kind -> dataset.parquet of each drop read (here)
    refs: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # kind -> {key, version} of each (for a worker)
    digests: dict[str, str] = field(default_factory=dict)  # kind -> rows_digest of those drops
    used: dict[str, str] = field(default_factory=dict)  # "kind/drop" -> dataset version, for the drops trained on
    measured: dict[str, str] = field(default_factory=dict)  # "kind/drop" -> dataset version, for those only measured on
    left_out: dict[str, str] = field(default_factory=dict)  # "kind/drop" -> why


def training_data(context: AssetExecutionContext, st: Store, kinds: tuple[str, ...], recipe: Recipe,
                  trains_on: tuple[str, ...] | None = None) -> TrainingData:
    """Every drop of ``kinds`` whose dataset passed its checks and whose reject rate this recipe accepts; those of kinds
    not in ``trains_on`` (default: every kind) are read for held-out measures only."""
    out = TrainingData()
    for kind in kinds:
        paths, refs = [], []
        for drop in sorted(context.instance.get_dynamic_partitions(f"{kind}_drops")):
            key = dataset_key(kind, drop)
            if st.latest_version(key) is None:
                out.left_out[f"{kind}/{drop}"] = "its dataset was never materialized"
                continue
            why = left_out_because(st.manifest(key).metadata, recipe.data.max_reject_rate)
            if why:
                out.left_out[f"{kind}/{drop}"] = why
                continue
            art = st.get(key)
            paths.append(str(art.file("dataset.parquet")))
            refs.append({"key": key, "version": art.version})
            (out.used if trains_on is None or kind in trains_on else out.measured)[f"{kind}/{drop}"] = art.version
        if not paths:
            raise Failure(description=f"recipe '{recipe.name}': no usable {kind} drop to train on: land a file in the {kind} "
                                      f"landing folder and materialize {kind}_dataset" + _left_out_line(out.left_out, kind),
                          allow_retries=False)
        out.paths[kind], out.refs[kind], out.digests[kind] = paths, refs, rows_digest(paths)
    for drop, why in out.left_out.items():
        context.log.warning(f"{drop} left out for recipe '{recipe.name}': {why}")
    return out


def _left_out_line(left_out: dict[str, str], kind: str) -> str:
    mine = [f"{d} ({why})" for d, why in left_out.items() if d.startswith(f"{kind}/")]
    return f"; left out: {'; '.join(mine)}" if mine else ""


def train(context: AssetExecutionContext, recipe: Recipe, stage: Stage, store: ArtifactStore, launcher: TrainingLauncher,
          hub: HubClient, config: TrainingConfig) -> MaterializeResult:
    """Resolve the stage's inputs from the table, reuse the version trained from the same identity, or send a worker a
    work order (store keys and versions) and record the version it committed. No model bytes pass through this step."""
    st = store.open()
    parents = {role: model_key(parent, recipe.name) for role, parent in stage.inputs(recipe).items()}
    refuse_failed_gates(st, parents)
    versions = {role: _current_version(st, key) for role, key in parents.items()}
    data = training_data(context, st, stage.data_kinds(recipe), recipe, stage.trains_on(recipe))
    inputs = {**{f"data/{k}": d for k, d in data.digests.items()}, **versions}
    code_version = context.assets_def.code_versions_by_key[context.asset_key] or ""
    fingerprint = stage.fingerprint(recipe, inputs, code_version, {"eval_limit": config.eval_limit})
    key = model_key(stage.name, recipe.name)
    known, force = st.record(key, fingerprint), forced(context, config)
    if known is not None and st.has_version(key, known["version"]) and not force:
        return reuse(context, st, key, known, data)
    order = WorkOrder(stage=stage.name, recipe=recipe.model_dump(mode="json"), store=store_settings(store), output_key=key,
                      fingerprint=fingerprint, inputs={r: {"key": parents[r], "version": v} for r, v in versions.items()},
                      datasets=data.refs, options={"eval_limit": config.eval_limit},
                      hub=hub_order(recipe, hub) if stage.name == "base" else None)
    if stage.name in CACHED_STAGES or (stage.name == "rlhf" and recipe.rlhf.algorithm == "dpo"):  # DPO trains on pairs
        cache = cache_key(stage.name, data.digests, tokenizer_digest(st.manifest(parents["model"], versions["model"]).files),
                          recipe.data.chat_template, recipe.data.max_length, recipe.data.truncation)
        order.tokens = {"key": cache, "version": st.latest_version(cache)}
    if force:
        st.delete_key(order.checkpoints_key)
        context.log.info(f"{key}: retraining as asked (force_retrain), from no checkpoint")
    result = launcher.run(context, order, st)
    st.set_latest(key, result["version"])
    record = {"version": result["version"], "fingerprint": fingerprint, "stage": stage.name, "recipe_hash": recipe.recipe_hash,
              "inputs": inputs, "drops_used": data.used, "drops_measured": data.measured, "drops_left_out": data.left_out,
              "metrics": result["metrics"],
              "run_id": context.run_id, "trained_at": time.time()}
    st.put_record(key, fingerprint, record)
    return stored_result(st, key, record, **({"tokens_cache": order.tokens["key"]} if order.tokens else {}))


def _current_version(st: Store, key: str) -> str:
    version = st.latest_version(key)
    if version is None:
        raise Failure(description=f"{key} has never been committed (store {st.root}): materialize it first", allow_retries=False)
    return version


def store_settings(store: ArtifactStore) -> StoreSettings:
    """How a worker opens the same store: its root and S3 endpoint, never credentials (the worker has its own)."""
    return StoreSettings(root=store.root, s3_endpoint=store.s3.endpoint_url, region=store.s3.region_name)


def hub_order(recipe: Recipe, hub: HubClient) -> dict[str, Any] | None:
    """What the base worker needs to snapshot a hub model itself (its token comes from its own environment)."""
    if recipe.model.base.startswith("builtin:"):
        return None
    return {"repo": recipe.model.base, "revision": recipe.model.revision, "endpoint": hub.endpoint,
            "offline": hub.offline, "timeout_s": hub.timeout_s}


def refuse_failed_gates(st: Store, parents: dict[str, str]) -> None:
    """A model whose current version failed its blocking gate is not trained on, in this run or any later one."""
    for key in parents.values():
        gate = (st.record(key) or {}).get("gate") or {}
        if gate.get("passed") is False:
            raise Failure(description=f"{key} failed its gate {gate['check']} ({gate['reason']}); fix it and materialize "
                                      f"it again (or re-run the check after a threshold edit) before training on it",
                          allow_retries=False)


def reuse(context: AssetExecutionContext, st: Store, key: str, record: dict[str, Any], data: TrainingData) -> MaterializeResult:
    """The version trained from this same identity before: made current again, without training. The drops it reads
    now may be others than the run's (a drop of rows already trained on): their rows are the same."""
    st.set_latest(key, record["version"])
    st.put_record(key, record["fingerprint"], record)
    context.log.info(f"{key}: inputs, recipe fields and code unchanged since version {record['version'][:12]} "
                     f"(run {record.get('run_id', '?')}); reusing it, nothing to train")
    return stored_result(st, key, {**record, "drops_used": data.used, "drops_measured": data.measured,
                                    "drops_left_out": data.left_out}, reused=True)


def stored_result(st: Store, key: str, record: dict[str, Any], **extra: Any) -> MaterializeResult:
    """The materialization of a committed model version: its curves, metrics, samples, provenance and location.
    ``drops_used`` are the drops trained on; the models it started from and the drops it only measured on are their own keys."""
    manifest = st.manifest(key, record["version"])
    parents = {role: version for role, version in record.get("inputs", {}).items() if not role.startswith("data/")}
    return MaterializeResult(data_version=DataVersion(manifest.version), metadata={
        **curves_metadata(st, key, record["fingerprint"]), **metadata_of(record.get("metrics", {})), **extra,
        "recipe_hash": record.get("recipe_hash", ""),
        "fingerprint": record["fingerprint"], "parent_versions": MetadataValue.json(parents),
        "drops_used": MetadataValue.json(record.get("drops_used", {})),
        "drops_measured": MetadataValue.json(record.get("drops_measured", {})),
        "drops_left_out": MetadataValue.json(record.get("drops_left_out", {})),
        "artifact": f"{st.root}/{key}/versions/{manifest.version}", "artifact_bytes": manifest.total_bytes})


def passthrough(context: AssetExecutionContext, recipe: Recipe, stage: Stage, store: ArtifactStore) -> MaterializeResult:
    """A stage the recipe leaves out: its parent's files, committed unchanged (same content, same version)."""
    st = store.open()
    source = stage.parent(recipe)
    key = model_key(stage.name, recipe.name)
    manifest = st.commit_copy(key, model_key(source, recipe.name), _current_version(st, model_key(source, recipe.name)),
                              {"stage": stage.name, "recipe": recipe.name})
    why, name = f"the recipe has no {stage.group} group", f"passthrough-{manifest.version[:16]}"
    st.put_record(key, name, {
        "version": manifest.version, "fingerprint": name, "stage": stage.name,
        "recipe_hash": recipe.recipe_hash, "passthrough_of": source, "why": why, "metrics": {}})
    context.log.info(f"{stage.name}: {why}; passing {source} through unchanged")
    return MaterializeResult(data_version=DataVersion(manifest.version),
                             metadata={"passthrough": True, "passthrough_of": source, "why": why, "recipe_hash": recipe.recipe_hash})


def training_retry_policy() -> RetryPolicy | None:
    """A worker killed or evicted (a preempted GPU node, an OOM-killed pod) is started again after a growing delay and
    resumes from its last stored checkpoint; a failure it reported itself (bad data, a recipe the model cannot run)
    raises ``Failure(allow_retries=False)`` and is not retried. ``LLM_ASSETS_TRAINING_RETRIES`` (default 2) and
    ``LLM_ASSETS_TRAINING_RETRY_DELAY_S`` (default 30, doubling) tune it; 0 retries turns it off."""
    retries = int(os.environ.get("LLM_ASSETS_TRAINING_RETRIES", "2"))
    delay = float(os.environ.get("LLM_ASSETS_TRAINING_RETRY_DELAY_S", "30"))
    return RetryPolicy(max_retries=retries, delay=delay, backoff=Backoff.EXPONENTIAL) if retries > 0 else None


def build_model_assets(partitions: StaticPartitionsDefinition) -> list[AssetsDefinition]:
    """One asset per row of the stage table: deps, description and body all come from the row."""
    common = dict(partitions_def=partitions, group_name="models", pool="training", kinds={"pytorch", "huggingface"},
                  automation_condition=on_change(), code_version="2", retry_policy=training_retry_policy())

    def model_asset(stage: Stage) -> AssetsDefinition:
        deps = ["recipe", *(STAGES[p].asset for p in stage.parents),
                *(AssetDep(f"{k}_dataset", partition_mapping=AllPartitionMapping()) for k in stage.data)]

        @asset(name=stage.asset, deps=deps, description=stage.description, **common)
        def model(context: AssetExecutionContext, config: TrainingConfig, store: ArtifactStore, launcher: TrainingLauncher,
                  hub: HubClient) -> MaterializeResult:
            recipe = recipe_of(context)
            if not stage.active(recipe):
                return passthrough(context, recipe, stage, store)
            return train(context, recipe, stage, store, launcher, hub, config)

        return model

    return [model_asset(s) for s in STAGES.values()]


def build_gate_checks(partitions: StaticPartitionsDefinition) -> list[AssetChecksDefinition]:
    """Each stage's gates as blocking checks that read the stored metrics: they run with their asset, or alone from the
    UI (a threshold edit needs no retraining). A stage the recipe leaves out reports no result: the checks show skipped."""

    def gate_check(stage: Stage) -> AssetChecksDefinition:
        skipped_when = f" Skipped when the recipe has no {stage.group} group." if stage.group else ""
        with partitioned_checks():
            specs = [AssetCheckSpec(g.check, asset=stage.asset, blocking=True, partitions_def=partitions,
                                    description=g.description + skipped_when) for g in stage.gates]

        @multi_asset_check(specs=specs, can_subset=True, name=f"{stage.asset}_gate")
        def check(context: AssetCheckExecutionContext, store: ArtifactStore):
            recipe = recipe_of(context)
            names = ", ".join(g.check for g in stage.gates)
            if not stage.active(recipe):
                context.log.info(f"{names} skipped: recipe '{recipe.name}' has no {stage.group} group, so "
                                 f"{stage.asset} passes its parent through and there is nothing to check")
                return
            st, key = store.open(), model_key(stage.name, recipe.name)
            record = st.record(key)
            if record is None or record["version"] != st.latest_version(key):
                raise Failure(description=f"{stage.asset} has no stored run record for its current version (recipe "
                                          f"'{recipe.name}'): materialize it, then run the check")
            # every gate is evaluated for the record (a later run must not train on a model that failed any of them),
            # a result reported for those selected
            outcomes = {g.check: gate_outcome(g, recipe, record.get("metrics", {})) for g in stage.gates}
            failed = {name: reason for name, (passed, _, reason) in outcomes.items() if not passed}
            st.put_record(key, record["fingerprint"], {**record, "gate": {
                "check": ", ".join(failed) or names, "passed": not failed, "reason": "; ".join(failed.values())}})
            selected = {k.name for k in context.selected_asset_check_keys}
            for name, (passed, metadata, reason) in outcomes.items():
                if name not in selected:
                    continue
                if not passed:
                    context.log.error(f"{stage.asset} [{recipe.name}] {name} failed: {reason}")
                yield AssetCheckResult(check_name=name, asset_key=stage.asset, passed=passed,
                                       metadata={**metadata, "version": record["version"][:12]}, description=reason or None)

        return check

    return [gate_check(s) for s in STAGES.values() if s.gates]


def build_fit_check(partitions: StaticPartitionsDefinition) -> AssetChecksDefinition:
    """How many rows each data kind the recipe reads fits its tokenizer, max_length and truncation: seen on the base
    model, before any training, and re-evaluated alone after a max_length or truncation edit."""

    def rows_fit(context: AssetCheckExecutionContext, store: ArtifactStore) -> AssetCheckResult:
        from llm_assets.training.fit import fit_report
        from llm_assets.training.models import load_tokenizer

        recipe = recipe_of(context)
        st = store.open()
        kinds = STAGES["base"].data_kinds(recipe)
        data = training_data(context, st, kinds, recipe)
        report = fit_report(load_tokenizer(str(st.get(model_key("base", recipe.name)).path)), recipe, data.paths)
        lost = {k: r["left_out"] + r.get("indistinguishable", 0) for k, r in report.items()}  # rows no stage trains on
        mostly_lost = {k: r for k, r in report.items() if r["rows"] and lost[k] > r["rows"] / 2}
        rows = [[k, r["rows"], r["fit"], r["truncated"], lost[k], r["p50_tokens"], r["p95_tokens"]] for k, r in report.items()]
        table = markdown_table(["kind", "rows", "fit whole", "truncated", "left out", "p50 tokens", "p95 tokens"], rows)
        reason = "; ".join(f"{k}: {lost[k]} of {r['rows']} rows cannot be trained on at "
                           f"data.max_length {recipe.data.max_length} (p95 {r['p95_tokens']} tokens): raise max_length"
                           + (" or set data.truncation: left" if k == "sft" and recipe.data.truncation == "drop" else "")
                           for k, r in mostly_lost.items())
        return AssetCheckResult(passed=not mostly_lost, severity=AssetCheckSeverity.WARN, description=reason or None,
                                metadata={"fit": MetadataValue.md(table), "max_length": recipe.data.max_length,
                                          "truncation": recipe.data.truncation, **{f"{k}_report": MetadataValue.json(r) for k, r in report.items()}})

    with partitioned_checks():
        return asset_check(asset="base_model", name="rows_fit_max_length", partitions_def=partitions, blocking=False,
                           description="Rows per data kind that fit data.max_length whole, with the prompt cut from the "
                                       "left, or not at all (warns when most of a kind's rows cannot be trained on).")(rows_fit)
