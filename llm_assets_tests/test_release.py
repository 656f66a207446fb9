"""Release: the carded released model, a person's approval, and publishing to a Hub stand-in and to S3 (moto).

The stores are seeded with what the model stages and the evaluation leave (a committed model at
models/quantize/<recipe>, run records, an evaluation record in the evaluation's contract); the released model
is made by a real ``release`` worker subprocess, and the Dagster steps run as they do in a deployment.
"""

import json

import boto3
import huggingface_hub.constants
import pytest
import torch
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, RunRequest, SkipReason, build_sensor_context, materialize
from dagster_aws.s3 import S3Resource
from huggingface_hub import ModelCard

from llm_assets.artifacts import open_store
from llm_assets.recipes import ArchitectureGroup, parse_recipe
from llm_assets.release.approval import approve_command
from llm_assets.resources import default_resources
from llm_assets.resources.store import ArtifactStore
from llm_assets.training.builtin import build_tiny
from llm_assets_tests.helpers import HUB_REV, land_demo_drops, write_recipe
from llm_assets_tests.hub_standin import HubStandIn

ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "vocab_size": 300}
DROPS = {"sft/demo_word_tasks.jsonl": "a1" * 32, "preference/demo_prefs.jsonl": "b2" * 32}
GATES = ("released_not_worse_than_base", "quantized_within_bound", "no_regression_vs_published")
TOKEN = "hf_standin_secret_token"


def seed_models(store, tmp_path) -> str:
    """What the model stages leave for recipe 'tiny': a committed quantized model and each stage's run record."""
    build_tiny([f"word{i} and text {i}" for i in range(300)], ArchitectureGroup(**ARCH), 64, 0, tmp_path / "quantized")
    quantized = store.commit("models/quantize/tiny", tmp_path / "quantized").version
    figures = {"base": {"parameters": 30000, "eval_loss": 5.1},
               "sft": {"steps": 6, "parent_eval_loss": 5.1, "eval_loss": 3.25, "exact_match": 0.4},
               "quantize": {"bits": 4, "unquantized_eval_loss": 3.2, "eval_loss": 3.25, "eval_loss_delta": 0.05}}
    for stage, metrics in figures.items():
        version = quantized if stage == "quantize" else f"{stage}-version"
        store.put_record(f"models/{stage}/tiny", f"{stage}-run", {
            "version": version, "fingerprint": f"{stage}-run", "stage": stage, "metrics": metrics,
            "drops_used": {k: v for k, v in DROPS.items() if stage != "base"}})
    return quantized


def evaluate(store, quantized: str, failed: str | None = None) -> None:
    """An evaluation record as the evaluation asset writes it, of ``quantized``; ``failed`` names a failed gate."""
    models = {role: {"key": f"models/{stage}/tiny", "version": f"{stage}-version"}
              for role, stage in (("base", "base"), ("sft", "sft"), ("policy", "rlhf"))}
    models["released"] = {"key": "models/quantize/tiny", "version": quantized}
    results = {"demo_word_tasks_exact": {role: {"metric": "exact_match", "value": v, "stderr": 0.05, "n": 40}
                                         for role, v in (("base", 0.1), ("sft", 0.4), ("policy", 0.425), ("released", 0.45))}}
    gates = {g: {"passed": g != failed, "reason": "exact_match 0.1 below base 0.4 by more than 0.02" if g == failed else ""}
             for g in GATES}
    store.put_record("models/evaluation/tiny", f"eval-{quantized[:8]}-{failed}", {
        "version": "eval-version", "metrics": {"models": models, "results": results,
                                              "tasks": {"demo_word_tasks_exact": {"dataset": "demo_word_tasks", "split": "eval"}}},
        "gates": gates})


@pytest.fixture
def release_env(project_env, monkeypatch):
    recipes = project_env / "recipes"
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # the stand-in serves plain LFS, no Xet
    monkeypatch.setenv("LLM_ASSETS_TEST_HUB_TOKEN", TOKEN)
    return project_env, recipes


def write_release_recipe(recipes, **release):
    write_recipe(recipes, "tiny", model={"base": "acme/tiny-llama", "revision": HUB_REV, "architecture": ARCH},
                 release={"license": "apache-2.0", "intended_use": "Answering the demo word tasks.",
                          "limitations": "Trained on a few hundred generated rows.", **release})


