"""Training workers that share nothing with Dagster but an S3 store (moto on 127.0.0.1): each runs in an empty
directory with its own HOME and cache, and a data directory that does not exist. A worker killed mid-SFT after its
second checkpoint is retried by Dagster, on a "node" whose cache was wiped, and resumes from the S3 checkpoint."""

import json
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import psutil
import pytest
from dagster import AssetKey, DagsterInstance, asset, materialize

from llm_assets.demo_data import write_demo_drops
from llm_assets.resources import default_resources
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets_tests.helpers import validate_landed_drops, write_recipe

SFT = {"method": "lora", "max_steps": 40, "save_steps": 10, "logging_steps": 10}
LORA = {"r": 8, "alpha": 16}


@pytest.fixture
def s3_graph(project_env, s3_endpoint, monkeypatch):
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for f in write_demo_drops(project_env / "demo", scale=0.1):
        client.upload_file(str(f), bucket, f"landing/{f.parent.name}/{f.name}")
    monkeypatch.setenv("LLM_ASSETS_LANDING", f"s3://{bucket}/landing")
    monkeypatch.setenv("LLM_ASSETS_STORE", f"s3://{bucket}/store")
    monkeypatch.setenv("LLM_ASSETS_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRIES", "1")
    monkeypatch.setenv("LLM_ASSETS_TRAINING_RETRY_DELAY_S", "0")
    monkeypatch.delenv("LLM_ASSETS_CACHE")  # a worker's cache is under its own HOME
    recipes = project_env / "recipes"
    write_recipe(recipes, sft=SFT, lora=LORA)
    write_recipe(recipes, "straight", sft=SFT, lora=LORA)
    monkeypatch.setenv("LLM_ASSETS_RECIPES_DIR", str(recipes))
    worker_home = project_env / "worker_home"
    launcher = TrainingLauncher(extra_env={"HOME": str(worker_home), "LLM_ASSETS_DATA_DIR": str(project_env / "no" / "such" / "dir")})
    from llm_assets.definitions import build_definitions

    defs = build_definitions({"launcher": launcher})
    instance = DagsterInstance.get()
    validate_landed_drops(defs, instance)  # from the S3 landing zone
    return defs, instance, client, bucket, worker_home


def _kill_sft_worker_after_two_stored_checkpoints(client, bucket, worker_home, stop, killed):
    """Wait until two SFT checkpoints are committed in S3, kill -9 the worker, and wipe its node's cache."""
    prefix = "store/checkpoints/models/sft/tiny/"
    while not stop.is_set():
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        if sum(o["Key"].endswith("/MANIFEST.json") for o in listed) >= 2:
            for proc in psutil.Process().children(recursive=True):
                if "llm_assets.training" in " ".join(proc.cmdline()) and "sft" in proc.cmdline():
                    proc.kill()
                    proc.wait(10)
                    shutil.rmtree(worker_home / ".cache", ignore_errors=True)
                    killed.append(proc.pid)
                    return
        time.sleep(0.05)


