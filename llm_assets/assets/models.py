"""Model assets, one partition per recipe: base -> cpt -> sft -> reward -> rlhf -> quantized.

Each body resolves its inputs from the store, launches one training stage through Pipes and
commits the stage's directory; the logic lives in ``llm_assets.training``.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
)
from pydantic import Field

from llm_assets.assets.data import dataset_key
from llm_assets.automation import on_change
from llm_assets.markdown import markdown_table
from llm_assets.paths import default_data_dir
from llm_assets.recipes import Recipe, RecipeError, load_recipe
from llm_assets.resources.hub import HubClient, HubError, check_architecture
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.resources.store import ArtifactStore, Manifest, Store
from llm_assets.tokens_cache import TOKENS_FILE, cache_key, tokenizer_digest
from llm_assets.training.spec import StageSpec

CACHED_STAGES = ("sft",)

DATA_KINDS = ("pretraining", "sft", "preference")


class TrainingConfig(Config):
    eval_limit: int = Field(200, gt=0, description="Held-out rows each stage is measured on (generation is the slow part on a CPU).")


def model_key(stage: str, recipe: str) -> str:
    return f"models/{stage}/{recipe}"


def recipe_of(context: AssetExecutionContext) -> Recipe:
    try:
        return load_recipe(context.partition_key)
    except RecipeError as e:
        raise Failure(description=str(e)) from None


def validated_datasets(context: AssetExecutionContext, store: Store, kind: str) -> tuple[list[str], dict[str, str]]:
    """Every drop of ``kind`` whose dataset exists and passed its blocking checks; the rest are logged."""
    paths, used = [], {}
    for drop in sorted(context.instance.get_dynamic_partitions(f"{kind}_drops")):
        key = dataset_key(kind, drop)
        if store.latest_version(key) is None:
            context.log.warning(f"{kind} drop {drop!r} left out: its dataset was never materialized")
            continue
        art = store.get(key)
        if not art.manifest.metadata.get("checks_passed", False):
            context.log.warning(f"{kind} drop {drop!r} left out: its dataset failed a blocking check")
            continue
        paths.append(str(art.file("dataset.parquet")))
        used[drop] = art.version
    if not paths:
        raise Failure(description=f"no validated {kind} drop to train on: land a file in the {kind} landing folder and "
                                  f"materialize {kind}_dataset (drops failing their checks are left out)")
    return paths, used


def metadata_of(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k == "log_history":
            continue
        if k == "samples" and v:
            out[k] = MetadataValue.md(markdown_table(list(v[0]), [list(s.values()) for s in v]))
        elif isinstance(v, dict):
            out[k] = MetadataValue.json(v)
        elif isinstance(v, (int, float, str, bool)):
            out[k] = v
    return out


def train(context: AssetExecutionContext, recipe: Recipe, stage: str, store: ArtifactStore, launcher: TrainingLauncher, config: TrainingConfig,
          inputs: dict[str, str], kinds: tuple[str, ...], extra_inputs: dict[str, str] | None = None) -> tuple[dict[str, Any], MaterializeResult]:
    """Resolve inputs, launch ``stage``, commit its output. ``inputs``: role -> artifact key."""
    st = store.open()
    artifacts = {role: st.get(key) for role, key in inputs.items()}
    datasets, versions = {}, {}
    for kind in kinds:
        datasets[kind], used = validated_datasets(context, st, kind)
        versions.update({f"{kind}/{d}": v for d, v in used.items()})
    data_versions = dict(versions)
    versions.update({role: a.version for role, a in artifacts.items()})
    work = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=_ensure(default_data_dir() / "work")))
    spec = StageSpec(stage=stage, recipe=recipe.model_dump(mode="json"), output_dir=str(work / "out"),
                     inputs={**{r: str(a.path) for r, a in artifacts.items()}, **(extra_inputs or {})},
                     datasets=datasets, options={"eval_limit": config.eval_limit})
    fingerprint = spec.fingerprint({**versions, "code_version": context.assets_def.code_versions_by_key[context.asset_key] or ""})
    key = model_key(stage, recipe.name)
    previous = st.manifest(key) if st.latest_version(key) is not None else None
    if previous is not None and previous.metadata.get("fingerprint") == fingerprint:
        return reuse(context, st, key, previous)
    spec.checkpoint_dir = str(launcher.checkpoints() / stage / recipe.name / fingerprint)
    cache = None
    if stage in CACHED_STAGES:
        cache = cache_key(stage, data_versions, tokenizer_digest(artifacts["model"].manifest.files),
                          recipe.data.chat_template, recipe.data.max_length)
        if st.latest_version(cache) is not None:
            spec.inputs["tokens"] = str(st.get(cache).path)
        else:
            spec.options["tokens_out"] = str(work / "tokens")
    try:
        metrics = launcher.run(context, spec)
        manifest = st.commit(key, work / "out", {"recipe_hash": recipe.recipe_hash, "inputs": versions, "stage": stage,
                                                 "fingerprint": fingerprint})
    finally:
        if cache and (work / "tokens" / TOKENS_FILE).exists():  # kept even when training failed: it is valid
            st.commit(cache, work / "tokens", {"stage": stage, "inputs": data_versions})
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(spec.checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    result = stored_result(st, key, manifest, metrics, **({"tokens_cache": cache} if cache else {}))
    return metrics, result


def reuse(context: AssetExecutionContext, st: Store, key: str, manifest: Manifest) -> tuple[dict[str, Any], MaterializeResult]:
    """Same inputs, recipe and code as the committed version: that version again, without training."""
    metrics = json.loads(st.read_file(key, "metrics.json", manifest.version) or b"{}")
    context.log.info(f"{key}: inputs, recipe and code unchanged since version {manifest.version}; reusing it, nothing to train")
    return metrics, stored_result(st, key, manifest, metrics, reused=True)


def stored_result(st: Store, key: str, manifest: Manifest, metrics: dict[str, Any], **extra: Any) -> MaterializeResult:
    """The materialization of a committed model version: its metrics, provenance and location."""
    return MaterializeResult(data_version=DataVersion(manifest.version), metadata={
        **metadata_of(metrics), **extra, "recipe_hash": manifest.metadata.get("recipe_hash", ""),
        "drops_used": MetadataValue.json(manifest.metadata.get("inputs", {})),
        "artifact": f"{st.root}/{key}/versions/{manifest.version}", "artifact_bytes": manifest.total_bytes})


def passthrough(context: AssetExecutionContext, recipe: Recipe, stage: str, source_stage: str, store: ArtifactStore, why: str) -> MaterializeResult:
    """A stage the recipe leaves out: its parent's files, committed unchanged (same content, same version)."""
    st = store.open()
    parent = st.get(model_key(source_stage, recipe.name))
    manifest = st.commit(model_key(stage, recipe.name), parent.path, {"recipe_hash": recipe.recipe_hash, "passthrough_of": source_stage})
    context.log.info(f"{stage}: {why}; passing {source_stage} through unchanged")
    return MaterializeResult(data_version=DataVersion(manifest.version),
                             metadata={"passthrough": True, "passthrough_of": source_stage, "why": why, "recipe_hash": recipe.recipe_hash})


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_model_assets(partitions: StaticPartitionsDefinition) -> list[AssetsDefinition]:
    def data_deps(*kinds: str) -> list[AssetDep]:
        return [AssetDep(f"{k}_dataset", partition_mapping=AllPartitionMapping()) for k in kinds]

    common = dict(partitions_def=partitions, group_name="models", pool="training", kinds={"pytorch", "huggingface"},
                  automation_condition=on_change())

    @asset(**common, code_version="1", deps=["recipe", *data_deps(*DATA_KINDS)],
           description="builtin:tiny built from the corpora (BPE tokenizer + fresh weights), or a hub snapshot at the pinned revision.")
    def base_model(context: AssetExecutionContext, config: TrainingConfig, store: ArtifactStore, launcher: TrainingLauncher, hub: HubClient) -> MaterializeResult:
        recipe = recipe_of(context)
        extra = {}
        if not recipe.model.base.startswith("builtin:"):
            try:
                snapshot = hub.snapshot(recipe.model.base, recipe.model.revision)
                check_architecture(snapshot, recipe.model.architecture, recipe.model.base)
            except HubError as e:
                raise Failure(description=str(e)) from None
            extra["snapshot"] = str(snapshot)
        return train(context, recipe, "base", store, launcher, config, {}, DATA_KINDS, extra)[1]

    @asset(**common, code_version="1", deps=["recipe", "base_model", *data_deps("pretraining")],
           description="Continued pre-training on every validated pre-training drop; the base model itself when the recipe has no cpt group.")
    def cpt_model(context: AssetExecutionContext, config: TrainingConfig, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        recipe = recipe_of(context)
        if recipe.cpt is None:
            return passthrough(context, recipe, "cpt", "base", store, "the recipe has no cpt group")
        return train(context, recipe, "cpt", store, launcher, config, {"model": model_key("base", recipe.name)}, ("pretraining",))[1]

    @asset(**common, code_version="1", deps=["recipe", "cpt_model", *data_deps("sft")],
           check_specs=[AssetCheckSpec("sft_beats_parent", asset="sft_model", blocking=True,
                                       description="Held-out completion loss below the parent model's.")],
           description="Supervised fine-tuning (full, LoRA or QLoRA per recipe), loss on completions only; resumes from its last checkpoint.")
    def sft_model(context: AssetExecutionContext, config: TrainingConfig, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        recipe = recipe_of(context)
        metrics, result = train(context, recipe, "sft", store, launcher, config, {"model": model_key("cpt", recipe.name)}, ("sft",))
        return gate(result, "sft_beats_parent", metrics["eval_loss"] < metrics["parent_eval_loss"],
                    {"eval_loss": metrics["eval_loss"], "parent_eval_loss": metrics["parent_eval_loss"]},
                    "SFT did not lower the held-out loss: check the learning rate, steps and data")

    @asset(**common, code_version="1", deps=["recipe", "sft_model", *data_deps("preference")],
           check_specs=[AssetCheckSpec("reward_accuracy_above_threshold", asset="reward_model", blocking=True,
                                       description="Pairwise accuracy on held-out preference pairs at least reward.min_accuracy.")],
           description="Pairwise reward model (sequence-classification head) on every validated preference drop.")
    def reward_model(context: AssetExecutionContext, config: TrainingConfig, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        recipe = recipe_of(context)
        if recipe.reward is None:
            result = passthrough(context, recipe, "reward", "sft", store, "the recipe has no reward group (no reward model)")
            return gate(result, "reward_accuracy_above_threshold", True, {"skipped": "the recipe trains no reward model"})
        metrics, result = train(context, recipe, "reward", store, launcher, config, {"model": model_key(recipe.reward.base, recipe.name)}, ("preference",))
        accuracy, threshold = metrics["reward_accuracy"], recipe.reward.min_accuracy
        return gate(result, "reward_accuracy_above_threshold", accuracy >= threshold,
                    {"reward_accuracy": accuracy, "threshold": threshold},
                    f"accuracy {accuracy:.1%} is below reward.min_accuracy {threshold:.0%}")

    @asset(**common, code_version="1", deps=["recipe", "sft_model", "reward_model", *data_deps("preference", "sft")],
           description="RLOO / GRPO against the reward model with a KL penalty to SFT, or offline DPO; reward, win rate and KL reported.")
    def rlhf_policy(context: AssetExecutionContext, config: TrainingConfig, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        recipe = recipe_of(context)
        if recipe.rlhf is None:
            return passthrough(context, recipe, "rlhf", "sft", store, "the recipe has no rlhf group")
        inputs = {"model": model_key("sft", recipe.name)}
        if recipe.reward is not None:
            inputs["reward"] = model_key("reward", recipe.name)
        return train(context, recipe, "rlhf", store, launcher, config, inputs, ("preference", "sft"))[1]

    @asset(**common, code_version="1", deps=["recipe", "rlhf_policy", *data_deps("sft")],
           check_specs=[AssetCheckSpec("eval_loss_delta_within_bound", asset="quantized_model", blocking=True,
                                       description="Quantized eval loss minus unquantized at most quantization.max_eval_loss_delta.")],
           description="Adapters merged, then bitsandbytes 4-bit NF4 (or 8-bit); size ratio and eval-loss delta reported.")
    def quantized_model(context: AssetExecutionContext, config: TrainingConfig, store: ArtifactStore, launcher: TrainingLauncher) -> MaterializeResult:
        recipe = recipe_of(context)
        if recipe.quantization is None:
            result = passthrough(context, recipe, "quantize", "rlhf", store, "the recipe has no quantization group")
            return gate(result, "eval_loss_delta_within_bound", True, {"skipped": "the recipe does not quantize"})
        metrics, result = train(context, recipe, "quantize", store, launcher, config, {"model": model_key("rlhf", recipe.name)}, ("sft",))
        delta, bound = metrics["eval_loss_delta"], recipe.quantization.max_eval_loss_delta
        return gate(result, "eval_loss_delta_within_bound", delta <= bound, {"eval_loss_delta": delta, "bound": bound},
                    f"quantization costs {delta:.4f} eval loss, more than {bound}")

    return [base_model, cpt_model, sft_model, reward_model, rlhf_policy, quantized_model]


def gate(result: MaterializeResult, check: str, passed: bool, metadata: dict[str, Any], failure: str = "") -> MaterializeResult:
    """``result`` with the outcome of its blocking check (a failure stops everything downstream)."""
    outcome = AssetCheckResult(check_name=check, passed=passed, metadata=metadata, description=None if passed else failure)
    return MaterializeResult(data_version=result.data_version, metadata=result.metadata, check_results=[outcome])
