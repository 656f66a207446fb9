"""The ECS worker's task definition and RunTask call: validated by botocore against the ECS service model for every
recipe and stage, and registered on a moto ECS server on 127.0.0.1."""

from __future__ import annotations

import boto3
import botocore.session
import pytest
from botocore.validate import validate_parameters

from llm_assets.launch.ecs import (
    CONTAINER_NAME,
    DIGEST_TAG,
    EcsSettings,
    ensure_task_definition,
    run_task_params,
    task_definition,
)
from llm_assets.launch.sizing import WORKER_STAGES, mebibytes
from llm_assets.recipes import load_all_recipes
from llm_assets.stage_memory import stage_memory

RECIPES = load_all_recipes()
ECS_MODEL = botocore.session.get_session().get_service_model("ecs")
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hf-token-AbCdEf"
SETTINGS = EcsSettings(
    image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/llm-assets:cuda", cluster="gpu", region_name="eu-west-1",
    subnets=["subnet-0abc"], security_groups=["sg-0abc"],
    execution_role_arn="arn:aws:iam::123456789012:role/llm-assets-execution",
    task_role_arn="arn:aws:iam::123456789012:role/llm-assets-worker",
    env={"LLM_ASSETS_STORE": "s3://models/store"}, secrets={"HF_TOKEN": SECRET},
)
COMMAND = ["python", "-m", "llm_assets.training", "sft"]


def validate(operation: str, params: dict) -> None:
    """botocore's own parameter validation, as boto3 runs it before sending a request."""
    validate_parameters(params, ECS_MODEL.operation_model(operation).input_shape)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_stage_renders_a_valid_task_definition(name):
    recipe = RECIPES[name]
    for stage in WORKER_STAGES:
        params = task_definition(recipe, stage, SETTINGS)
        validate("RegisterTaskDefinition", {**params, "tags": [{"key": DIGEST_TAG, "value": "0" * 64}]})
        container = params["containerDefinitions"][0]
        assert params["family"] == f"llm-assets-{name}-{stage}"
        assert container["memoryReservation"] == mebibytes(stage_memory(recipe, stage).host_gb)
        assert container["linuxParameters"]["sharedMemorySize"] == mebibytes(recipe.distributed.processes
                                                                             if stage in ("cpt", "sft", "reward", "rlhf") else 1)
        gpus = [r for r in container.get("resourceRequirements", []) if r["type"] == "GPU"]
        assert [int(r["value"]) for r in gpus] == ([] if not recipe.resources.gpus else
                                                   [recipe.resources.gpus if stage in ("cpt", "sft", "reward", "rlhf") else 1])
        validate("RunTask", run_task_params(f"arn:aws:ecs:eu-west-1:123456789012:task-definition/{params['family']}:1",
                                            COMMAND, {"PYTHONUNBUFFERED": "1"}, SETTINGS))


def test_llama_qlora_sft_task_asks_for_one_gpu_and_the_estimate():
    recipe = RECIPES["llama31-8b-qlora"]
    container = task_definition(recipe, "sft", SETTINGS)["containerDefinitions"][0]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert container["memoryReservation"] == mebibytes(stage_memory(recipe, "sft").host_gb)
    assert container["memory"] == mebibytes(64) and container["cpu"] == 4 * 1024
    assert container["secrets"] == [{"name": "HF_TOKEN", "valueFrom": SECRET}]
    assert "HF_TOKEN" not in {e["name"] for e in container["environment"]}


def test_secrets_are_arns_read_by_the_execution_role():
    recipe = RECIPES["tiny"]
    with pytest.raises(ValueError, match=r"EcsSettings.secrets\['HF_TOKEN'\] is 'hf_abcdef': give the ARN"):
        task_definition(recipe, "sft", SETTINGS.model_copy(update={"secrets": {"HF_TOKEN": "hf_abcdef"}}))
    with pytest.raises(ValueError, match="secrets needs execution_role_arn"):
        task_definition(recipe, "sft", SETTINGS.model_copy(update={"execution_role_arn": None}))
    with pytest.raises(ValueError, match="HF_TOKEN is both in env and in secrets"):
        task_definition(recipe, "sft", SETTINGS.model_copy(update={"env": {"HF_TOKEN": "x"}}))


def test_run_task_overrides_carry_the_command_and_never_the_definitions_own_env():
    params = run_task_params("arn:task-def", COMMAND, {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2",
                                                       "LLM_ASSETS_STORE": "/local/store"}, SETTINGS)
    override = params["overrides"]["containerOverrides"][0]
    assert override == {"name": CONTAINER_NAME, "command": COMMAND,
                        "environment": [{"name": "PYTHONUNBUFFERED", "value": "1"}]}
    assert params["launchType"] == "EC2" and params["count"] == 1
    assert params["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ["subnet-0abc"]
    provider = run_task_params("arn:task-def", COMMAND, {}, SETTINGS.model_copy(update={"capacity_provider": "gpu-asg"}))
    assert "launchType" not in provider and provider["capacityProviderStrategy"][0]["capacityProvider"] == "gpu-asg"


def test_task_definitions_register_once_per_content(s3_endpoint):
    """On a moto ECS server: the first launch registers, the next reuses it, a change registers a new revision."""
    ecs = boto3.client("ecs", region_name="eu-west-1", endpoint_url=s3_endpoint)
    recipe = RECIPES["llama31-8b-qlora"]
    first = ensure_task_definition(ecs, recipe, "sft", SETTINGS)
    assert first.endswith("task-definition/llm-assets-llama31-8b-qlora-sft:1")
    assert ensure_task_definition(ecs, recipe, "sft", SETTINGS) == first
    stored = ecs.describe_task_definition(taskDefinition=first)["taskDefinition"]["containerDefinitions"][0]
    assert stored["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert stored["linuxParameters"]["sharedMemorySize"] == mebibytes(1)
    bigger = ensure_task_definition(ecs, recipe, "sft", SETTINGS.model_copy(update={"shm_size_gb": 4}))
    assert bigger.endswith(":2")
    assert ensure_task_definition(ecs, recipe, "quantize", SETTINGS).endswith("llm-assets-llama31-8b-qlora-quantize:1")