def _meta(instance, asset, partition):
    from dagster import AssetRecordsFilter

    [record] = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_workers_share_only_the_s3_store_and_a_killed_one_resumes_on_a_fresh_node(s3_graph, project_env):
    defs, instance, client, bucket, worker_home = s3_graph
    job = defs.resolve_job_def("full_pipeline_job")
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_sft_worker_after_two_stored_checkpoints, args=(client, bucket, worker_home, stop, killed), daemon=True)
    watcher.start()
    result = job.execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)
    stop.set()
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert killed, "the SFT worker was not killed mid-run"
    retried = [e.step_key for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retried == ["sft_model"]  # the kill was retried by Dagster, in the same run
    sft = _meta(instance, "sft_model", "tiny")
    assert sft["steps"] == 40 and sft["resumed_from"].startswith("checkpoint-") and f"s3://{bucket}/store/checkpoints" in sft["resumed_from"]

    # nothing of the run was left on the workers' side of the fence, and their checkpoints are gone from the store
    assert not (project_env / "no").exists()
    assert not client.list_objects_v2(Bucket=bucket, Prefix="store/checkpoints/").get("Contents")
    # the SFT adapter names its base by store key and version, and a fresh cache loads it through the store
    store = default_resources()["store"].open()
    adapter = json.loads(store.read_file("models/sft/tiny", "adapter_config.json"))
    assert adapter["base_model_name_or_path"] == f"llm-assets://models/cpt/tiny@{store.latest_version('models/cpt/tiny')}"
    files = {f["path"] for f in store.manifest("models/sft/tiny").files}
    assert "training_args.bin" not in files  # the run's arguments (scratch paths) are not part of the model
    for name in files & {"README.md", "adapter_config.json"}:
        assert str(project_env) not in store.read_file("models/sft/tiny", name).decode() and "/tmp" not in store.read_file("models/sft/tiny", name).decode()
    for later in ("reward_model", "rlhf_policy", "quantized_model"):  # each trained from the adapter in its own worker
        assert _meta(instance, later, "tiny")["fingerprint"]

    # the same recipe trained without interruption lands on the same eval loss (SFT and what it trains on: the stages
    # after it were run above and are not compared)
    straight = job.get_subset(asset_selection={AssetKey(a) for a in ("base_model", "cpt_model", "sft_model")}).execute_in_process(
        partition_key="straight", instance=instance, raise_on_error=False)
    assert straight.success
    uninterrupted = _meta(instance, "sft_model", "straight")
    assert uninterrupted["resumed_from"] == ""
    exact = {r: store.record(f"models/sft/{r}", _meta(instance, "sft_model", r)["fingerprint"])["metrics"]["eval_loss"]
             for r in ("tiny", "straight")}  # the metadata shows 4 significant digits; the run record keeps the value
    assert abs(exact["straight"] - exact["tiny"]) < 1e-4


def test_a_stage_runs_in_a_kubernetes_pod_that_shares_only_the_store(s3_graph, project_env, monkeypatch, s3_endpoint):
    from llm_assets.definitions import build_definitions
    from llm_assets.launch.k8s import K8sSettings
    from llm_assets_tests.kube_node import KubeNode

    defs, instance, client, bucket, _ = s3_graph
    node = KubeNode(project_env / "node", secrets={"aws": {"id": "testing", "secret": "testing"}})
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # the image's `python`
    try:
        settings = K8sSettings(image="reg/llm-assets:cuda", namespace="training", load_incluster_config=False,
                               kubeconfig_file=str(node.kubeconfig(project_env / "kubeconfig")), poll_interval_seconds=0.2,
                               env={"AWS_DEFAULT_REGION": "us-east-1"},
                               secret_env={"AWS_ACCESS_KEY_ID": "aws/id", "AWS_SECRET_ACCESS_KEY": "aws/secret"})
        defs = build_definitions({"launcher": TrainingLauncher(kind="k8s", k8s=settings)})
        job = defs.resolve_job_def("training_job").get_subset(asset_selection={AssetKey("base_model")})
        result = job.execute_in_process(partition_key="tiny", instance=instance, raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        [(namespace, pod)] = node.created
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert namespace == "training" and pod["spec"]["containers"][0]["command"] == ["python", "-m", "llm_assets.training", "base"]
        assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "aws", "key": "secret"}}}
        assert "testing" not in json.dumps(pod)  # no credential is written into the pod spec
        store = default_resources()["store"].open()
        assert store.record("models/base/tiny")["version"] == store.latest_version("models/base/tiny")
        assert _meta(instance, "base_model", "tiny")["parameters"] > 0
    finally:
        node.stop()


def test_a_remote_launcher_refuses_a_local_store(project_env, monkeypatch):
    from llm_assets.launch.k8s import K8sSettings
    from llm_assets.training.order import StoreSettings, WorkOrder

    launcher = TrainingLauncher(kind="k8s", k8s=K8sSettings(image="reg/llm-assets"))
    order = WorkOrder(stage="base", recipe={"name": "tiny"}, store=StoreSettings(root=str(project_env / "store")),
                      output_key="models/base/tiny", fingerprint="f" * 16)

    @asset
    def base(context):
        launcher.run(context, order, None)

    result = materialize([base], raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "cannot reach" in message and "LLM_ASSETS_STORE" in message


def test_a_gpu_recipe_is_refused_on_a_machine_without_the_gpus(project_env):
    from llm_assets.recipes import load_recipe
    from llm_assets.training.order import StoreSettings, WorkOrder

    recipe = load_recipe("gpu-1b")  # resources.gpus: 1; this machine's tests run without CUDA
    order = WorkOrder(stage="sft", recipe=recipe.model_dump(mode="json"), store=StoreSettings(root=str(project_env / "store")),
                      output_key="models/sft/gpu-1b", fingerprint="f" * 16)

    @asset
    def sft(context):
        TrainingLauncher().run(context, order, None)

    result = materialize([sft], raise_on_error=False)
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "recipe 'gpu-1b' cannot run here: it asks for resources.gpus: 1" in message and "0 CUDA GPU(s)" in message
