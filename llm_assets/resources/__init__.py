"""Resources: the seams between environments (local directory or S3, subprocess or Kubernetes)."""

from __future__ import annotations

import os

from dagster import EnvVar
from dagster_aws.s3 import S3Resource

from llm_assets.launch.from_env import launch_config_from_env
from llm_assets.paths import default_landing_root, default_store_root
from llm_assets.resources.hub import HubClient
from llm_assets.resources.landing import LandingZone
from llm_assets.resources.launcher import TrainingLauncher
from llm_assets.resources.store import ArtifactStore


def default_resources() -> dict[str, object]:
    """Resources from the environment: LLM_ASSETS_STORE / LLM_ASSETS_LANDING (dir or s3://), S3 endpoint, and where
    training workers run (LLM_ASSETS_LAUNCHER with LLM_ASSETS_K8S / LLM_ASSETS_ECS)."""
    launch = launch_config_from_env()
    s3 = S3Resource(endpoint_url=os.environ.get("LLM_ASSETS_S3_ENDPOINT") or None,
                    region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None)
    return {
        "store": ArtifactStore(root=default_store_root(), s3=s3),
        "landing": LandingZone(root=default_landing_root(), s3=s3),
        "launcher": TrainingLauncher(kind=launch.kind, k8s=launch.k8s, ecs=launch.ecs),
        # EnvVar: run and job snapshots store the variable's name, the value is read when the resource is used
        "hub": HubClient(token=EnvVar("HF_TOKEN") if os.environ.get("HF_TOKEN") else None,
                         cache_dir=os.environ.get("HF_HUB_CACHE") or None),
    }
