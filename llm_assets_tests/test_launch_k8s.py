"""The Kubernetes worker pod, rendered for every recipe and stage and checked against the ``kubernetes`` client's
models, the way PipesK8sClient builds it (dagster_k8s.pipes.build_pod_body)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import kubernetes
import pytest
import yaml
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from dagster_k8s.pipes import build_pod_body
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR

from llm_assets.launch.from_env import launch_config_from_env
from llm_assets.launch.k8s import K8sSettings, pod_metadata, pod_spec
from llm_assets.launch.sizing import WORKER_STAGES, decimal_megabytes, worker_size
from llm_assets.recipes import Recipe, load_all_recipes
from llm_assets.stage_memory import stage_memory

RECIPES = load_all_recipes()
SETTINGS = K8sSettings(
    image="registry.example/llm-assets:cuda", namespace="training", service_account_name="llm-worker",
    node_selector={"nvidia.com/gpu.product": "NVIDIA-A10G"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}],
    env={"LLM_ASSETS_STORE": "s3://models/store", "AWS_REGION": "eu-west-1"},
    secret_env={"HF_TOKEN": "hf-token/token", "AWS_SECRET_ACCESS_KEY": "store-credentials/secret-access-key"},
    labels={"team": "nlp"}, annotations={"karpenter.sh/do-not-disrupt": "true"}, image_pull_secrets=["regcred"],
)
COMMAND = ["torchrun", "--standalone", "--nproc-per-node=8", "-m", "llm_assets.training", "sft"]


def pipes_pod(recipe: Recipe, stage: str, settings: K8sSettings = SETTINGS) -> kubernetes.client.V1Pod:
    """The whole pod as PipesK8sClient.run creates it: our spec and metadata, its command, image and Pipes env."""
    return build_pod_body(pod_name=f"dagster-{stage}-0123456789", image=settings.image, command=COMMAND,
                          env_vars={DAGSTER_PIPES_CONTEXT_ENV_VAR: "eyJ4IjogMX0=", "PYTHONUNBUFFERED": "1"},
                          base_pod_meta=pod_metadata(recipe, stage, settings), base_pod_spec=pod_spec(recipe, stage, settings))


def as_api_dict(pod: kubernetes.client.V1Pod) -> dict:
    return kubernetes.client.ApiClient().sanitize_for_serialization(pod)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_stage_renders_a_valid_pod(name):
    recipe = RECIPES[name]
    for stage in WORKER_STAGES:
        spec = pod_spec(recipe, stage, SETTINGS)
        # dagster-k8s' strict conversion: an unknown or misspelt field anywhere raises
        model = k8s_model_from_dict(kubernetes.client.V1PodSpec, k8s_snake_case_dict(kubernetes.client.V1PodSpec, spec))
        assert model.restart_policy == "Never"
        pod = as_api_dict(pipes_pod(recipe, stage))
        container = pod["spec"]["containers"][0]
        assert container["command"] == COMMAND and container["image"] == SETTINGS.image
        size, memory = worker_size(recipe, stage), stage_memory(recipe, stage)
        assert container["resources"]["requests"] == {"cpu": f"{size.cpus:g}", "memory": f"{decimal_megabytes(memory.host_gb)}M"}
        limits = container["resources"].get("limits", {})
        assert limits.get("nvidia.com/gpu") == (str(size.gpus) if size.gpus else None)
        assert limits.get("memory") == (f"{recipe.resources.memory_gb * 1000:.0f}M" if recipe.resources.memory_gb else None)
        shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert pod["metadata"]["labels"]["llm-assets/recipe"] == name and pod["metadata"]["labels"]["llm-assets/stage"] == stage
        assert pod["spec"]["tolerations"][0]["tolerationSeconds"] == 60


def test_llama_qlora_sft_pod_asks_for_one_gpu_and_the_estimate():
    recipe = RECIPES["llama31-8b-qlora"]
    container = as_api_dict(pipes_pod(recipe, "sft"))["spec"]["containers"][0]
    memory = stage_memory(recipe, "sft")
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "64000M"}
    assert container["resources"]["requests"]["memory"] == f"{decimal_megabytes(memory.host_gb)}M"
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in container["env"]


def test_training_stages_take_every_gpu_and_inference_stages_one():
    qwen, tiny = RECIPES["qwen25-05b-zero3"], RECIPES["tiny"]
    gpus = {s: as_api_dict(pipes_pod(qwen, s))["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for s in WORKER_STAGES}
    assert gpus == {"base": "1", "cpt": "8", "sft": "8", "reward": "8", "rlhf": "8", "quantize": "1", "evaluate": "1",
                    "evaluation": "1", "release": "1", "predict": "1"}  # the release stages hold one model at a time
    shm = next(v for v in pod_spec(qwen, "sft", SETTINGS)["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["sizeLimit"] == "8000M"  # 1 GB per local rank for NCCL
    assert "limits" not in pod_spec(tiny, "sft", SETTINGS)["containers"][0]["resources"]  # a CPU recipe asks for no GPU
    amd = SETTINGS.model_copy(update={"gpu_resource_name": "amd.com/gpu"})
    assert pod_spec(qwen, "sft", amd)["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "8"


def test_secrets_reach_the_pod_only_as_secret_key_refs():
    pod = as_api_dict(pipes_pod(RECIPES["llama31-8b-qlora"], "sft"))
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "store-credentials", "key": "secret-access-key"}
    assert "value" not in env["HF_TOKEN"] and "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert env["LLM_ASSETS_STORE"]["value"] == "s3://models/store"
    assert env[DAGSTER_PIPES_CONTEXT_ENV_VAR]["value"]  # the client's Pipes bootstrap is added beside ours
    literal = SETTINGS.model_copy(update={"secret_env": {"HF_TOKEN": "hf_abcdefghijklmnop"}})
    with pytest.raises(ValueError, match=r"secret_env\['HF_TOKEN'\].*'secret-name/key'"):
        pod_spec(RECIPES["tiny"], "sft", literal)
    both = SETTINGS.model_copy(update={"env": {"HF_TOKEN": "hf_abc"}})
    with pytest.raises(ValueError, match="HF_TOKEN is both in env and in secret_env"):
        pod_spec(RECIPES["tiny"], "sft", both)


def with_resources(recipe: Recipe, **resources) -> Recipe:
    dumped = recipe.model_dump()
    dumped["resources"] = {**dumped["resources"], **resources}
    return Recipe.model_validate(dumped)


def test_sizes_that_cannot_work_are_refused_naming_the_recipe_key():
    llama = RECIPES["llama31-8b-qlora"]
    host = stage_memory(llama, "sft").host_gb
    with pytest.raises(ValueError, match=r"llama31-8b-qlora.yaml: resources.memory_gb = 2 leaves no room for the sft stage"):
        pod_spec(with_resources(llama, memory_gb=2), "sft", SETTINGS)
    assert pod_spec(with_resources(llama, memory_gb=host + 1), "sft", SETTINGS)  # estimate + 1 GB of /dev/shm fits
    qwen = RECIPES["qwen25-05b-zero3"]
    with pytest.raises(ValueError, match=r"qwen25-05b-zero3.yaml: distributed.processes is 8 but resources.gpus is 4"):
        pod_spec(with_resources(qwen, gpus=4), "sft", SETTINGS)
    cpus = pod_spec(with_resources(qwen, cpus=48), "sft", SETTINGS)["containers"][0]
    assert cpus["resources"]["requests"]["cpu"] == "48" and {"name": "OMP_NUM_THREADS", "value": "6"} in cpus["env"]


def test_a_minimal_settings_renders_a_minimal_pod():
    spec = pod_spec(RECIPES["tiny"], "base", K8sSettings(image="llm-assets:latest"))
    assert set(spec) == {"restartPolicy", "containers", "volumes"}
    assert pod_metadata(RECIPES["tiny"], "base", K8sSettings(image="x")) == {
        "labels": {"llm-assets/recipe": "tiny", "llm-assets/stage": "base"}}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_decodes_every_rendered_pod(tmp_path):
    """kubectl's own typed decoder (offline, ``--local``) reads every pod PipesK8sClient would create: field types
    and resource quantities, which the Python client's models keep as plain strings.

    ``kubectl apply --dry-run=client`` needs an API server for discovery even in client mode, so it cannot run here;
    deploy/README.md says how to run it against a cluster.
    """
    pods = [{"apiVersion": "v1", "kind": "Pod", **as_api_dict(pipes_pod(recipe, stage))}
            for recipe in RECIPES.values() for stage in WORKER_STAGES]
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
    out = subprocess.run([shutil.which("kubectl"), "set", "env", "--local", "-f", str(path), "KUBECTL_DECODED=1", "-o", "json"],
                         capture_output=True, text=True, timeout=120, env={"KUBECONFIG": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr
    decoded = json_stream(out.stdout)
    assert len(decoded) == len(pods)
    llama_sft = next(p for p in decoded if p["metadata"]["labels"] == {**p["metadata"]["labels"],
                     "llm-assets/recipe": "llama31-8b-qlora", "llm-assets/stage": "sft"})
    resources = llama_sft["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1" and resources["limits"]["memory"] == "64G"
    broken = json.dumps(pods[0]).replace('"nvidia.com/gpu": "1"', '"nvidia.com/gpu": "one"').replace('"cpu": "4"', '"cpu": "four"')
    path.write_text(broken)
    out = subprocess.run([shutil.which("kubectl"), "set", "env", "--local", "-f", str(path), "KUBECTL_DECODED=1", "-o", "json"],
                         capture_output=True, text=True, timeout=60, env={"KUBECONFIG": str(tmp_path / "none")})
    assert out.returncode != 0 and "quantities must match" in out.stderr  # the check can fail


def json_stream(text: str) -> list[dict]:
    """kubectl prints one JSON document per object it read from a list."""
    decoder, docs, at, text = json.JSONDecoder(), [], 0, text.strip()
    while at < len(text):
        doc, at = decoder.raw_decode(text, at)
        docs.append(doc)
        at = len(text) - len(text[at:].lstrip())
    return docs


def test_launcher_settings_come_from_the_environment_and_typos_are_named():
    config = launch_config_from_env({"LLM_ASSETS_LAUNCHER": "k8s", "LLM_ASSETS_K8S": "image: reg/llm:cuda\nshm_size_gb: 4"})
    assert config.kind == "k8s" and config.k8s.image == "reg/llm:cuda" and config.k8s.shm_size_gb == 4
    assert launch_config_from_env({}).kind == "subprocess"
    with pytest.raises(ValueError, match=r"LLM_ASSETS_K8S: unknown field 'namespce' \(did you mean 'namespace'\?\)"):
        launch_config_from_env({"LLM_ASSETS_K8S": "image: x\nnamespce: training"})
    with pytest.raises(ValueError, match="LLM_ASSETS_LAUNCHER is 'k8s' but LLM_ASSETS_K8S is not set"):
        launch_config_from_env({"LLM_ASSETS_LAUNCHER": "k8s"})
    with pytest.raises(ValueError, match="LLM_ASSETS_LAUNCHER is 'pods'; use one of subprocess, k8s, ecs"):
        launch_config_from_env({"LLM_ASSETS_LAUNCHER": "pods"})


def test_check_pod_prints_the_worker_pod_for_a_cluster(tmp_path):
    """What deploy/README.md pipes into ``kubectl apply --dry-run=server``."""
    env = {**os.environ, "LLM_ASSETS_K8S": "image: reg/llm:cuda\nsecret_env: {HF_TOKEN: hf/token}"}
    out = subprocess.run([sys.executable, "-m", "llm_assets.launch.check_pod", "llama31-8b-qlora", "sft", "--", "nvidia-smi"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    pod = yaml.safe_load(out.stdout)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "llm-assets-check-llama31-8b-qlora-sft"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["nvidia-smi"] and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["restartPolicy"] == "Never" and {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    bad = subprocess.run([sys.executable, "-m", "llm_assets.launch.check_pod", "no-such-recipe", "sft"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "no recipe 'no-such-recipe'" in bad.stderr and "Traceback" not in bad.stderr