def definitions(resources=None):
    from llm_assets.definitions import build_definitions

    return build_definitions(resources)


def release(defs, instance):
    """released_model[tiny] alone (its deps are what the seeded store holds), with the code location's resources."""
    return materialize([defs.resolve_assets_def("released_model")], partition_key="tiny", instance=instance, raise_on_error=False)


def publish(defs, instance):
    return defs.resolve_job_def("publish_model_job").execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)


def approve(defs, instance, version: str, approver="dana", reason="evaluation reviewed"):
    config = {"recipe": "tiny", "version": version, "approver": approver, "reason": reason}
    return defs.resolve_job_def("approve_release_job").execute_in_process(
        run_config={"ops": {"approve_release": {"config": config}}}, instance=instance, raise_on_error=False)


def sensor_says(defs, instance):
    sensor = defs.resolve_sensor_def("release_sensor")
    with build_sensor_context(instance=instance, resources={"store": defs.resources["store"]}) as context:
        return sensor(context)


def failure(result) -> str:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.step_failure_data.error.message


def meta(instance, asset):
    [record] = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=["tiny"]), limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_card_approval_and_publishing_to_a_hub_stand_in(release_env):
    project, recipes = release_env
    with HubStandIn(TOKEN) as hub:
        write_release_recipe(recipes, target="hub", repo="acme/tiny-release", endpoint=hub.endpoint,
                             token_env="LLM_ASSETS_TEST_HUB_TOKEN")
        defs, instance = definitions(), DagsterInstance.get()
        store = default_resources()["store"].open()
        quantized = seed_models(store, project)
        evaluate(store, quantized)

        made = release(defs, instance)
        assert made.success, failure(made)
        version = store.latest_version("models/release/tiny")
        art = store.get("models/release/tiny")
        # the card: huggingface_hub reads it back with its model-index, base model and revision, data, recipe, license
        card = ModelCard.load(art.file("README.md"))
        data = card.data.to_dict()
        assert card.data.license == "apache-2.0" and data["base_model"] == "acme/tiny-llama" and data["base_model_revision"] == HUB_REV
        assert sorted(data["datasets"]) == sorted(DROPS) and data["dataset_versions"] == DROPS
        [result] = card.data.eval_results
        assert (result.task_name, result.metric_type, result.metric_value) == ("demo_word_tasks_exact", "exact_match", 0.45)
        recipe_hash = meta(instance, "released_model")["recipe_hash"]
        assert data["recipe_hash"] == recipe_hash and f"Recipe hash `{recipe_hash}`" in card.text
        assert (recipes / "tiny.yaml").read_text().strip() in card.text  # the recipe file itself
        assert "| sft | `sft-version` | steps 6, parent_eval_loss 5.1, eval_loss 3.25, exact_match 0.4 |" in card.text
        assert "0.45 ± 0.05 (n=40)" in card.text and "Answering the demo word tasks." in card.text
        assert (art.path / "model.safetensors").read_bytes() == store.get("models/quantize/tiny").file("model.safetensors").read_bytes()

        # not approved: the sensor says what it waits for (the exact command), and a manual run publishes nothing
        said = sensor_says(defs, instance)
        assert isinstance(said, SkipReason) and approve_command("tiny", version) in said.skip_message
        refused = publish(defs, instance)
        assert not refused.success and f"awaiting approval of released_model[tiny] version {version[:12]}" in failure(refused)
        assert hub.requests == [] and hub.repos == {}

        # a person approves it by a prefix of its version: recorded in the store and shown on the released_model partition
        assert approve(defs, instance, version[:12]).success
        approval = store.read_json(f"approvals/tiny/{version}.json")
        assert (approval["approver"], approval["reason"], approval["version"]) == ("dana", "evaluation reviewed", version)
        [obs] = instance.fetch_observations(AssetRecordsFilter(AssetKey("released_model"), asset_partitions=["tiny"]), limit=1).records
        shown = {k: v.value for k, v in obs.asset_observation.metadata.items()}
        assert (shown["approved_version"], shown["approved_by"], shown["approval_reason"]) == (version, "dana", "evaluation reviewed")

        # approved and gates passed: the sensor asks for exactly this version's publication, which reaches the Hub
        [request] = sensor_says(defs, instance).run_requests
        assert isinstance(request, RunRequest) and request.partition_key == "tiny" and request.run_key == f"publish/tiny/{version}"
        published = publish(defs, instance)
        assert published.success, failure(published)
        repo = hub.repos["acme/tiny-release"]
        assert repo.private and not hub.refused
        [commit] = repo.commits
        assert f"recipe hash {recipe_hash[:12]}" in commit["message"] and version[:12] in commit["message"]
        assert all(f"{drop}@{v[:12]}" in commit["message"] for drop, v in DROPS.items())
        files = {f["path"] for f in art.manifest.files}
        assert set(commit["files"]) == files and commit["lfs_files"] == ["model.safetensors"]
        assert all(repo.files[f] == art.file(f).read_bytes() for f in files)
        record = store.record("models/published/tiny")
        assert record["sha"] == commit["sha"] == meta(instance, "published_model")["sha"] and record["version"] == version
        assert record["approval"]["approver"] == "dana" and record["results"]["demo_word_tasks_exact"]["released"]["value"] == 0.45
        assert TOKEN not in json.dumps(record) and TOKEN not in json.dumps({k: str(v) for k, v in meta(instance, "published_model").items()})
        assert "is published" in sensor_says(defs, instance).skip_message

        # a re-carded model is version B: A's approval does not publish it, by the sensor or by hand
        write_release_recipe(recipes, target="hub", repo="acme/tiny-release", endpoint=hub.endpoint,
                             token_env="LLM_ASSETS_TEST_HUB_TOKEN", intended_use="Answering word tasks, now documented.")
        assert release(defs, instance).success
        b = store.latest_version("models/release/tiny")
        assert b != version
        said = sensor_says(defs, instance)
        assert isinstance(said, SkipReason) and f"awaiting approval of released_model[tiny] version {b[:12]}" in said.skip_message
        refused = publish(defs, instance)
        assert not refused.success and f"version {b[:12]}" in failure(refused)
        assert len(repo.commits) == 1 and store.record("models/published/tiny")["version"] == version


