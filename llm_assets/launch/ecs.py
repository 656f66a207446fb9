"""A stage worker as an ECS task, through dagster-aws' ``PipesECSClient``.

Each recipe and stage has its own task definition family (``<family_prefix>-<recipe>-<stage>``), sized by
``sizing.worker_size``: GPUs as a resource requirement, memory and CPU from the estimate, ``/dev/shm`` as
``linuxParameters.sharedMemorySize``. A definition is registered only when its content changed (a digest tag
tells), so every run does not add a revision. The command and the run's environment are container overrides;
the work order travels in the Pipes context and messages come back through the container's CloudWatch log.
GPU tasks need the EC2 launch type (or an EC2 capacity provider): Fargate has no GPUs and no ``sharedMemorySize``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import boto3
from botocore.exceptions import ClientError
from dagster import AssetExecutionContext, Config, PipesClientCompletedInvocation
from dagster_aws.pipes import PipesCloudWatchMessageReader, PipesECSClient
from pydantic import Field

from llm_assets.launch.sizing import WorkerSize, mebibytes, worker_size
from llm_assets.recipes import Recipe

CONTAINER_NAME = "worker"
DIGEST_TAG = "llm-assets/definition-sha256"
SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:(secretsmanager|ssm):[a-z0-9-]+:\d{12}:.+$")


class EcsSettings(Config):
    """Where and how training workers run as ECS tasks."""

    image: str = Field(description="The code location's image (the Dockerfile's, built with a CUDA base for GPUs).")
    cluster: str | None = Field(None, description="Cluster name or ARN; None: the account's default cluster.")
    region_name: str = Field(description="The cluster's region (also where the worker's log group is).")
    endpoint_url: str | None = Field(None, description="Another ECS endpoint (tests, proxies); None: AWS's.")
    family_prefix: str = Field("llm-assets", description="Task definitions are named <prefix>-<recipe>-<stage>.")
    capacity_provider: str | None = Field(None, description="An EC2 capacity provider of GPU instances; None: launch "
                                          "type EC2 on the cluster's registered instances.")
    subnets: list[str] = Field(default_factory=list, description="awsvpc networking in these subnets; empty: bridge mode.")
    security_groups: list[str] = Field(default_factory=list)
    execution_role_arn: str | None = Field(None, description="Lets ECS pull the image and read `secrets`.")
    task_role_arn: str | None = Field(None, description="The worker's own AWS identity (S3 access to the store).")
    log_group: str = Field("/llm-assets/workers", description="An existing CloudWatch log group; Pipes reads the "
                           "worker's messages from it.")
    log_stream_prefix: str = "llm-assets"
    env: dict[str, str] = Field(default_factory=dict, description="Plain environment (LLM_ASSETS_STORE, ...); never "
                                "credentials: use secrets.")
    secrets: dict[str, str] = Field(default_factory=dict, description="Environment variable -> ARN of a Secrets Manager "
                                    "secret or SSM parameter, e.g. {'HF_TOKEN': 'arn:aws:secretsmanager:...'}.")
    shm_size_gb: float | None = Field(None, gt=0, description="/dev/shm size; None: 1 GB per training process.")


def family(recipe: Recipe, stage: str, settings: EcsSettings) -> str:
    return f"{settings.family_prefix}-{recipe.name}-{stage}"


def task_definition(recipe: Recipe, stage: str, settings: EcsSettings) -> dict[str, Any]:
    """``RegisterTaskDefinition`` parameters for ``stage`` of ``recipe`` (without the digest tag)."""
    size = worker_size(recipe, stage, settings.shm_size_gb)
    if settings.secrets and not settings.execution_role_arn:
        raise ValueError("EcsSettings.secrets needs execution_role_arn: ECS reads the secrets with that role")
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "essential": True,
        "cpu": round(size.cpus * 1024),
        "memoryReservation": mebibytes(size.memory_gb),
        "linuxParameters": {"sharedMemorySize": mebibytes(size.shm_gb)},
        "environment": [{"name": k, "value": v} for k, v in plain_env(size, settings).items()],
        "secrets": [{"name": k, "valueFrom": secret_arn(k, arn)} for k, arn in settings.secrets.items()],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": settings.log_group, "awslogs-region": settings.region_name,
            "awslogs-stream-prefix": settings.log_stream_prefix}},
    }
    if size.memory_limit_gb is not None:
        container["memory"] = mebibytes(size.memory_limit_gb)
    if size.gpus:
        container["resourceRequirements"] = [{"type": "GPU", "value": str(size.gpus)}]
    params: dict[str, Any] = {
        "family": family(recipe, stage, settings),
        "networkMode": "awsvpc" if settings.subnets else "bridge",
        "requiresCompatibilities": ["EC2"],
        "containerDefinitions": [container],
    }
    roles = {"executionRoleArn": settings.execution_role_arn, "taskRoleArn": settings.task_role_arn}
    params.update({k: v for k, v in roles.items() if v})
    return params


def plain_env(size: WorkerSize, settings: EcsSettings) -> dict[str, str]:
    """Threads for the task's own cores, then the settings' plain values."""
    env = {"OMP_NUM_THREADS": str(size.threads_per_process), "OMP_WAIT_POLICY": "PASSIVE", **settings.env}
    clash = sorted(set(env) & set(settings.secrets))
    if clash:
        raise ValueError(f"EcsSettings: {', '.join(clash)} is both in env and in secrets; keep it in secrets only")
    return env


def secret_arn(variable: str, arn: str) -> str:
    if not SECRET_ARN.match(arn):
        raise ValueError(f"EcsSettings.secrets[{variable!r}] is {arn!r}: give the ARN of a Secrets Manager secret or "
                         "SSM parameter (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME), never the secret's value")
    return arn


def definition_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def ensure_task_definition(ecs: Any, recipe: Recipe, stage: str, settings: EcsSettings) -> str:
    """The ARN of the stage's task definition, registering a new revision only when its content changed."""
    params = task_definition(recipe, stage, settings)
    digest = definition_digest(params)
    try:
        found = ecs.describe_task_definition(taskDefinition=params["family"], include=["TAGS"])
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("ClientException", "ResourceNotFoundException"):
            raise
        found = None
    if found and {"key": DIGEST_TAG, "value": digest} in found.get("tags", []):
        return found["taskDefinition"]["taskDefinitionArn"]
    registered = ecs.register_task_definition(**params, tags=[{"key": DIGEST_TAG, "value": digest}])
    return registered["taskDefinition"]["taskDefinitionArn"]


