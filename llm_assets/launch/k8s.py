"""A stage worker in a Kubernetes pod, through dagster-k8s' ``PipesK8sClient``.

The pod runs the same image as the code location with the launcher's command (``python -m llm_assets.training
STAGE``, or torchrun for several ranks); its work order travels in the Pipes context (``extras``), which the client
puts in the pod's environment, and its messages come back in the pod's log, which the client follows. The pod is
sized by ``sizing.worker_size``; secrets reach it only as ``secretKeyRef``s, so no credential is ever written into
a pod spec that anyone with ``get pods`` can read.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from dagster import AssetExecutionContext, Config, PipesClientCompletedInvocation
from dagster_k8s import PipesK8sClient
from pydantic import Field

from llm_assets.launch.sizing import WorkerSize, decimal_megabytes, worker_size
from llm_assets.recipes import Recipe

CONTAINER_NAME = "worker"
SCRATCH_PATH = "/scratch"  # an emptyDir: the worker's inputs, outputs, checkpoints and caches (never the image layer)
SECRET_REF = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)/([-._a-zA-Z0-9]+)$")
LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


class K8sSettings(Config):
    """Where and how training workers run as Kubernetes pods."""

    image: str = Field(description="The code location's image (the Dockerfile's, built with a CUDA base for GPUs).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for a private registry.")
    namespace: str | None = Field(None, description="None: the namespace Dagster runs in, or 'default' outside a cluster.")
    service_account_name: str | None = Field(None, description="Runs the pod; give it S3 access (e.g. IRSA) instead of keys.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="e.g. {'nvidia.com/gpu.product': 'NVIDIA-A10G'}.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="Pod tolerations, e.g. [{'key': 'nvidia.com/gpu', 'operator': 'Exists', "
        "'effect': 'NoSchedule'}] for tainted GPU nodes.")
    priority_class_name: str | None = None
    env: dict[str, str] = Field(default_factory=dict, description="Plain environment (LLM_ASSETS_STORE, "
                                "LLM_ASSETS_S3_ENDPOINT, AWS_REGION, ...); never credentials: use secret_env.")
    secret_env: dict[str, str] = Field(default_factory=dict, description="Environment variable -> 'secret-name/key' of "
                                       "an existing Secret, e.g. {'HF_TOKEN': 'hf/token'}.")
    shm_size_gb: float | None = Field(None, gt=0, description="/dev/shm size; None: 1 GB per training process.")
    scratch_size_gb: float | None = Field(None, gt=0, description="Limit of the scratch volume at /scratch (fetched "
                                          "inputs, output, checkpoints, caches); None: the node's free disk.")
    gpu_resource_name: str = Field("nvidia.com/gpu", description="The device plugin's resource ('amd.com/gpu', ...).")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    load_incluster_config: bool | None = Field(None, description="None: in-cluster when KUBERNETES_SERVICE_HOST is set, "
                                               "else the kubeconfig.")
    kubeconfig_file: str | None = None
    kube_context: str | None = None
    poll_interval_seconds: float = 10.0
    pod_wait_timeout_seconds: float = Field(86400.0, description="Longest a worker may run; 0: no limit.")
    delete_pod_on_completion: bool = Field(True, description="False keeps finished pods for `kubectl logs`.")


def pod_spec(recipe: Recipe, stage: str, settings: K8sSettings) -> dict[str, Any]:
    """The ``base_pod_spec`` for ``PipesK8sClient.run`` (camelCase, as the Kubernetes API writes it).

    The launcher's command and the Pipes environment are added by the client; everything else a worker needs is
    here: the stage's size, the ``/dev/shm`` and scratch volumes, placement, identity and secrets.
    """
    size = worker_size(recipe, stage, settings.shm_size_gb)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed worker fails the step; Dagster's retry policy decides what happens next
        "containers": [{
            "name": CONTAINER_NAME,
            "image": settings.image,
            "imagePullPolicy": settings.image_pull_policy,
            "resources": container_resources(size, settings.gpu_resource_name),
            "env": container_env(size, settings),
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "scratch", "mountPath": SCRATCH_PATH}],
        }],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{decimal_megabytes(size.shm_gb)}M"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": f"{decimal_megabytes(settings.scratch_size_gb)}M"}
             if settings.scratch_size_gb else {}},
        ],
    }
    optional = {"serviceAccountName": settings.service_account_name, "nodeSelector": settings.node_selector,
                "tolerations": settings.tolerations, "priorityClassName": settings.priority_class_name,
                "imagePullSecrets": [{"name": s} for s in settings.image_pull_secrets]}
    spec.update({k: v for k, v in optional.items() if v})
    return spec


def pod_metadata(recipe: Recipe, stage: str, settings: K8sSettings) -> dict[str, Any]:
    """Labels that find a recipe's workers (``kubectl get pods -l llm-assets/recipe=NAME``) and the user's own."""
    labels = {"llm-assets/recipe": label_value(recipe.name), "llm-assets/stage": stage, **settings.labels}
    return {"labels": labels, **({"annotations": settings.annotations} if settings.annotations else {})}


def container_resources(size: WorkerSize, gpu_resource_name: str) -> dict[str, Any]:
    """Requests from the estimate; GPUs as a limit (an extended resource's request follows its limit)."""
    requests = {"cpu": f"{size.cpus:g}", "memory": f"{decimal_megabytes(size.memory_gb)}M"}
    limits: dict[str, str] = {}
    if size.memory_limit_gb is not None:
        limits["memory"] = f"{decimal_megabytes(size.memory_limit_gb)}M"
    if size.gpus:
        limits[gpu_resource_name] = str(size.gpus)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def container_env(size: WorkerSize, settings: K8sSettings) -> list[dict[str, Any]]:
    """Threads for the pod's own cores, scratch and caches on the scratch volume, the settings' plain values, then
    secrets as ``secretKeyRef``s."""
    plain = {"OMP_NUM_THREADS": str(size.threads_per_process), "OMP_WAIT_POLICY": "PASSIVE",
             "LLM_ASSETS_SCRATCH": SCRATCH_PATH, "LLM_ASSETS_CACHE": f"{SCRATCH_PATH}/cache",
             "HF_HOME": f"{SCRATCH_PATH}/huggingface", **settings.env}
    clash = sorted(set(plain) & set(settings.secret_env))
    if clash:
        raise ValueError(f"K8sSettings: {', '.join(clash)} is both in env and in secret_env; keep it in secret_env only")
    return [*({"name": k, "value": v} for k, v in plain.items()),
            *({"name": k, "valueFrom": {"secretKeyRef": secret_key_ref(k, ref)}} for k, ref in settings.secret_env.items())]


def secret_key_ref(variable: str, ref: str) -> dict[str, str]:
    match = SECRET_REF.match(ref)
    if not match:
        raise ValueError(f"K8sSettings.secret_env[{variable!r}] is {ref!r}: write it as 'secret-name/key', the name of "
                         "an existing Secret in the pod's namespace and the key inside it (never the secret's value)")
    return {"name": match.group(1), "key": match.group(3)}


def label_value(value: str) -> str:
    """A valid label value: at most 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends."""
    return LABEL_VALUE.sub("-", value)[:63].strip("-_.")


def run_k8s_worker(context: AssetExecutionContext, *, stage: str, recipe: Recipe, command: list[str],
                   env: dict[str, str], extras: dict[str, Any], settings: K8sSettings) -> PipesClientCompletedInvocation:
    """Run ``command`` for ``stage`` in a pod and wait for it; the worker's messages arrive through its log.

    ``env`` is what the launcher adds for this run; a variable the pod spec sets from the pod's own size
    (``OMP_NUM_THREADS``: the Dagster machine's core count means nothing on a GPU node) or as a secret is not
    overridden by it. A pod that fails or is evicted raises ``DagsterK8sError`` from the client.
    """
    spec = pod_spec(recipe, stage, settings)
    own = {e["name"] for e in spec["containers"][0]["env"]}
    client = PipesK8sClient(load_incluster_config=settings.load_incluster_config, kubeconfig_file=settings.kubeconfig_file,
                            kube_context=settings.kube_context, poll_interval=settings.poll_interval_seconds)
    return client.run(
        context=context, image=settings.image, command=command, namespace=settings.namespace,
        env={k: v for k, v in env.items() if k not in own}, extras=extras,
        base_pod_spec=spec, base_pod_meta=pod_metadata(recipe, stage, settings),
        pod_wait_timeout=settings.pod_wait_timeout_seconds, delete_pod_on_completion=settings.delete_pod_on_completion,
    )