def test_failed_gates_stop_releasing_and_publishing_and_s3_registry_publishing(release_env, s3_endpoint):
    project, recipes = release_env
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="registry")
    write_release_recipe(recipes, target="s3", registry="s3://registry/models", name="tiny-chat")
    resources = {"store": ArtifactStore(root=str(project / "store"), s3=S3Resource(endpoint_url=s3_endpoint))}
    defs, instance = definitions(resources), DagsterInstance.get()
    store = resources["store"].open()
    registry = open_store("s3://registry/models", s3_endpoint, cache_dir=project / "registry_cache")
    quantized = seed_models(store, project)

    # a failed evaluation gate: no released model is made (one line naming the check), no worker is started
    evaluate(store, quantized, failed="released_not_worse_than_base")
    refused = release(defs, instance)
    message = failure(refused)
    assert not refused.success and "released_not_worse_than_base (exact_match 0.1 below base" in message and "\n" not in message.strip()
    assert store.latest_version("models/release/tiny") is None

    evaluate(store, quantized)
    assert release(defs, instance).success
    version = store.latest_version("models/release/tiny")
    assert approve(defs, instance, version).success

    # approved, but a gate fails afterwards (the evaluation's checks ran again): nothing is published
    evaluate(store, quantized, failed="no_regression_vs_published")
    said = sensor_says(defs, instance)
    assert isinstance(said, SkipReason) and "failed its gate no_regression_vs_published" in said.skip_message
    refused = publish(defs, instance)
    assert not refused.success and "failed its gate no_regression_vs_published" in failure(refused)
    assert registry.latest_version("tiny-chat") is None

    # approved with its gates passed: committed to the S3 registry (manifest last), as the same content version
    evaluate(store, quantized)
    assert publish(defs, instance).success
    assert registry.latest_version("tiny-chat") == version
    published = registry.get("tiny-chat")
    released = store.get("models/release/tiny")
    assert [f["sha256"] for f in published.manifest.files] == [f["sha256"] for f in released.manifest.files]
    record = store.record("models/published/tiny")
    assert record["location"] == f"s3://registry/models/tiny-chat/versions/{version}" and record["sha"] is None
    assert meta(instance, "published_model")["location"] == record["location"]