def run_task_params(task_definition_arn: str, command: list[str], env: dict[str, str],
                    settings: EcsSettings) -> dict[str, Any]:
    """``RunTask`` parameters: one task of the definition, the launcher's command and run environment as overrides.

    A variable the definition sets (threads for the task's own cores, the settings' env, secrets) is not overridden.
    """
    own = {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", *settings.env, *settings.secrets}
    params: dict[str, Any] = {
        "taskDefinition": task_definition_arn,
        "count": 1,
        "startedBy": "llm-assets",
        "overrides": {"containerOverrides": [{
            "name": CONTAINER_NAME, "command": list(command),
            "environment": [{"name": k, "value": v} for k, v in env.items() if k not in own]}]},
    }
    if settings.cluster:
        params["cluster"] = settings.cluster
    if settings.capacity_provider:
        params["capacityProviderStrategy"] = [{"capacityProvider": settings.capacity_provider, "weight": 1}]
    else:
        params["launchType"] = "EC2"
    if settings.subnets:
        params["networkConfiguration"] = {"awsvpcConfiguration": {
            "subnets": settings.subnets, "securityGroups": settings.security_groups}}
    return params


def run_ecs_worker(context: AssetExecutionContext, *, stage: str, recipe: Recipe, command: list[str],
                   env: dict[str, str], extras: dict[str, Any], settings: EcsSettings) -> PipesClientCompletedInvocation:
    """Run ``command`` for ``stage`` as an ECS task and wait for it; messages arrive through its CloudWatch log.

    A task that fails to start or exits non-zero raises ``RuntimeError`` from the client.
    """
    session = boto3.session.Session(region_name=settings.region_name)
    ecs = session.client("ecs", endpoint_url=settings.endpoint_url)
    arn = ensure_task_definition(ecs, recipe, stage, settings)
    client = PipesECSClient(client=ecs, message_reader=PipesCloudWatchMessageReader(client=session.client("logs")))
    return client.run(context=context, run_task_params=run_task_params(arn, command, env, settings),
                      extras=extras, pipes_container_name=CONTAINER_NAME)