def test_release_stage_merges_an_adapter_into_its_base(tmp_path):
    """A recipe with no quantization passes a LoRA policy through: what is released loads without PEFT, same outputs."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.training.release import run
    from llm_assets.training.report import Reporter
    from llm_assets.training.spec import StageSpec

    build_tiny([f"word{i} and text {i}" for i in range(300)], ArchitectureGroup(**ARCH), 64, 0, tmp_path / "base")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # a trained adapter: B is no longer zero
    lora.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(tmp_path / "base").save_pretrained(tmp_path / "adapter")  # as save_trained leaves it
    recipe = parse_recipe(write_recipe(tmp_path / "recipes", quantization=None)).model_dump(mode="json")
    spec = StageSpec(stage="release", recipe=recipe, output_dir=str(tmp_path / "out"),
                     inputs={"model": str(tmp_path / "adapter")}, options={"card": "---\nlicense: mit\n---\n\n# card\n",
                                                                            "recipe_yaml": "name: tiny\n"})
    (tmp_path / "out").mkdir()
    metrics = run(spec, Reporter())
    assert metrics["merged_adapter"] and "adapter_config.json" not in metrics["files"] and "model.safetensors" in metrics["files"]
    assert (tmp_path / "out" / "README.md").read_text().startswith("---\nlicense: mit") and (tmp_path / "out" / "tokenizer.json").exists()
    ids = torch.tensor([[5, 17, 42, 7]])
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter").merge_and_unload()
    released = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.allclose(released(ids).logits, expected(ids).logits, atol=1e-5)


def test_end_to_end_evaluation_release_approval_and_publishing(project_env, monkeypatch):
    """The real chain on the micro recipe: stages, the evaluation with its blocking gates, released_model in the same run;
    then an approval, the sensor's request and publishing to a registry directory. A failed gate in a later run of the
    evaluation stops released_model in that run."""
    from dagster import AssetSelection, Definitions, define_asset_job

    from llm_assets.stages import MODEL_ASSETS

    recipes = project_env / "recipes"
    write_recipe(recipes, cpt=None, reward=None, rlhf=None, evaluation={"limit": 8},
                 release={"target": "s3", "registry": str(project_env / "registry"), "license": "mit"})
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    instance, defs = DagsterInstance.get(), definitions()
    land_demo_drops(project_env / "data" / "landing", defs, instance, kinds=("pretraining", "sft", "preference"))
    job = define_asset_job("released", selection=AssetSelection.assets(*MODEL_ASSETS, "evaluation", "released_model"),
                           partitions_def=defs.resolve_assets_def("released_model").partitions_def)
    defs = Definitions.merge(defs, Definitions(jobs=[job]))

    result = defs.resolve_job_def("released").execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    store = default_resources()["store"].open()
    evaluation = store.record("models/evaluation/tiny")
    version = store.latest_version("models/release/tiny")
    card = ModelCard.load(store.get("models/release/tiny").file("README.md"))
    scores = {r.task_name: r.metric_value for r in card.data.eval_results}
    assert scores and scores == {task: by_role["released"]["value"] for task, by_role in evaluation["metrics"]["results"].items()}
    assert store.record("models/release/tiny")["quantized_version"] == store.latest_version("models/quantize/tiny")

    assert approve(defs, instance, version).success
    [request] = sensor_says(defs, instance).run_requests
    assert request.run_key == f"publish/tiny/{version}" and publish(defs, instance).success
    assert open_store(str(project_env / "registry")).latest_version("tiny") == version
    assert store.record("models/published/tiny")["results"] == evaluation["metrics"]["results"]

    # a published version scoring higher than this one: the evaluation (reused) fails no_regression_vs_published, and
    # its blocking check stops released_model in the same run
    task = next(iter(evaluation["metrics"]["results"]))
    store.put_record("models/published/tiny", "better", {"version": "f" * 64, "results": {
        task: {"released": {"metric": "exact_match", "value": 2.0, "stderr": 0.0, "n": 8}}}})
    again = defs.resolve_job_def("released").get_subset(asset_selection={AssetKey("evaluation"), AssetKey("released_model")})
    rerun = again.execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)
    failed = {c.check_name for c in rerun.get_asset_check_evaluations() if not c.passed}
    assert failed == {"no_regression_vs_published"}
    assert AssetKey("released_model") not in {e.asset_key for e in rerun.get_asset_materialization_events()}
    refused = release(defs, instance)  # and in a later run the step itself refuses
    assert not refused.success and "failed its gate no_regression_vs_published" in failure(refused)
